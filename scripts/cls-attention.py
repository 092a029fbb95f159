#!/usr/bin/python3
"""scripts/cls-attention.py DIR... : where a BERT checkpoint's [CLS] looks.

Runs the encoder of each Hugging Face BERT directory (model.safetensors,
plain PyTorch: Debian's python3-torch) on the first 100 sentences of
.data/sentiment/eval.jsonl and prints, per layer and head, the entropy of
[CLS]'s attention over the sentence (divided by log n: 1 is uniform, 0 one
token) and the share it gives to itself and to [SEP], then how much the
final [CLS] state varies across sentences (spread / norm of its mean).

Why: BertForSequenceClassification classifies from the final [CLS] state
(through the pooler). A masked LM never computes a loss there, and its heads
learn sharp, mostly positional patterns; issue 14's sentiment loss from the
pre-trained checkpoint is [CLS] attending to itself and [SEP] instead of the
words (README, "Pre-training, then fine-tuning"). random:DIR draws DIR's
shapes with Hugging Face's initialisation (normal 0.02), for comparison.
"""
import json, math, os, struct, sys, unicodedata

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load_safetensors(path):
    raw = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    out = {}
    for k, v in json.loads(raw[8:8 + n]).items():
        if k == "__metadata__":
            continue
        if v["dtype"] != "F32":
            sys.exit("%s: tensor %s is %s; this script reads F32 checkpoints" % (path, k, v["dtype"]))
        s, e = v["data_offsets"]
        out[k] = torch.frombuffer(raw[8 + n + s:8 + n + e], dtype=torch.float32).reshape(v["shape"]).clone()
    return out


class WordPiece:
    """bert-base-uncased's tokenizer (lower-case, accents stripped,
    punctuation split, greedy longest-match sub-words)."""

    def __init__(self, path):
        self.vocab = json.load(open(path))["model"]["vocab"]

    def words(self, text):
        text = unicodedata.normalize("NFD", text.lower())
        out, cur = [], ""
        for c in text:
            if unicodedata.category(c) == "Mn":
                continue
            if c.isspace() or unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
                if cur:
                    out.append(cur)
                cur = ""
                if not c.isspace():
                    out.append(c)
            else:
                cur += c
        return out + ([cur] if cur else [])

    def pieces(self, w):
        out, s = [], 0
        while s < len(w):
            for e in range(len(w), s, -1):
                sub = w[s:e] if s == 0 else "##" + w[s:e]
                if sub in self.vocab:
                    out.append(self.vocab[sub])
                    s = e
                    break
            else:
                return [self.vocab["[UNK]"]]
        return out

    def encode(self, text, max_len=64):
        ids = [i for w in self.words(text) for i in self.pieces(w)][:max_len - 2]
        return [self.vocab["[CLS]"]] + ids + [self.vocab["[SEP]"]]


def encoder(w, ids, layers, heads, eps):
    ln = lambda x, k: torch.nn.functional.layer_norm(x, x.shape[-1:], w[k + ".weight"], w[k + ".bias"], eps)
    lin = lambda x, k: x @ w[k + ".weight"].T + w[k + ".bias"]
    ids = torch.tensor(ids)
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:len(ids)]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    atts = []
    for l in range(layers):
        p = "encoder.layer.%d." % l
        split = lambda t: t.view(len(ids), heads, -1).transpose(0, 1)
        q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), -1)
        atts.append(a)
        x = ln(lin((a @ v).transpose(0, 1).reshape(len(ids), -1), p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = torch.nn.functional.gelu(lin(x, p + "intermediate.dense"))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    return x, atts


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) > 1 else 2)
    tok = WordPiece(os.path.join(ROOT, ".data/tokenizers/bert-base-uncased/tokenizer.json"))
    evalf = os.path.join(ROOT, ".data/sentiment/eval.jsonl")
    sents = [json.loads(l)["text"] for l in open(evalf)][:100]
    for arg in sys.argv[1:]:
        rand = arg.startswith("random:")
        d = arg[len("random:"):] if rand else arg
        cfg = json.load(open(os.path.join(d, "config.json")))
        w = load_safetensors(os.path.join(d, "model.safetensors"))
        w = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in w.items()}
        if rand:
            g = torch.Generator().manual_seed(1)
            w = {k: torch.ones_like(v) if k.endswith("LayerNorm.weight") else torch.zeros_like(v) if k.endswith("bias")
                 else torch.randn(v.shape, generator=g) * cfg.get("initializer_range", 0.02) for k, v in w.items()}
        L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        ent = [[0.0] * H for _ in range(L)]
        own = [[0.0] * H for _ in range(L)]
        sep = [[0.0] * H for _ in range(L)]
        cls = []
        with torch.no_grad():
            for s in sents:
                ids = tok.encode(s)
                x, atts = encoder(w, ids, L, H, cfg.get("layer_norm_eps", 1e-12))
                cls.append(x[0])
                for l in range(L):
                    for h in range(H):
                        a = atts[l][h][0]
                        ent[l][h] += float(-(a * (a + 1e-12).log()).sum() / math.log(len(ids))) / len(sents)
                        own[l][h] += float(a[0]) / len(sents)
                        sep[l][h] += float(a[-1]) / len(sents)
        c = torch.stack(cls)
        print("%s%s" % ("random init of " if rand else "", d))
        for l in range(L):
            for h in range(H):
                print("  layer %d head %d: [CLS] attention entropy %.3f, to itself %.3f, to [SEP] %.3f" % (l, h, ent[l][h], own[l][h], sep[l][h]))
        print("  final [CLS] state: spread across sentences / norm = %.3f" % float(c.std(0).norm() / c.mean(0).norm()))


if __name__ == "__main__":
    main()

"""Reference BERT, GPT-2 and Llama in plain PyTorch, written from the
definitions in Hugging Face transformers (which is not installed here), as an
oracle independent of ringtune's Go code. Parameter names come from the
module tree, exactly as transformers names them.

  hf_ref.py make FAMILY TASK DIR [--dtype F32|F16|BF16] [--format st|sharded|bin]
      Write a tiny random model in HF layout (config.json + weights), a
      batch (batch.json) and reference results (ref.safetensors): logits,
      summed loss, every parameter's gradient ("grad/NAME"), and parameters
      after three AdamW ("adamw/NAME") and three SGD ("sgd/NAME") steps.
  hf_ref.py logits DIR BATCH.json
      Load a saved HF directory into the reference model and print its
      eval-mode logits as JSON.
  hf_ref.py schedules
      Print HF's warm-up schedules' learning rates, stepped through
      torch.optim.lr_scheduler.LambdaLR, as JSON.
  hf_ref.py packed DIR BATCH.json
      Load DIR (written by make) and run a packed causal-LM batch (ids, mask,
      docs: the document index of each token, labels) with an explicit 4D
      block-diagonal causal mask and position ids restarting at each
      document, built here from the definitions; print the summed loss, its
      count, the per-row next-token logits after each row's last real token,
      and the mask as JSON.
  hf_ref.py adamw IN.safetensors OUT.safetensors JSON
      A node's optimizer steps on a flat parameter block: IN holds "p"
      (initial parameters) and "g0", "g1", ... (summed gradients, one per
      step); JSON gives decay_numel, scale, max_norm, lr, betas, eps,
      weight_decay, warmup and total (linear schedule). Per step: grad =
      g*scale, clip_grad_norm_ (if max_norm > 0), torch.optim.AdamW step,
      LambdaLR step. OUT holds "p", "exp_avg" and "exp_avg_sq" after the
      last step, each flat.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

torch.set_num_threads(1)
MIN = torch.finfo(torch.float32).min


# ---------------------------------------------------------------- BERT
class BertEmbeddings(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=c["pad_token_id"])
        s.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        s.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        s.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        s.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(s, ids, tt):
        pos = torch.arange(ids.shape[1])[None, :]
        x = s.word_embeddings(ids) + s.token_type_embeddings(tt)
        x = x + s.position_embeddings(pos)
        return s.dropout(s.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(s, c):
        super().__init__()
        h = c["hidden_size"]
        s.nh, s.hd = c["num_attention_heads"], h // c["num_attention_heads"]
        s.query, s.key, s.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        s.dropout = nn.Dropout(c["attention_probs_dropout_prob"])

    def heads(s, x):
        return x.view(x.shape[0], x.shape[1], s.nh, s.hd).permute(0, 2, 1, 3)

    def forward(s, x, mask):
        q, k, v = s.heads(s.query(x)), s.heads(s.key(x)), s.heads(s.value(x))
        w = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(s.hd) + mask
        p = s.dropout(F.softmax(w, dim=-1))
        ctx = torch.matmul(p, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(x.shape[0], x.shape[1], s.nh * s.hd)


class BertSelfOutput(nn.Module):
    def __init__(s, c, n_in):
        super().__init__()
        s.dense = nn.Linear(n_in, c["hidden_size"])
        s.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        s.dropout = nn.Dropout(c["hidden_dropout_prob"])

    def forward(s, h, inp):
        return s.LayerNorm(s.dropout(s.dense(h)) + inp)


class BertAttention(nn.Module):
    def __init__(s, c):
        super().__init__()
        setattr(s, "self", BertSelfAttention(c))
        s.output = BertSelfOutput(c, c["hidden_size"])

    def forward(s, x, mask):
        return s.output(getattr(s, "self")(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(s, x):
        return F.gelu(s.dense(x))


class BertLayer(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.attention = BertAttention(c)
        s.intermediate = BertIntermediate(c)
        s.output = BertSelfOutput(c, c["intermediate_size"])

    def forward(s, x, mask):
        a = s.attention(x, mask)
        return s.output(s.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.layer = nn.ModuleList([BertLayer(c) for _ in range(c["num_hidden_layers"])])


class BertPooler(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.dense = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(s, x):
        return torch.tanh(s.dense(x[:, 0]))


class BertModel(nn.Module):
    def __init__(s, c, add_pooling_layer=True):
        super().__init__()
        s.embeddings, s.encoder = BertEmbeddings(c), BertEncoder(c)
        if add_pooling_layer:
            s.pooler = BertPooler(c)

    def encode(s, ids, mask, tt):
        ext = (1.0 - mask[:, None, None, :].float()) * MIN
        x = s.embeddings(ids, tt)
        for layer in s.encoder.layer:
            x = layer(x, ext)
        return x

    def forward(s, ids, mask, tt):
        return s.pooler(s.encode(ids, mask, tt))


class BertForSequenceClassification(nn.Module):
    norms = (nn.LayerNorm,)

    def __init__(s, c):
        super().__init__()
        s.num_labels = c["num_labels"]
        s.bert = BertModel(c)
        p = c.get("classifier_dropout")
        s.dropout = nn.Dropout(c["hidden_dropout_prob"] if p is None else p)
        s.classifier = nn.Linear(c["hidden_size"], c["num_labels"])

    def forward(s, b):
        return s.classifier(s.dropout(s.bert(b["ids"], b["mask"], b["types"])))

    def loss(s, logits, b):
        if s.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), b["targets"], reduction="sum"), len(b["targets"])
        return F.cross_entropy(logits, b["labels"], reduction="sum"), len(b["labels"])


class BertPredictionHeadTransform(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.dense = nn.Linear(c["hidden_size"], c["hidden_size"])
        s.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(s, x):
        return s.LayerNorm(F.gelu(s.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.transform = BertPredictionHeadTransform(c)
        s.decoder = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        s.bias = nn.Parameter(torch.zeros(c["vocab_size"]))
        s.decoder.bias = s.bias

    def forward(s, x):
        return s.decoder(s.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.predictions = BertLMPredictionHead(c)

    def forward(s, x):
        return s.predictions(x)


def token_loss(logits, b):
    labels = b["labels"].reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


class BertForMaskedLM(nn.Module):
    norms = (nn.LayerNorm,)
    # transformers ties the decoder to the word embeddings and saves neither
    # copy of the tied tensors.
    tied_keys = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}

    def __init__(s, c):
        super().__init__()
        s.bert = BertModel(c, add_pooling_layer=False)
        s.cls = BertOnlyMLMHead(c)
        s.cls.predictions.decoder.weight = s.bert.embeddings.word_embeddings.weight

    def forward(s, b):
        return s.cls(s.bert.encode(b["ids"], b["mask"], b["types"]))

    def loss(s, logits, b):
        return token_loss(logits, b)


class BertForTokenClassification(nn.Module):
    norms = (nn.LayerNorm,)

    def __init__(s, c):
        super().__init__()
        s.num_labels = c["num_labels"]
        s.bert = BertModel(c, add_pooling_layer=False)
        p = c.get("classifier_dropout")
        s.dropout = nn.Dropout(c["hidden_dropout_prob"] if p is None else p)
        s.classifier = nn.Linear(c["hidden_size"], c["num_labels"])

    def forward(s, b):
        return s.classifier(s.dropout(s.bert.encode(b["ids"], b["mask"], b["types"])))

    def loss(s, logits, b):
        return token_loss(logits, b)


# ---------------------------------------------------------------- GPT-2
class Conv1D(nn.Module):
    def __init__(s, nf, nx):
        super().__init__()
        s.nf = nf
        s.weight = nn.Parameter(torch.empty(nx, nf))
        s.bias = nn.Parameter(torch.zeros(nf))

    def forward(s, x):
        out = torch.addmm(s.bias, x.view(-1, x.size(-1)), s.weight)
        return out.view(x.size()[:-1] + (s.nf,))


def causal_mask(mask):
    t = mask.shape[1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    ok = causal[None, None, :, :] & mask[:, None, None, :].bool()
    return torch.zeros(ok.shape).masked_fill(~ok, MIN)


class GPT2Attention(nn.Module):
    def __init__(s, c):
        super().__init__()
        h = c["n_embd"]
        s.h, s.nh, s.hd = h, c["n_head"], h // c["n_head"]
        s.c_attn, s.c_proj = Conv1D(3 * h, h), Conv1D(h, h)
        s.attn_dropout, s.resid_dropout = nn.Dropout(c["attn_pdrop"]), nn.Dropout(c["resid_pdrop"])

    def heads(s, x):
        return x.view(x.shape[0], x.shape[1], s.nh, s.hd).permute(0, 2, 1, 3)

    def forward(s, x, mask):
        q, k, v = s.c_attn(x).split(s.h, dim=2)
        q, k, v = s.heads(q), s.heads(k), s.heads(v)
        w = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], v.size(-1) ** 0.5)
        p = s.attn_dropout(F.softmax(w + mask, dim=-1))
        a = torch.matmul(p, v).permute(0, 2, 1, 3).contiguous().view(x.shape)
        return s.resid_dropout(s.c_proj(a))


def new_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class GPT2MLP(nn.Module):
    def __init__(s, c):
        super().__init__()
        h = c["n_embd"]
        inner = c.get("n_inner") or 4 * h
        s.c_fc, s.c_proj, s.dropout = Conv1D(inner, h), Conv1D(h, inner), nn.Dropout(c["resid_pdrop"])

    def forward(s, x):
        return s.dropout(s.c_proj(new_gelu(s.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(s, c):
        super().__init__()
        h, eps = c["n_embd"], c["layer_norm_epsilon"]
        s.ln_1, s.attn, s.ln_2, s.mlp = nn.LayerNorm(h, eps=eps), GPT2Attention(c), nn.LayerNorm(h, eps=eps), GPT2MLP(c)

    def forward(s, x, mask):
        x = x + s.attn(s.ln_1(x), mask)
        return x + s.mlp(s.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.wte = nn.Embedding(c["vocab_size"], c["n_embd"])
        s.wpe = nn.Embedding(c["n_positions"], c["n_embd"])
        s.drop = nn.Dropout(c["embd_pdrop"])
        s.h = nn.ModuleList([GPT2Block(c) for _ in range(c["n_layer"])])
        s.ln_f = nn.LayerNorm(c["n_embd"], eps=c["layer_norm_epsilon"])

    def forward(s, ids, mask, pos=None, m=None):
        if pos is None:
            pos = torch.arange(ids.shape[1])[None, :]
        x = s.drop(s.wte(ids) + s.wpe(pos))
        if m is None:
            m = causal_mask(mask)
        for blk in s.h:
            x = blk(x, m)
        return s.ln_f(x)


def lm_loss(logits, labels):
    lg = logits[:, :-1, :].contiguous()
    lb = labels[:, 1:].contiguous()
    loss = F.cross_entropy(lg.view(-1, lg.size(-1)), lb.view(-1), ignore_index=-100, reduction="sum")
    return loss, int((lb != -100).sum())


class GPT2LMHeadModel(nn.Module):
    norms = (nn.LayerNorm,)
    tied = True

    def __init__(s, c):
        super().__init__()
        s.transformer = GPT2Model(c)
        s.lm_head = nn.Linear(c["n_embd"], c["vocab_size"], bias=False)
        s.lm_head.weight = s.transformer.wte.weight

    def forward(s, b):
        return s.lm_head(s.transformer(b["ids"], b["mask"], b.get("pos"), b.get("mask4")))

    def loss(s, logits, b):
        return lm_loss(logits, b["labels"])


# ---------------------------------------------------------------- Llama
class LlamaRMSNorm(nn.Module):
    def __init__(s, h, eps):
        super().__init__()
        s.weight = nn.Parameter(torch.ones(h))
        s.eps = eps

    def forward(s, x):
        dt = x.dtype
        x = x.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + s.eps)
        return s.weight * x.to(dt)


class LlamaRotaryEmbedding(nn.Module):
    def __init__(s, dim, base):
        super().__init__()
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        s.register_buffer("inv_freq", inv, persistent=False)

    def forward(s, pos):
        inv = s.inv_freq[None, :, None].float().expand(pos.shape[0], -1, 1)
        freqs = (inv @ pos[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n):
    b, kv, t, d = x.shape
    if n == 1:
        return x
    return x[:, :, None, :, :].expand(b, kv, n, t, d).reshape(b, kv * n, t, d)


class LlamaAttention(nn.Module):
    def __init__(s, c):
        super().__init__()
        h = c["hidden_size"]
        s.nh, s.nkv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
        s.hd = c.get("head_dim", h // s.nh)
        s.q_proj = nn.Linear(h, s.nh * s.hd, bias=False)
        s.k_proj = nn.Linear(h, s.nkv * s.hd, bias=False)
        s.v_proj = nn.Linear(h, s.nkv * s.hd, bias=False)
        s.o_proj = nn.Linear(s.nh * s.hd, h, bias=False)
        s.p = c.get("attention_dropout", 0.0)

    def forward(s, x, cos, sin, mask):
        b, t, _ = x.shape
        q = s.q_proj(x).view(b, t, s.nh, s.hd).transpose(1, 2)
        k = s.k_proj(x).view(b, t, s.nkv, s.hd).transpose(1, 2)
        v = s.v_proj(x).view(b, t, s.nkv, s.hd).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, s.nh // s.nkv), repeat_kv(v, s.nh // s.nkv)
        w = torch.matmul(q, k.transpose(2, 3)) * s.hd ** -0.5 + mask
        w = F.dropout(F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), p=s.p, training=s.training)
        a = torch.matmul(w, v).transpose(1, 2).contiguous().reshape(b, t, -1)
        return s.o_proj(a)


class LlamaMLP(nn.Module):
    def __init__(s, c):
        super().__init__()
        h, i = c["hidden_size"], c["intermediate_size"]
        s.gate_proj, s.up_proj = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False)
        s.down_proj = nn.Linear(i, h, bias=False)

    def forward(s, x):
        return s.down_proj(F.silu(s.gate_proj(x)) * s.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(s, c):
        super().__init__()
        h, eps = c["hidden_size"], c["rms_norm_eps"]
        s.self_attn, s.mlp = LlamaAttention(c), LlamaMLP(c)
        s.input_layernorm, s.post_attention_layernorm = LlamaRMSNorm(h, eps), LlamaRMSNorm(h, eps)

    def forward(s, x, cos, sin, mask):
        x = x + s.self_attn(s.input_layernorm(x), cos, sin, mask)
        return x + s.mlp(s.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(s, c):
        super().__init__()
        s.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=c.get("pad_token_id"))
        s.layers = nn.ModuleList([LlamaDecoderLayer(c) for _ in range(c["num_hidden_layers"])])
        s.norm = LlamaRMSNorm(c["hidden_size"], c["rms_norm_eps"])
        hd = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])
        s.rotary_emb = LlamaRotaryEmbedding(hd, c.get("rope_theta", 10000.0))

    def forward(s, ids, mask, pos=None, m=None):
        if pos is None:
            pos = torch.arange(ids.shape[1])[None, :].expand(ids.shape[0], -1)
        x = s.embed_tokens(ids)
        cos, sin = s.rotary_emb(pos)
        if m is None:
            m = causal_mask(mask)
        for layer in s.layers:
            x = layer(x, cos, sin, m)
        return s.norm(x)


class LlamaForCausalLM(nn.Module):
    norms = (LlamaRMSNorm,)
    tied = False

    def __init__(s, c):
        super().__init__()
        s.model = LlamaModel(c)
        s.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def forward(s, b):
        return s.lm_head(s.model(b["ids"], b["mask"], b.get("pos"), b.get("mask4")))

    def loss(s, logits, b):
        return lm_loss(logits, b["labels"])


# ---------------------------------------------------------------- files
ST_DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def write_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        raw = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
        header[name] = {"dtype": ST_DT[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        b, e = d["data_offsets"]
        buf = raw[8 + n + b: 8 + n + e]
        if d["dtype"] == "BF16":
            t = torch.from_numpy(np.frombuffer(buf, dtype="<i2").copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(buf, dtype={"F32": "<f4", "F16": "<f2"}[d["dtype"]]).copy())
        out[name] = t.reshape(d["shape"]).float()
    return out


CLASSES = {"bert": BertForSequenceClassification, "gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}
HEADS = {"BertForMaskedLM": BertForMaskedLM, "BertForTokenClassification": BertForTokenClassification}


def model_class(c):
    a = (c.get("architectures") or [""])[0]
    return HEADS.get(a, CLASSES[c["model_type"]])


def tiny_config(family, task):
    if family == "bert":
        c = dict(model_type="bert", architectures=["BertForSequenceClassification"], vocab_size=99, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, hidden_act="gelu",
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=64,
                 type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
                 classifier_dropout=None)
        c["num_labels"] = 1 if task == "regression" else 3
        if task == "regression":
            c["problem_type"] = "regression"
        if task == "masked_lm":
            c["architectures"] = ["BertForMaskedLM"]
            del c["num_labels"]
        if task == "token_classification":
            c["architectures"] = ["BertForTokenClassification"]
            c["num_labels"] = 5
        return c
    if family == "gpt2":
        return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=101, n_embd=32, n_layer=2,
                    n_head=4, n_inner=None, n_positions=64, activation_function="gelu_new", resid_pdrop=0.1,
                    embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5, initializer_range=0.02,
                    tie_word_embeddings=True)
    return dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=103, hidden_size=32,
                intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                hidden_act="silu", max_position_embeddings=64, initializer_range=0.02, rms_norm_eps=1e-6,
                rope_theta=10000.0, tie_word_embeddings=False, attention_dropout=0.0)


def make_batch(family, task, vocab, gen):
    lens, t = [9, 6, 4], 9
    ids = torch.randint(1, vocab, (3, t), generator=gen)
    mask = torch.zeros(3, t, dtype=torch.int64)
    for i, n in enumerate(lens):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0
    types = torch.zeros(3, t, dtype=torch.int64)
    if family == "bert":
        types[0, 5:9] = 1
    b = {"ids": ids, "mask": mask, "types": types}
    if task == "classification":
        b["labels"] = torch.tensor([2, 0, 1])
    elif task == "masked_lm":
        # Mask about a third of the real tokens (at least one per row) with
        # id vocab-1, the labels holding the original ids.
        pick = (torch.rand(3, t, generator=gen) < 0.35) & (mask == 1)
        pick[:, 1] = True
        b["labels"] = ids.masked_fill(~pick, -100)
        b["ids"] = ids.masked_fill(pick, vocab - 1)
    elif task == "token_classification":
        lab = torch.randint(0, 5, (3, t), generator=gen)
        skip = (torch.rand(3, t, generator=gen) < 0.25) | (mask == 0)
        skip[:, 0] = True  # [CLS]
        b["labels"] = lab.masked_fill(skip, -100)
    elif task == "regression":
        b["targets"] = torch.randn(3, generator=gen)
    else:
        b["labels"] = ids.masked_fill(mask == 0, -100)
    return b


def batch_json(b):
    return {k: v.tolist() for k, v in b.items()}


def batch_from_json(d):
    return {k: torch.tensor(v) for k, v in d.items()}


def decay_groups(model):
    # transformers' Trainer: no decay for biases and for norm layers' weights.
    no = set()
    for mn, mod in model.named_modules():
        for pn, _ in mod.named_parameters(recurse=False):
            if isinstance(mod, model.norms) or pn == "bias":
                no.add((mn + "." if mn else "") + pn)
    named = dict(model.named_parameters())
    return ([p for n, p in named.items() if n not in no], [p for n, p in named.items() if n in no])


def hf_lambda(kind, warmup, total):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return max(0.0, float(total - step) / float(max(1, total - warmup)))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(0.5) * 2.0 * progress)))
    return f


def run_steps(model, grads, opt, sched, clip):
    params = dict(model.named_parameters())
    for _ in range(3):
        for n, p in params.items():
            p.grad = grads[n].clone()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
    return {n: p.detach().clone() for n, p in params.items()}


def cmd_make(family, task, out, dtype="F32", fmt="st"):
    torch.manual_seed(1234)
    gen = torch.Generator().manual_seed(99)
    c = tiny_config(family, task)
    model = model_class(c)(c)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
            elif n.endswith("bias"):
                p.normal_(0, 0.1)
            else:
                p.copy_(1 + 0.2 * torch.randn(p.shape))
            if dtype != "F32":
                p.copy_(p.to({"F16": torch.float16, "BF16": torch.bfloat16}[dtype]).float())
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    sd = {k: v for k, v in model.state_dict().items()}
    if getattr(model, "tied", False):
        del sd["lm_head.weight"]  # transformers saves tied weights once
    for k in getattr(model, "tied_keys", ()):
        del sd[k]
    tdt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    sd = {k: v.to(tdt) for k, v in sd.items()}
    if fmt == "st":
        write_safetensors(os.path.join(out, "model.safetensors"), sd)
    elif fmt == "sharded":
        names = list(sd)
        half = len(names) // 2
        wm = {}
        for i, part in enumerate([names[:half], names[half:]]):
            fn = "model-%05d-of-00002.safetensors" % (i + 1)
            write_safetensors(os.path.join(out, fn), {k: sd[k] for k in part})
            wm.update({k: fn for k in part})
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": wm}, f)
    else:
        torch.save(sd, os.path.join(out, "pytorch_model.bin"))
    b = make_batch(family, task, c["vocab_size"], gen)
    with open(os.path.join(out, "batch.json"), "w") as f:
        json.dump(batch_json(b), f)

    model.eval()  # dropout off; the Go side trains with dropout 0
    logits = model(b)
    loss, count = model.loss(logits, b)
    loss.backward()
    ref = {"logits": logits.detach(), "loss": loss.detach().reshape(1), "count": torch.tensor([float(count)])}
    grads = {}
    for n, p in model.named_parameters():
        ref["grad/" + n] = p.grad.detach().clone()
        grads[n] = p.grad.detach() / count
    init = {n: p.detach().clone() for n, p in model.named_parameters()}

    dec, nodec = decay_groups(model)
    opt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.1}, {"params": nodec, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda("linear", 1, 5))
    for n, v in run_steps(model, grads, opt, sched, 0.5).items():
        ref["adamw/" + n] = v
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init[n])
    dec, nodec = decay_groups(model)
    opt = torch.optim.SGD([{"params": dec, "weight_decay": 0.1}, {"params": nodec, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda("cosine", 0, 4))
    for n, v in run_steps(model, grads, opt, sched, 0).items():
        ref["sgd/" + n] = v
    write_safetensors(os.path.join(out, "ref.safetensors"), {k: v.float() for k, v in ref.items()})


def cmd_logits(d, batch_path):
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    if "id2label" in c and "num_labels" not in c:
        c["num_labels"] = len(c["id2label"])
    model = model_class(c)(c)
    sd = read_safetensors(os.path.join(d, "model.safetensors"))
    res = model.load_state_dict(sd, strict=False)
    allowed = {"lm_head.weight"} if getattr(model, "tied", False) else set()
    allowed |= getattr(model, "tied_keys", set())
    if set(res.missing_keys) - allowed or res.unexpected_keys:
        print("load_state_dict: missing %s unexpected %s" % (res.missing_keys, res.unexpected_keys), file=sys.stderr)
        sys.exit(1)
    if getattr(model, "tied", False) and model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        print("tie broken", file=sys.stderr)
        sys.exit(1)
    model.eval()
    with open(batch_path) as f:
        b = batch_from_json(json.load(f))
    with torch.no_grad():
        print(json.dumps(model(b).tolist()))


def load_dir(d):
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    model = CLASSES[c["model_type"]](c)
    names = [n for n in os.listdir(d) if n.endswith(".safetensors") and n != "ref.safetensors"]
    sd = {}
    for n in names:
        sd.update(read_safetensors(os.path.join(d, n)))
    model.load_state_dict(sd, strict=False)
    if getattr(model, "tied", False):
        model.lm_head.weight = model.transformer.wte.weight
    model.eval()
    return model


def cmd_packed(d, batch_path):
    model = load_dir(d)
    with open(batch_path) as f:
        b = batch_from_json(json.load(f))
    ids, mask, docs = b["ids"], b["mask"], b["docs"]
    bsz, t = ids.shape
    # A query attends to a key that is not padding, not after it, and in
    # its own document.
    same_doc = docs[:, :, None] == docs[:, None, :]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))[None]
    ok = causal & same_doc & mask[:, None, :].bool()
    b["mask4"] = torch.zeros(bsz, 1, t, t).masked_fill(~ok[:, None], MIN)
    # Positions restart at each document.
    pos = torch.zeros(bsz, t, dtype=torch.int64)
    for r in range(bsz):
        for j in range(1, t):
            pos[r, j] = 0 if docs[r, j] != docs[r, j - 1] else pos[r, j - 1] + 1
    b["pos"] = pos
    # A document's first token is not the previous document's target.
    labels = b["labels"].clone()
    labels[:, 1:] = labels[:, 1:].masked_fill(docs[:, 1:] != docs[:, :-1], -100)
    with torch.no_grad():
        logits = model(b)
        loss, count = lm_loss(logits, labels)
    last = mask.sum(1) - 1
    print(json.dumps({"loss": loss.item(), "count": count,
                      "last_logits": [logits[r, last[r]].tolist() for r in range(bsz)],
                      "mask4": b["mask4"][:, 0].eq(0).int().tolist()}))


def cmd_schedules():
    out = {}
    for kind, warmup, total in [("constant", 3, 10), ("linear", 3, 10), ("cosine", 3, 10), ("linear", 0, 7),
                                ("cosine", 0, 5), ("constant", 0, 4)]:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda(kind, warmup, total))
        lrs = []
        for _ in range(12):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out["%s/%d/%d" % (kind, warmup, total)] = lrs
    print(json.dumps(out))


def cmd_adamw(inp, out, args):
    a = json.loads(args)
    t = read_safetensors(inp)
    d = a["decay_numel"]
    flat = t["p"]
    # The decayed prefix and the rest as two parameters in two groups, as
    # a model's parameters split by decay_groups.
    ps = [torch.nn.Parameter(flat[:d].clone()), torch.nn.Parameter(flat[d:].clone())]
    opt = torch.optim.AdamW([{"params": [ps[0]], "weight_decay": a["weight_decay"]},
                             {"params": [ps[1]], "weight_decay": 0.0}],
                            lr=a["lr"], betas=tuple(a["betas"]), eps=a["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, hf_lambda("linear", a["warmup"], a["total"]))
    k = 0
    while "g%d" % k in t:
        g = t["g%d" % k]
        ps[0].grad, ps[1].grad = g[:d].clone(), g[d:].clone()
        with torch.no_grad():
            for p in ps:
                p.grad.mul_(a["scale"])
        if a["max_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(ps, a["max_norm"])
        opt.step()
        sched.step()
        k += 1
    st = [opt.state[p] for p in ps]
    write_safetensors(out, {"p": torch.cat([p.detach() for p in ps]),
                            "exp_avg": torch.cat([s["exp_avg"] for s in st]),
                            "exp_avg_sq": torch.cat([s["exp_avg_sq"] for s in st])})


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "make":
        opts = dict(zip(a[4::2], a[5::2]))
        cmd_make(a[1], a[2], a[3], opts.get("--dtype", "F32"), opts.get("--format", "st"))
    elif a[0] == "logits":
        cmd_logits(a[1], a[2])
    elif a[0] == "packed":
        cmd_packed(a[1], a[2])
    elif a[0] == "schedules":
        cmd_schedules()
    elif a[0] == "adamw":
        cmd_adamw(a[1], a[2], a[3])
    else:
        sys.exit("usage: see the module docstring")

"""Compares what internal/gpucheck computed with model/hf against the host's
PyTorch on the same device, for scripts/gpu/check.sh.

  compare.py DIR RESULTS --task T --device cuda:0 --precision fp32|bf16
             [--export EXP] [--tol X]

DIR is a model directory made by model/hf/testdata/hf_ref.py make (weights and
batch.json); RESULTS is gpucheck's output directory. The oracle is hf_ref.py's
plain-PyTorch model (written from transformers' definitions), run on the same
device: fp32, or bf16 autocast with fp32 weights (torch.autocast). It checks
the summed loss, the evaluation logits and every gradient, relative to each
tensor's largest magnitude (gradients against the whole gradient's, as the
Go tests do). With --export and transformers installed, the directory that
ringtune saved is also loaded by transformers' own from_pretrained and its
logits are compared with ringtune's on the same inputs.

Prints one "numerics: ..." line per check and exits 1 when any exceeds the
tolerance (default 1e-4 for fp32, 2e-2 for bf16).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "model", "hf", "testdata"))
import hf_ref  # noqa: E402


def rel(got, want, scale=None):
    got, want = got.double().flatten(), want.double().flatten()
    if got.shape != want.shape:
        return float("inf")
    d = (got - want).abs().max().item() if got.numel() else 0.0
    s = want.abs().max().item() if want.numel() else 0.0
    if scale is not None and scale > s:
        s = scale
    return d / s if s > 0 else d


def last_logits(logits, mask):
    # A causal LM's logits at each row's last real token, as model/hf's
    # Predict returns them.
    if logits.dim() == 2:
        return logits
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("results")
    ap.add_argument("--task", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--export", default="")
    ap.add_argument("--tol", type=float, default=None)
    a = ap.parse_args()
    tol = a.tol if a.tol is not None else (1e-4 if a.precision == "fp32" else 2e-2)
    dev = torch.device(a.device)
    torch.manual_seed(0)

    with open(os.path.join(a.dir, "config.json")) as f:
        c = json.load(f)
    if "id2label" in c and "num_labels" not in c:
        c["num_labels"] = len(c["id2label"])
    model = hf_ref.CLASSES[c["model_type"]](c)
    sd = hf_ref.read_safetensors(os.path.join(a.dir, "model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    model.to(dev).eval()  # dropout off, as gpucheck runs it
    with open(os.path.join(a.dir, "batch.json")) as f:
        b = {k: v.to(dev) for k, v in hf_ref.batch_from_json(json.load(f)).items()}

    got = hf_ref.read_safetensors(os.path.join(a.results, "model.safetensors"))
    got = {k: v.to(dev) for k, v in got.items()}

    def fwd():
        if a.precision == "bf16":
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return model(b).float()
        return model(b)

    logits = fwd()
    loss, count = model.loss(logits, b)
    loss.backward()
    with torch.no_grad():
        ref_logits = last_logits(fwd(), b["mask"])

    tag = "arch=%s task=%s device=%s precision=%s" % (c["model_type"], a.task, a.device, a.precision)
    results = []
    results.append(("loss", rel(got["loss"], loss.detach().reshape(1))))
    results.append(("logits", rel(got["logits"], ref_logits)))
    if int(got["count"].item()) != count:
        results.append(("count", float("inf")))
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    worst, worst_name = 0.0, ""
    for n, g in grads.items():
        k = "grad/" + n
        e = rel(got[k], g, scale) if k in got else float("inf")
        if e > worst:
            worst, worst_name = e, n
    results.append(("gradients", worst))
    ok = True
    for what, e in results:
        good = e <= tol
        ok &= good
        extra = " worst=%s" % worst_name if what == "gradients" and worst_name else ""
        print("numerics: %s check=%s rel=%.3g tol=%g %s%s" % (tag, what, e, tol, "ok" if good else "FAIL", extra))

    if a.export:
        try:
            import transformers
        except ImportError:
            print("numerics: %s check=from_pretrained skipped: transformers is not installed" % tag)
        else:
            auto = (transformers.AutoModelForCausalLM if a.task == "causal_lm"
                    else transformers.AutoModelForSequenceClassification)
            hf = auto.from_pretrained(a.export, torch_dtype=torch.float32).to(dev).eval()
            kw = {"input_ids": b["ids"], "attention_mask": b["mask"]}
            if c["model_type"] == "bert":
                kw["token_type_ids"] = b["types"]
            with torch.no_grad():
                out = last_logits(hf(**kw).logits.float(), b["mask"])
            # ringtune's eval logits in this precision against transformers'
            # fp32 forward of ringtune's export.
            e = rel(got["logits"], out)
            good = e <= tol
            ok &= good
            print("numerics: %s check=from_pretrained transformers=%s rel=%.3g tol=%g %s"
                  % (tag, transformers.__version__, e, tol, "ok" if good else "FAIL"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

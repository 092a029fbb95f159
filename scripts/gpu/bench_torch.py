"""PyTorch eager side of scripts/gpu/bench.sh: trains the causal LM of
CONFIG (hf_ref.py's plain-PyTorch GPT-2 or Llama, random weights) on random
tokens, with fp32 weights and AdamW state and bf16 autocast, exactly the work
internal/gpucheck -bench-steps does, and prints tokens_per_s and the peak
memory torch allocated.

  bench_torch.py CONFIG.json DEVICE STEPS BATCH SEQ [fp32|bf16]
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "model", "hf", "testdata"))
import hf_ref  # noqa: E402

torch.set_num_threads(os.cpu_count() or 1)  # hf_ref sets 1 for the tests


def main():
    cfg, dev, steps, rows, seq = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    prec = sys.argv[6] if len(sys.argv) > 6 else "bf16"
    with open(cfg) as f:
        c = json.load(f)
    torch.manual_seed(1)
    model = hf_ref.CLASSES[c["model_type"]](c).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, c["vocab_size"], (rows, seq), device=dev)
    b = {"ids": ids, "mask": torch.ones_like(ids), "types": torch.zeros_like(ids), "labels": ids}
    t0 = None
    for i in range(steps + 3):
        if i == 3:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
            logits = model(b)
        loss, count = model.loss(logits.float(), b)
        (loss / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    el = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else 0.0
    n = sum(p.numel() for p in model.parameters())
    print("params=%d tokens_per_s=%.1f torch_peak_alloc_gb=%.2f" % (n, steps * rows * seq / el, peak))


if __name__ == "__main__":
    main()

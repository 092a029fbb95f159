"""Times torch.optim.AdamW (the default single-tensor path on CPU) on one flat
float32 tensor: the peer of `torchbench -mode adamw` (scripts/bench/big.sh).

usage: adamw_torch.py NUMEL STEPS WARMUP MAX_NORM
Per step, as a node applies one: grad /= 8 (the global count), clip_grad_norm_
to MAX_NORM (0 off), optimizer.step(), zero_grad(set_to_none=False); the
gradient is refilled from a fixed buffer outside the timed region. One
intra-op thread. Prints JSON {"median_ms", "mean_ms", "min_ms", "max_ms"}.
"""
import json
import statistics
import sys
import time

import torch

numel, steps, warmup, max_norm = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(1)
torch.manual_seed(1)
dec = numel * 9 // 10
w = torch.nn.Parameter(torch.randn(dec) * 0.02)
b = torch.nn.Parameter(torch.randn(numel - dec) * 0.02)
gw, gb = torch.randn(dec) * 0.5, torch.randn(numel - dec) * 0.5
opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.01}, {"params": [b], "weight_decay": 0.0}], lr=1e-4)
w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
ms = []
for i in range(warmup + steps):
    w.grad.copy_(gw)
    b.grad.copy_(gb)
    t0 = time.perf_counter()
    with torch.no_grad():
        w.grad.div_(8)
        b.grad.div_(8)
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_([w, b], max_norm)
    opt.step()
    opt.zero_grad(set_to_none=False)
    if i >= warmup:
        ms.append(1000 * (time.perf_counter() - t0))
print(json.dumps({"median_ms": statistics.median(ms), "mean_ms": statistics.mean(ms), "min_ms": min(ms), "max_ms": max(ms)}))

"""The peer of `scripts/bench.sh ckpt`: torch.save of a GPT-2 124M-sized
model's state_dict and its AdamW optimizer's state_dict (parameters, both
moments), the way scripts/bench/ddp_big.py's rank 0 saves a checkpoint.

The model is GPT-2 small's parameter shapes (tied lm_head: 124,439,808
parameters) as plain tensors, with the AdamW state of one step. Three saves
straight to a path as DDP's bench does (page cache, no fsync), and three
into a file that is then flushed and os.fsync'd (a durable checkpoint, as
ringtune's). Prints one JSON line: params, bytes (the file's size),
save_s and save_fsync_s (medians) and the runs.

    /usr/bin/python3 scripts/bench/ckpt_torch.py DIR
"""
import json
import os
import statistics
import sys
import time

import torch


def gpt2_small():
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = {"wte.weight": (vocab, d), "wpe.weight": (ctx, d)}
    for i in range(layers):
        p = "h.%d." % i
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, 4 * d), p + "mlp.c_fc.bias": (4 * d,),
            p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,),
        })
    shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    model = torch.nn.Module()
    for name, shape in gpt2_small().items():
        model.register_parameter(name.replace(".", "_"), torch.nn.Parameter(torch.randn(shape) * 0.02))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()  # creates exp_avg and exp_avg_sq
    path = os.path.join(out, "ckpt.pt")
    plain, synced, size = [], [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
        plain.append(time.perf_counter() - t0)
        size = os.path.getsize(path)
        os.remove(path)
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, f)
            f.flush()
            os.fsync(f.fileno())
        synced.append(time.perf_counter() - t0)
        os.remove(path)
    print(json.dumps({"params": params, "bytes": size, "save_s": statistics.median(plain),
                      "save_fsync_s": statistics.median(synced), "runs": plain, "fsync_runs": synced}))


if __name__ == "__main__":
    main()

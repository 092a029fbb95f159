"""PyTorch DDP (gloo) peer of scripts/bench/big.sh: the same GPT-2 as the
model directory's config.json, written in plain torch (model/hf/testdata/
hf_ref.py's GPT2LMHeadModel, which follows transformers), random init, N
ranks on 127.0.0.1, one intra-op thread each.

usage: ddp_big.py MODEL_DIR OUT.json [--world 2] [--batch 4] [--seq 128]
                  [--steps 4] [--warmup 2] [--max-norm 1.0] [--checkpoint]

Per step and rank, as a ringtune node with global batch world*batch does:
zero_grad, forward and backward of the summed next-token loss of one
micro-batch of synthetic full-length sequences, divide by the global token
count, clip_grad_norm_, AdamW (lr 1e-4, weight decay 0.01 on matrices and
embeddings only). samples/s = world*batch*steps over the timed steps'
wall time (after a barrier). With --checkpoint, as ringtune's window holds
a checkpoint in the middle of the timed steps, a final one and the export,
rank 0 saves the model and optimizer state_dicts with torch.save at the
middle and at the end and the model's state_dict as pytorch_model.bin
(the others wait at a barrier, as DDP training scripts do), and that time
counts in samples/s too. Peak RSS is each rank's ru_maxrss; the JSON has
the largest, and the median step time.
"""
import argparse
import datetime
import json
import os
import resource
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "model", "hf", "testdata"))


def worker(rank, a, port, q):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import hf_ref

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=a.world,
                            timeout=datetime.timedelta(seconds=600))
    with open(os.path.join(a.model_dir, "config.json")) as f:
        c = json.load(f)
    torch.manual_seed(1234)  # the same initial weights on every rank
    model = hf_ref.GPT2LMHeadModel(c)
    model.train()
    ddp = DDP(model)
    dec, nodec = hf_ref.decay_groups(model)
    opt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.01}, {"params": nodec, "weight_decay": 0.0}], lr=1e-4)
    gen = torch.Generator().manual_seed(99 + rank)
    nparams = sum(p.numel() for p in model.parameters())
    times = []
    saves = []

    def save(kind):
        dist.barrier()
        t0 = time.perf_counter()
        if rank == 0:
            if kind == "checkpoint":
                torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, os.path.join(a.save_dir, "ckpt.pt"))
            else:
                torch.save(model.state_dict(), os.path.join(a.save_dir, "pytorch_model.bin"))
        dist.barrier()
        saves.append(time.perf_counter() - t0)

    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, c["vocab_size"], (a.batch, a.seq), generator=gen)
        b = {"ids": ids, "mask": torch.ones_like(ids), "labels": ids}
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss, n = model.loss(ddp(b), b)
        # DDP averages the ranks' gradients, so loss/n gives the sum over
        # the global batch divided by its token count (n per rank), as
        # ringtune divides.
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.max_norm)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
        if a.checkpoint and step == a.warmup + a.steps // 2 - 1:
            save("checkpoint")
    if a.checkpoint:
        save("checkpoint")
        save("export")
    dist.barrier()
    q.put({"rank": rank, "times": times, "saves": saves, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "params": nparams})
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-norm", type=float, default=1.0)
    ap.add_argument("--checkpoint", action="store_true")
    a = ap.parse_args()
    import tempfile
    import torch.multiprocessing as mp
    a.save_dir = tempfile.mkdtemp(prefix="ddp-big-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, a, port, q)) for r in range(a.world)]
    for p in procs:
        p.start()
    res = [q.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            sys.exit("ddp_big: a rank exited with %s" % p.exitcode)
    # A step's time is the slowest rank's.
    step = [max(r["times"][i] for r in res) for i in range(a.steps)]
    saved = max(sum(r["saves"]) for r in res)
    out = {"params": res[0]["params"], "world": a.world, "step_s_median": statistics.median(step),
           "samples_per_s": a.world * a.batch * len(step) / (sum(step) + saved),
           "steps_samples_per_s": a.world * a.batch * len(step) / sum(step), "save_s": saved,
           "peak_rss_mb": max(r["maxrss_kb"] for r in res) / 1024}
    import shutil
    shutil.rmtree(a.save_dir, ignore_errors=True)
    with open(a.out, "w") as f:
        json.dump(out, f)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

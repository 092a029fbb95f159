"""PyTorch side of scripts/bench/model.sh: the same model directory (made by
model/hf/testdata/hf_ref.py) trained with forward, backward, gradient
division, clipping and AdamW, one thread. Prints ms_per_step and
rss_growth_pct like hfbench."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "model", "hf", "testdata"))
import hf_ref  # noqa: E402
import torch  # noqa: E402


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(d, steps):
    torch.set_num_threads(1)
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    model = hf_ref.CLASSES[c["model_type"]](c)
    sd = hf_ref.read_safetensors(os.path.join(d, "model.safetensors"))
    model.load_state_dict(sd, strict=False)
    with open(os.path.join(d, "batch.json")) as f:
        b = hf_ref.batch_from_json(json.load(f))
    model.train()
    dec, nodec = hf_ref.decay_groups(model)
    opt = torch.optim.AdamW([{"params": dec, "weight_decay": 0.01}, {"params": nodec, "weight_decay": 0.0}],
                            lr=1e-4, foreach=False)
    params = list(model.parameters())

    def step():
        opt.zero_grad(set_to_none=False)
        loss, n = model.loss(model(b), b)
        loss.backward()
        for p in params:
            p.grad.div_(n)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(max(steps // 10, 20)):
        step()
    r0 = rss_kb()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    el = time.perf_counter() - t0
    print("ms_per_step=%.4f rss_growth_pct=%.2f" % (el * 1000 / steps, 100.0 * (rss_kb() - r0) / r0))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

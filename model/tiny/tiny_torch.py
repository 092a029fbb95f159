"""The tiny model of model/tiny in plain PyTorch, op for op.

Used two ways:
  * as the numerical oracle of model/tiny's test (mode "check"): it reads the
    parameters, a batch and the settings the Go test wrote, and writes the
    loss, the gradients and the parameters after K AdamW steps;
  * as the peer of `scripts/bench.sh step` (mode "bench"): the same model and
    step (forward, backward, clip, AdamW) timed in PyTorch.

Run with Debian's PyTorch: /usr/bin/python3 tiny_torch.py MODE ...
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def specs(cfg):
    h, f = cfg["hidden"], cfg["ffn"]
    out = [("emb.tok", [cfg["vocab"], h], True), ("emb.pos", [cfg["max_len"], h], True),
           ("emb.ln.weight", [h], False), ("emb.ln.bias", [h], False)]
    for l in range(cfg["layers"]):
        p = "layer.%d." % l
        out += [(p + "qkv.weight", [3 * h, h], True), (p + "qkv.bias", [3 * h], False),
                (p + "out.weight", [h, h], True), (p + "out.bias", [h], False),
                (p + "ln1.weight", [h], False), (p + "ln1.bias", [h], False),
                (p + "ff1.weight", [f, h], True), (p + "ff1.bias", [f], False),
                (p + "ff2.weight", [h, f], True), (p + "ff2.bias", [h], False),
                (p + "ln2.weight", [h], False), (p + "ln2.bias", [h], False)]
    out += [("pool.weight", [h, h], True), ("pool.bias", [h], False),
            ("cls.weight", [cfg["labels"], h], True), ("cls.bias", [cfg["labels"]], False)]
    return out


def init_params(cfg):
    ps = {}
    for name, shape, decay in specs(cfg):
        t = torch.zeros(shape)
        if decay:
            t.normal_(0, 0.02)
        elif name.endswith(".weight"):
            t.fill_(1)
        ps[name] = t.requires_grad_()
    return ps


def logits(p, cfg, ids, mask, train):
    b, t = ids.shape
    h, nh = cfg["hidden"], cfg["heads"]
    hd = h // nh
    dp = cfg.get("dropout", 0.0)
    drop = lambda x: F.dropout(x, dp, True) if (train and dp > 0) else x
    x = F.embedding(ids, p["emb.tok"]) + p["emb.pos"][:t]
    x = drop(F.layer_norm(x, (h,), p["emb.ln.weight"], p["emb.ln.bias"], 1e-12))
    add = (mask.to(torch.float32).view(b, 1, 1, t) + -1) * 1e9
    for l in range(cfg["layers"]):
        q_ = "layer.%d." % l
        qkv = F.linear(x, p[q_ + "qkv.weight"], p[q_ + "qkv.bias"]).view(b, t, 3, nh, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1 / math.sqrt(hd))
        attn = drop(torch.softmax(scores + add, -1))
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, h)
        a = drop(F.linear(ctx, p[q_ + "out.weight"], p[q_ + "out.bias"]))
        x = F.layer_norm(x + a, (h,), p[q_ + "ln1.weight"], p[q_ + "ln1.bias"], 1e-12)
        f = F.gelu(F.linear(x, p[q_ + "ff1.weight"], p[q_ + "ff1.bias"]))
        f = drop(F.linear(drop(f), p[q_ + "ff2.weight"], p[q_ + "ff2.bias"]))
        x = F.layer_norm(x + f, (h,), p[q_ + "ln2.weight"], p[q_ + "ln2.bias"], 1e-12)
    pooled = torch.tanh(F.linear(x[:, 0], p["pool.weight"], p["pool.bias"]))
    return F.linear(drop(pooled), p["cls.weight"], p["cls.bias"])


def make_optimizer(p, cfg, lr):
    decay = [p[n] for n, _, d in specs(cfg) if d]
    rest = [p[n] for n, _, d in specs(cfg) if not d]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8)


def train_step(p, cfg, opt, ids, mask, labels, max_norm):
    opt.zero_grad(set_to_none=False)
    loss = F.cross_entropy(logits(p, cfg, ids, mask, True), labels, reduction="sum")
    loss.backward()
    n = ids.shape[0]
    with torch.no_grad():
        for t in p.values():
            t.grad.div_(n)
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(list(p.values()), max_norm)
    opt.step()
    return loss.item()


def check(d):
    """Oracle for the Go test: files in directory d."""
    cfg = json.load(open(d + "/cfg.json"))
    torch.set_num_threads(1)
    flat = torch.frombuffer(bytearray(open(d + "/params.bin", "rb").read()), dtype=torch.float32)
    p = {}
    for name, off, shape in zip(cfg["names"], cfg["offsets"], cfg["shapes"]):
        n = math.prod(shape)
        p[name] = flat[off:off + n].clone().view(shape).requires_grad_()
    order = cfg["names"]
    bt = json.load(open(d + "/batch.json"))
    ids = torch.tensor(bt["ids"], dtype=torch.int64).view(bt["b"], bt["t"])
    mask = torch.tensor(bt["mask"], dtype=torch.int64).view(bt["b"], bt["t"])
    labels = torch.tensor(bt["labels"], dtype=torch.int64)
    loss = F.cross_entropy(logits(p, cfg, ids, mask, False), labels, reduction="sum")
    loss.backward()
    grads = torch.cat([p[n].grad.reshape(-1) for n in order])
    open(d + "/grads.bin", "wb").write(grads.numpy().tobytes())
    for t in p.values():
        t.grad = None
    opt = make_optimizer(p, cfg, cfg["lr"])
    for _ in range(cfg["steps"]):
        train_step(p, cfg, opt, ids, mask, labels, cfg["max_norm"])
    after = torch.cat([p[n].detach().reshape(-1) for n in order])
    open(d + "/after.bin", "wb").write(after.numpy().tobytes())
    json.dump({"loss": loss.item()}, open(d + "/loss.json", "w"))


def bench(args):
    """Times the same training step as the Go benchmark; prints JSON."""
    cfg = json.loads(args[0])
    steps, warmup = int(args[1]), int(args[2])
    torch.set_num_threads(cfg.get("threads", 1))
    torch.manual_seed(1)
    p = init_params(cfg)
    opt = make_optimizer(p, cfg, 1e-4)
    g = torch.Generator().manual_seed(2)
    b, t = cfg["batch"], cfg["seq"]
    pool = [(torch.randint(0, cfg["vocab"], (b, t), generator=g), torch.ones(b, t, dtype=torch.int64),
             torch.randint(0, cfg["labels"], (b,), generator=g)) for _ in range(8)]
    for i in range(warmup):
        train_step(p, cfg, opt, *pool[i % 8], 1.0)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        train_step(p, cfg, opt, *pool[i % 8], 1.0)
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"median_ms": 1000 * times[len(times) // 2], "mean_ms": 1000 * sum(times) / len(times)}))


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    elif sys.argv[1] == "bench":
        bench(sys.argv[2:])
    else:
        sys.exit("usage: tiny_torch.py check DIR | bench CFG_JSON STEPS WARMUP")

#!/usr/bin/python3
"""scripts/ckpt-redraw.py SRC OUT (--redraw SUBSTR | --scale SUBSTR F)...

Writes OUT, a copy of the Hugging Face BERT directory SRC (config.json,
model.safetensors, F32) in which every tensor whose name contains SUBSTR is
re-drawn with Hugging Face's initialisation (weights normal 0.02 from a
fixed seed, biases 0, LayerNorm weights 1) or multiplied by F. Plain Python
and PyTorch (Debian's python3-torch). Used for the controlled experiments
of README "Why the checkpoint loses on sentiment": e.g.
  --redraw .attention.self.query --redraw .attention.self.key   (forget the attention patterns)
  --redraw encoder.layer.                                        (keep the embeddings only)
  --scale .attention.self.query 0.5 --scale .attention.self.key 0.5   (softer attention)
"""
import json, os, shutil, struct, sys

import torch


def load(path):
    raw = bytearray(open(path, "rb").read())
    n = struct.unpack("<Q", raw[:8])[0]
    out = {}
    for k, v in json.loads(raw[8:8 + n]).items():
        if k == "__metadata__":
            continue
        if v["dtype"] != "F32":
            sys.exit("%s: tensor %s is %s; this script handles F32 only" % (path, k, v["dtype"]))
        s, e = v["data_offsets"]
        out[k] = torch.frombuffer(raw[8 + n + s:8 + n + e], dtype=torch.float32).reshape(v["shape"]).clone()
    return out


def save(tensors, path):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for k, v in tensors.items():
        b = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def main():
    a = sys.argv[1:]
    if len(a) < 4 or a[0] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if a and a[0] in ("-h", "--help") else 2)
    src, out, ops = a[0], a[1], []
    i = 2
    while i < len(a):
        if a[i] == "--redraw" and i + 1 < len(a):
            ops.append(("redraw", a[i + 1], None))
            i += 2
        elif a[i] == "--scale" and i + 2 < len(a):
            ops.append(("scale", a[i + 1], float(a[i + 2])))
            i += 3
        else:
            sys.exit("ckpt-redraw: unexpected argument %r (see --help)" % a[i])
    w = load(os.path.join(src, "model.safetensors"))
    # A fresh initialisation of every tensor, drawn in file order, so that
    # a tensor's draw does not depend on which others are re-drawn.
    g = torch.Generator().manual_seed(7)
    fresh = {}
    for k, v in w.items():
        if k.endswith("LayerNorm.weight"):
            fresh[k] = torch.ones_like(v)
        elif k.endswith("bias"):
            fresh[k] = torch.zeros_like(v)
        else:
            fresh[k] = torch.randn(v.shape, generator=g) * 0.02
    changed = 0
    for k in list(w):
        for op, sub, f in ops:
            if sub in k:
                w[k] = w[k] * f if op == "scale" else fresh[k]
                changed += 1
    if changed == 0:
        sys.exit("ckpt-redraw: no tensor of %s matched %s" % (src, [o[1] for o in ops]))
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(src, "config.json"), out)
    save(w, os.path.join(out, "model.safetensors"))
    print("ckpt-redraw: wrote %s (%d tensors changed)" % (out, changed))


if __name__ == "__main__":
    main()

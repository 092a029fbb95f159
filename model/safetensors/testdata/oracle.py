"""Independent safetensors oracle for the Go tests, built only on the format
spec with json, struct, numpy and torch (no safetensors library).

  oracle.py write DIR         write safetensors files from torch tensors, plus
                              DIR/expected.json describing their values
  oracle.py check PATH EXP    read a Go-written file or directory and compare
                              it with the values described in EXP
  oracle.py torchsave DIR     write .bin checkpoints with torch.save (good and
                              unsupported ones) plus DIR/expected.json
                              ({"order": [names], "tensors": {as above}})

expected.json maps tensor name -> {"dtype", "shape", "f32": [uint32 bit
patterns of the values widened to float32 by torch]} for floating dtypes, or
"ints" for integer and bool dtypes. Exit status 1 with a message on mismatch.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

NP = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<i2", "I64": "<i8",
      "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1"}
TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
         "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
         "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
FLOATS = {"F64", "F32", "F16", "BF16"}


def fail(msg):
    print("oracle: " + msg, file=sys.stderr)
    sys.exit(1)


def to_bytes(t, dtype):
    t = t.contiguous()
    if dtype == "BF16":
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if dtype == "BOOL":
        return t.numpy().astype(np.uint8).tobytes()
    return t.numpy().astype(NP[dtype]).tobytes()


def from_bytes(b, dtype, shape):
    a = np.frombuffer(b, dtype=NP[dtype]).copy()
    t = torch.from_numpy(a)
    if dtype == "BF16":
        t = t.view(torch.bfloat16)
    elif dtype == "BOOL":
        t = t.to(torch.bool)
    return t.reshape(shape)


def describe(t, dtype):
    d = {"dtype": dtype, "shape": list(t.shape)}
    if dtype in FLOATS:
        bits = t.to(torch.float32).reshape(-1).view(torch.int32).tolist()
        d["f32"] = [b & 0xFFFFFFFF for b in bits]
    else:
        d["ints"] = t.to(torch.int64).reshape(-1).tolist()
    return d


def sample():
    g = torch.Generator().manual_seed(1234)
    special = [0.0, -0.0, 1.0, -2.5, math.inf, -math.inf, math.nan]
    out = {}
    for dtype, extra in (("F32", [1e-40, 3.4028235e38, 1.17549435e-38]),
                         ("F16", [6e-8, 1e-5, 65504.0, 0.1]),
                         ("BF16", [1e-40, 3.0e38, 0.1]),
                         ("F64", [1e-300, 0.1, 1e300])):
        vals = torch.tensor(special + extra, dtype=torch.float64).to(TORCH[dtype])
        out["special." + dtype.lower()] = (vals, dtype)
        out["randn." + dtype.lower()] = (torch.randn(3, 5, generator=g, dtype=torch.float64).to(TORCH[dtype]), dtype)
    out["ids.i64"] = (torch.tensor([[0, -1, 2**62], [-(2**63), 7, 2**31]], dtype=torch.int64), "I64")
    out["ids.i32"] = (torch.tensor([0, -1, 2**31 - 1, -(2**31)], dtype=torch.int32), "I32")
    out["ids.i16"] = (torch.tensor([0, -1, 32767, -32768], dtype=torch.int16), "I16")
    out["ids.i8"] = (torch.tensor([0, -1, 127, -128], dtype=torch.int8), "I8")
    out["bytes.u8"] = (torch.tensor([0, 1, 255], dtype=torch.uint8), "U8")
    out["mask"] = (torch.tensor([[True, False], [False, True]]), "BOOL")
    out["scalar"] = (torch.tensor(3.5, dtype=torch.float32), "F32")
    out["empty"] = (torch.zeros(0, 3, dtype=torch.float16), "F16")
    return out


def write_file(path, items, pad, metadata=None):
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (t, dtype) in items:
        b = to_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hb = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def cmd_write(d):
    tensors = sample()
    items = list(tensors.items())
    # Two valid layouts: padded in insertion order like the reference writer,
    # and unpadded with the data in reverse order.
    write_file(os.path.join(d, "padded.safetensors"), items, True, {"format": "pt", "src": "oracle"})
    write_file(os.path.join(d, "reversed.safetensors"), items[::-1], False)
    sh = os.path.join(d, "sharded")
    os.mkdir(sh)
    half = len(items) // 2
    weight_map = {}
    for i, part in enumerate((items[:half], items[half:])):
        fn = "model-%05d-of-00002.safetensors" % (i + 1)
        write_file(os.path.join(sh, fn), part, True, {"format": "pt"})
        weight_map.update({n: fn for n, _ in part})
    with open(os.path.join(sh, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({n: describe(t, dt) for n, (t, dt) in tensors.items()}, f)


def read_file(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    raw = buf[8:8 + n]
    if n % 8 != 0:
        fail("%s: header length %d is not a multiple of 8" % (path, n))
    text = raw.decode("utf-8")
    stripped = text.rstrip(" ")
    header = json.loads(stripped)
    if json.dumps(header, separators=(",", ":"), ensure_ascii=False) != stripped:
        fail("%s: header is not compact JSON: %r" % (path, stripped[:200]))
    data = buf[8 + n:]
    meta = header.pop("__metadata__", None)
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    pos = 0
    for b, e, k in spans:
        if b != pos:
            fail("%s: tensor %s starts at %d, expected %d (not contiguous)" % (path, k, b, pos))
        size = np.dtype(NP[header[k]["dtype"]]).itemsize
        if b % size != 0:
            fail("%s: tensor %s at offset %d is not aligned to %d" % (path, k, b, size))
        pos = e
    if pos != len(data):
        fail("%s: data section is %d bytes, tensors cover %d" % (path, len(data), pos))
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        out[k] = (from_bytes(data[b:e], v["dtype"], v["shape"]), v["dtype"])
    return out, meta


def cmd_check(path, exp_path):
    with open(exp_path) as f:
        exp = json.load(f)
    want_meta = exp.pop("__metadata__", None)
    files = [path]
    if os.path.isdir(path):
        idx = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(idx):
            with open(idx) as f:
                index = json.load(f)
            files = [os.path.join(path, s) for s in sorted(set(index["weight_map"].values()))]
        else:
            files = [os.path.join(path, "model.safetensors")]
    got = {}
    for p in files:
        ts, meta = read_file(p)
        if want_meta is not None and meta != want_meta:
            fail("%s: metadata %r, want %r" % (p, meta, want_meta))
        for k in ts:
            if k in got:
                fail("%s: tensor %s appears in two files" % (p, k))
        got.update(ts)
        if os.path.isdir(path) and len(files) > 1:
            for k in ts:
                if index["weight_map"].get(k) != os.path.basename(p):
                    fail("%s: tensor %s not mapped to this shard by the index" % (p, k))
    if sorted(got) != sorted(exp):
        fail("tensors %s, want %s" % (sorted(got), sorted(exp)))
    for name, want in exp.items():
        t, dtype = got[name]
        if dtype != want["dtype"] or list(t.shape) != want["shape"]:
            fail("%s: %s%s, want %s%s" % (name, dtype, list(t.shape), want["dtype"], want["shape"]))
        have = describe(t, dtype)
        key = "f32" if dtype in FLOATS else "ints"
        want_vals = want.get(key) or []
        if len(have[key]) != len(want_vals):
            fail("%s: %d values, want %d" % (name, len(have[key]), len(want_vals)))
        for i, (a, b) in enumerate(zip(have[key], want_vals)):
            if a != b and not (key == "f32" and is_nan(a) and is_nan(b)):
                fail("%s[%d]: torch reads %#x, want %#x" % (name, i, a, b))
    print("oracle: %d tensors match" % len(exp))


def is_nan(bits):
    return (bits & 0x7F800000) == 0x7F800000 and (bits & 0x7FFFFF) != 0


def cmd_torchsave(d):
    """Write .bin checkpoints with torch.save itself, plus expected.json."""
    import collections
    sd = collections.OrderedDict()
    for name, (t, dtype) in sample().items():
        sd[name] = t
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sd["shared.base"] = base
    sd["shared.row"] = base[1]  # a view at a storage offset
    sd["shared.tied"] = base  # tied weights: same storage twice
    lin = torch.nn.Linear(3, 2)
    for k, v in lin.state_dict().items():
        sd["lin." + k] = v
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    torch.save(lin, os.path.join(d, "module.bin"))
    torch.save({"model": lin.state_dict(), "step": 3}, os.path.join(d, "nested.bin"))
    torch.save({"w": base.t()}, os.path.join(d, "strided.bin"))
    torch.save(sd, os.path.join(d, "legacy.bin"), _use_new_zipfile_serialization=False)
    dt = {v: k for k, v in TORCH.items()}
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"order": list(sd), "tensors": {n: describe(t, dt[t.dtype]) for n, t in sd.items()}}, f)


if __name__ == "__main__":
    if sys.argv[1] == "torchsave":
        cmd_torchsave(sys.argv[2])
        sys.exit(0)
    if sys.argv[1] == "write":
        cmd_write(sys.argv[2])
    elif sys.argv[1] == "check":
        cmd_check(sys.argv[2], sys.argv[3])
    else:
        fail("unknown command " + sys.argv[1])

#!/usr/bin/env bash
# A checkpoint of GPT-2 124M's training state, ringtune against torch.save,
# in the same run (scripts/bench.sh ckpt [--chunk BYTES]).
#
# ringtune: the coordinator's checkpoint path (coordinator/ckptpull.go's
# pullCheckpoint, as the driver runs it) pulls a state of 124,439,808
# parameters and AdamW's two moments (1.49 GB, control.EncodeState's
# layout) from a real bulk server on loopback that serves it from memory,
# as a node's WriteState does, and writes, verifies and fsyncs the
# checkpoint file (coordinator/ckpt_bench_test.go, BenchmarkCheckpointPull).
# The peer: /usr/bin/python3 torch.save of a GPT-2-small-shaped model's
# state_dict and its AdamW state_dict (scripts/bench/ckpt_torch.py), straight
# to a path as DDP does (page cache only) and flushed + os.fsync'd (durable,
# like ringtune's). Medians of 3 runs each; both write into the same
# temporary directory on the same disk. Needs ~5 GB of memory.
#   bench: ckpt params=… bytes=… torch_bytes=… chunk=… ringtune_s=… torch_save_s=… torch_save_fsync_s=… ratio=… ratio_fsync=… ringtune_cpu_s=… transfer_s=… transfer_cpu_s=…
# ratio = ringtune_s / torch_save_s, ratio_fsync = ringtune_s /
# torch_save_fsync_s (below 1: ringtune is faster). ringtune_cpu_s is the
# CPU both ends of the pull used (the box's other work not included);
# transfer_s and transfer_cpu_s are the same transfer received, verified
# and dropped (no file): the floor the file's write hides behind.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
chunk=1048576
while [ $# -gt 0 ]; do
  case "$1" in
    --chunk) chunk=$2; shift 2 ;;
    *) echo "ckpt.sh: unknown argument $1 (usage: scripts/bench.sh ckpt [--chunk BYTES])" >&2; exit 2 ;;
  esac
done
cd "$root"
work=$(mktemp -d "${TMPDIR:-/tmp}/ringtune-bench-ckpt.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=$(RINGTUNE_CKPT_DIR="$work" RINGTUNE_CKPT_CHUNK="$chunk" go test -count=1 -run '^$' -bench 'BenchmarkCheckpointPull$' -benchtime 1x -timeout 10m ./coordinator)
echo "$out" | grep -E '^Benchmark|run [0-9]' >&2
one() { awk -v u="$1" '/^BenchmarkCheckpointPull/ { for (i = 2; i < NF; i++) if ($(i+1) == u) print $i }' <<<"$out"; }
rt_s=$(one s); rt_bytes=$(one bytes); rt_cpu=$(one cpu-s); fe_s=$(one fetch-s); fe_cpu=$(one fetch-cpu-s)
py=$(/usr/bin/python3 scripts/bench/ckpt_torch.py "$work")
echo "$py" >&2
/usr/bin/python3 - "$rt_s" "$rt_bytes" "$chunk" "$py" "$rt_cpu" "$fe_s" "$fe_cpu" <<'PY'
import json, sys
rt_s, rt_bytes, chunk, py = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
rt_cpu, fe_s, fe_cpu = (float(x) for x in sys.argv[5:8])
print("bench: ckpt params=%d bytes=%.0f torch_bytes=%d chunk=%d ringtune_s=%.3f torch_save_s=%.3f torch_save_fsync_s=%.3f ratio=%.3f ratio_fsync=%.3f ringtune_cpu_s=%.3f transfer_s=%.3f transfer_cpu_s=%.3f" % (
    py["params"], rt_bytes, py["bytes"], chunk, rt_s, py["save_s"], py["save_fsync_s"], rt_s / py["save_s"], rt_s / py["save_fsync_s"], rt_cpu, fe_s, fe_cpu))
PY

#!/usr/bin/env bash
# check.sh: the whole GPU check, in one command, on a GPU host with no Go and
# no network (made for a 16-core H200 host with pip torch 2.x + CUDA and
# transformers; about 8 minutes). It runs from an unpacked
# scripts/gpu/bundle.sh bundle (ringtune/ with vendor/ and .data/, and a
# trimmed Go toolchain in go/ beside it), or from a checkout with Go.
#
#   scripts/gpu/check.sh RESULTS_DIR        (or RINGTUNE_GPU_RESULTS=DIR)
#
# Environment:
#   LIBTORCH     libtorch directory (default: the host's pip torch,
#                python3 -c 'import torch; print(torch.__path__[0])')
#   PYTHON       python with torch (and transformers) (default python3)
#   DEVICE       the CUDA device to check (default cuda:0)
#   GPU_STEPS    bench steps (default 20)
#
# Everything goes to RESULTS_DIR: summary.txt (one line per step: ok, FAIL
# or skipped, with seconds), a log per step, facts.txt, and bench.txt with
# the `bench: gpu ...` lines. Steps that need a CUDA device print "skipped:
# no CUDA device" on a host without one; that is how CI rehearses this script
# (scripts/gpu/rehearse.sh). Exit status: 0 when no step failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
results=${1:-${RINGTUNE_GPU_RESULTS:-}}
[ -n "$results" ] || { echo "check: usage: scripts/gpu/check.sh RESULTS_DIR (or RINGTUNE_GPU_RESULTS)" >&2; exit 2; }
mkdir -p "$results" && results=$(cd "$results" && pwd)
python=${PYTHON:-python3}
device=${DEVICE:-cuda:0}
t_start=$(date +%s)
: >"$results/summary.txt"
failed=0

say() { echo "check: $*" | tee -a "$results/summary.txt" >&2; }

# step NAME CMD...: runs CMD with its output in NAME.log and records the
# outcome. A command that prints "skipped:" and exits 0 is recorded as
# skipped.
step() {
  local name=$1 t rc
  shift
  t=$(date +%s)
  echo "check: -- $name" >&2
  "$@" >"$results/$name.log" 2>&1
  rc=$?
  if [ $rc != 0 ]; then
    failed=1
    say "$name FAIL (exit $rc, $(($(date +%s) - t))s); last lines of $name.log:"
    tail -15 "$results/$name.log" | sed 's/^/    /' | tee -a "$results/summary.txt" >&2
  elif grep -q '^skipped:' "$results/$name.log"; then
    say "$name $(grep -m1 '^skipped:' "$results/$name.log") ($(($(date +%s) - t))s)"
  else
    say "$name ok ($(($(date +%s) - t))s)"
  fi
  return $rc
}

# --- Go: the bundle's toolchain, offline --------------------------------------
if ! command -v go >/dev/null 2>&1 && [ -x "$root/../go/bin/go" ]; then
  export GOROOT=$root/../go
  export PATH=$GOROOT/bin:$PATH
fi
if [ -d "$root/vendor" ]; then
  # Nothing is downloaded: the modules are vendored, the toolchain is the
  # one at hand. The build cache lives in the tree, so that a rerun on the
  # same machine is warm.
  export GOFLAGS="-mod=vendor" GOPROXY=off GOTOOLCHAIN=local GOSUMDB=off
  export GOCACHE=${GOCACHE_DIR:-$root/.build/gocache} GOMODCACHE=$root/.build/gomodcache
fi

# --- host facts ---------------------------------------------------------------
facts() {
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) memory"
  echo "glibc: $(ldd --version 2>/dev/null | head -1)"
  echo "g++: $(g++ --version 2>/dev/null | head -1)"
  echo "go: $(go version 2>/dev/null || echo none)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4 | tr '\n' ';')"
  else
    echo "gpu: no nvidia-smi"
  fi
  "$python" - <<'PY' 2>&1
import torch
print("torch: %s at %s, cuda %s, %d device(s)" % (torch.__version__, torch.__path__[0], torch.version.cuda, torch.cuda.device_count()))
try:
    import transformers
    print("transformers: %s" % transformers.__version__)
except ImportError:
    print("transformers: not installed")
PY
}
step facts facts
cp "$results/facts.log" "$results/facts.txt"

if [ -z "${LIBTORCH:-}" ]; then
  LIBTORCH=$("$python" -c 'import torch; print(torch.__path__[0])' 2>/dev/null) ||
    { say "no LIBTORCH and $python cannot import torch: set LIBTORCH to a libtorch directory"; exit 1; }
fi
export LIBTORCH
cuda_devices=$("$python" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
gpu=0
[ "$cuda_devices" -gt 0 ] 2>/dev/null && gpu=1

# --- build --------------------------------------------------------------------
build() {
  # shellcheck source=scripts/env.sh
  . scripts/env.sh || return 1
  echo "LIBTORCH=$LIBTORCH"
  echo "CGO_CXXFLAGS=$CGO_CXXFLAGS"
  echo "CGO_LDFLAGS=$CGO_LDFLAGS"
  echo "GOFLAGS=${GOFLAGS:-}"
  mkdir -p .build
  go build -o .build/node ./cmd/node &&
    go build -o .build/coordinator ./cmd/coordinator &&
    go build -o .build/torchinfo ./internal/torchinfo &&
    go build -o .build/gpucheck ./internal/gpucheck || return 1
  readelf -d .build/node | grep NEEDED
}
if ! step build build; then
  say "build failed: nothing else can run"
  exit 1
fi
# shellcheck source=scripts/env.sh
. scripts/env.sh

# --- torchinfo ----------------------------------------------------------------
torchinfo() {
  if [ $gpu = 1 ]; then
    .build/torchinfo -want-cuda
  else
    .build/torchinfo && echo "skipped: no CUDA device (torchinfo ran on the CPU)"
  fi
}
step torchinfo torchinfo

# --- numerics: model/hf against the host's PyTorch on the same device ---------
numerics() {
  local arch=$1 task=$2 prec=$3 dev=$device dir=$results/models/$1 out
  if [ $gpu = 0 ]; then
    # model/hf computes bf16 on CUDA only.
    if [ "$prec" = bf16 ]; then
      echo "skipped: no CUDA device"
      return 0
    fi
    # The same comparison on the CPU rehearses the pipeline.
    dev=cpu
  fi
  [ -f "$dir/batch.json" ] || "$python" model/hf/testdata/hf_ref.py make "$arch" "$task" "$dir" || return 1
  out=$results/gpucheck/$arch-$prec
  .build/gpucheck -dir "$dir" -task "$task" -device "$dev" -precision "$prec" -out "$out" -export "$out/export" || return 1
  "$python" scripts/gpu/compare.py "$dir" "$out" --task "$task" --device "$dev" --precision "$prec" --export "$out/export" || return 1
  [ $gpu = 1 ] || echo "skipped: no CUDA device (compared on the CPU instead)"
}
for arch in bert gpt2 llama; do
  task=causal_lm
  [ $arch = bert ] && task=classification
  for prec in fp32 bf16; do
    step "numerics-$arch-$prec" numerics $arch $task $prec
  done
done
grep -h '^numerics:' "$results"/numerics-*.log >"$results/numerics.txt" 2>/dev/null

# --- a 2-node local cluster sharing the GPU -----------------------------------
cluster() {
  if [ $gpu = 0 ]; then
    echo "skipped: no CUDA device"
    return 0
  fi
  timeout 300 scripts/local-cluster.sh 2 --no-setup --device "$device" || return 1
  cp -r runs/local "$results/cluster"
}
step cluster cluster

# --- bench: ringtune against PyTorch eager on the same GPU ---------------------
bench() {
  if [ $gpu = 0 ]; then
    echo "skipped: no CUDA device"
    return 0
  fi
  scripts/gpu/bench.sh "$device" "${GPU_STEPS:-20}"
}
step bench bench
grep -h '^bench: ' "$results/bench.log" >"$results/bench.txt" 2>/dev/null

say "total $(($(date +%s) - t_start))s; $([ $failed = 0 ] && echo 'no step failed' || echo 'SOME STEPS FAILED')"
exit $failed

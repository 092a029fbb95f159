#!/usr/bin/env bash
# rehearse.sh: runs the GPU host's command here, on the CPU, the way it will
# run there: from a fresh scripts/gpu/bundle.sh bundle, with no network
# (unshare -n), no Go on PATH but the bundle's, against a pip-style libtorch
# directory (lib/ + include/) made from Debian's libtorch 1.13. Every step
# that needs no GPU runs; the GPU steps must say "skipped: no CUDA device".
# CI runs it (.ci/run). Exit status 0 when the rehearsal went as expected.
#
# The layout and the unpacked bundle live at fixed paths under the ringtune
# cache, and so does the rehearsal's Go build cache, so that a rerun on the
# same machine does not rebuild gotch (a cold build takes minutes).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi
say() { echo "rehearse: $*" >&2; }
die() { echo "rehearse: error: $*" >&2; exit 1; }
cache="${RINGTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringtune}/gpu-rehearsal"
t0=$(date +%s)

# A pip-style libtorch directory made of Debian's 1.13 (CPU).
sys=/usr/lib/x86_64-linux-gnu
[ -f "$sys/libtorch_cpu.so" ] || die "Debian's libtorch is not installed ($sys/libtorch_cpu.so): run scripts/setup.sh"
layout=$cache/torch
rm -rf "$layout"
mkdir -p "$layout/lib" "$layout/include"
for l in "$sys"/libtorch*.so* "$sys"/libc10*.so* "$sys"/libshm.so*; do
  ln -s "$l" "$layout/lib/"
done
for d in ATen c10 caffe2 torch; do
  ln -s "/usr/include/$d" "$layout/include/$d"
done

# The bundle, unpacked where the GPU host would.
scripts/gpu/bundle.sh "$cache/gpu-bundle.tar"
rm -rf "$cache/bundle"
mkdir -p "$cache/bundle"
(cd "$cache/bundle" && tar xf ../gpu-bundle.tar && tar xJf go.tar.xz && tar xJf ringtune.tar.xz)

results=${1:-$cache/results}
rm -rf "$results"
mkdir -p "$results"
# No network, and no Go but the bundle's: what the GPU host has.
run=(env -i HOME="$HOME" PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
  LIBTORCH="$layout" PYTHON=/usr/bin/python3 GOCACHE_DIR="$cache/gocache"
  bash "$cache/bundle/ringtune/scripts/gpu/check.sh" "$results")
set +e
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  unshare -n bash -c 'ip link set lo up 2>/dev/null; exec "$@"' _ "${run[@]}"
else
  say "cannot unshare the network here (not root?): running with the network"
  "${run[@]}"
fi
rc=$?
set -e
cat "$results/summary.txt" >&2
[ $rc = 0 ] || die "check.sh failed (exit $rc); results in $results"
# What a host without a GPU must show.
for s in build facts; do
  grep -q "^check: $s ok" "$results/summary.txt" || die "step $s did not pass"
done
for s in torchinfo numerics-bert-fp32 numerics-gpt2-bf16 numerics-llama-fp32 cluster bench; do
  grep -q "^check: $s skipped: no CUDA device" "$results/summary.txt" ||
    die "step $s should say 'skipped: no CUDA device'"
done
grep -q 'check=gradients .* ok' "$results/numerics.txt" || die "no gradient comparison in $results/numerics.txt"
say "ok in $(($(date +%s) - t0))s (results in $results)"

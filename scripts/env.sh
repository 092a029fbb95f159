# shellcheck shell=bash
# Sourced by the Makefile and scripts: the cgo flags that build gotch v0.9.1
# against the libtorch chosen by scripts/setup.sh, without editing gotch.
#
#   LIBTORCH unset or "system": Debian's libtorch-dev (1.13, CPU). Our
#     compatibility header is force-included (-include) and its hash goes into
#     a -D flag, because Go's build cache does not see headers pulled in that
#     way; empty stub libraries stand in for the CUDA libraries that gotch's
#     cgo LDFLAGS name, and -Wl,--as-needed keeps them out of the binary.
#   LIBTORCH=DIR: an official libtorch 2.1 build unpacked at DIR (CUDA or
#     CPU). The header is then a no-op. UNTESTED here: no such build or GPU is
#     reachable from our CI; see README "GPU hosts".
# Go's build cache and ours live under $HOME; a bare environment (a CI
# runner, cron) may lack it.
if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi
_rt_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_rt_src="$_rt_root/scripts/gotch/torch_compat.h"
_rt_hash=$(sha256sum "$_rt_src" | cut -c1-16)
# The header and the stubs live at a path that depends only on the header's
# content, not on where this checkout is: cgo flags are part of Go's cache
# keys, so every checkout and CI clone on a machine shares one build of
# gotch (a cold build takes minutes).
_rt_cache="${RINGTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringtune}"
_rt_hdr="$_rt_cache/torch_compat-$_rt_hash.h"
_rt_stub="$_rt_cache/cudastub"
if [ ! -f "$_rt_hdr" ]; then
  mkdir -p "$_rt_cache" && cp "$_rt_src" "$_rt_hdr.tmp$$" && mv "$_rt_hdr.tmp$$" "$_rt_hdr"
fi
if [ ! -f "$_rt_stub/libtorch_cuda.so" ]; then
  # Empty shared libraries named like the CUDA libraries in gotch's
  # #cgo LDFLAGS; --as-needed drops them from the binary.
  mkdir -p "$_rt_stub"
  for _rt_l in cuda cudart cublas cudnn caffe2_nvrtc nvrtc-builtins nvrtc nvToolsExt c10_cuda torch_cuda; do
    [ -f "$_rt_stub/lib$_rt_l.so" ] || cc -shared -o "$_rt_stub/lib$_rt_l.so" -x c /dev/null
  done
fi
if [ -z "${LIBTORCH:-}" ] && [ -f "$_rt_root/.build/libtorch-path" ]; then
  LIBTORCH=$(cat "$_rt_root/.build/libtorch-path")
fi
unset _rt_root
if [ -z "${LIBTORCH:-}" ] || [ "$LIBTORCH" = system ]; then
  export CGO_CXXFLAGS="-I/usr/include/torch/csrc/api/include -include $_rt_hdr -DRINGTUNE_TORCH_COMPAT=$_rt_hash -Wno-deprecated-declarations"
  export CGO_LDFLAGS="-L$_rt_stub -Wl,--as-needed"
else
  export CGO_CXXFLAGS="-I$LIBTORCH/include -I$LIBTORCH/include/torch/csrc/api/include -include $_rt_hdr -DRINGTUNE_TORCH_COMPAT=$_rt_hash"
  export CGO_LDFLAGS="-L$LIBTORCH/lib -Wl,-rpath,$LIBTORCH/lib -L$_rt_stub -Wl,--as-needed"
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export CGO_ENABLED=1
# One BLAS thread per process unless the user says otherwise: ringtune sets
# libtorch's intra-op threads itself, and oversubscription slows every rank.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
unset _rt_src _rt_hdr _rt_hash _rt_cache _rt_stub _rt_l

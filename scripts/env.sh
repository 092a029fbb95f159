# shellcheck shell=bash
# Sourced by the Makefile and scripts: the cgo flags that build gotch v0.9.1
# against the libtorch chosen by scripts/setup.sh, without editing gotch.
#
#   LIBTORCH unset or "system": Debian's libtorch-dev (1.13, CPU). Our
#     compatibility header is force-included (-include) and its hash goes into
#     a -D flag, because Go's build cache does not see headers pulled in that
#     way; empty stub libraries stand in for the CUDA libraries that gotch's
#     cgo LDFLAGS name, and -Wl,--as-needed keeps them out of the binary.
#   LIBTORCH=DIR: a libtorch 2.x at DIR (CUDA or CPU): an official libtorch
#     zip, or a pip torch package directory (torch/lib + torch/include).
#     scripts/setup.sh --libtorch records DIR in .build/libtorch-path. Here:
#     * torch_compat_2x.h, force-included too, adapts gotch to 2.6+ (checked in CI
#       against Debian's 2.6 and 2.14 headers by scripts/check-headers.sh);
#     * the C++ ABI is read from libc10.so (pip wheels before 2.7 and the
#       "pre-cxx11" zips use the old one);
#     * headers that demand C++20 (2.13+) get it through GOFLAGS (a copy of
#       gotch named by -modfile, and -overlay for our torch.go), because
#       gotch's own -std=c++17 comes after CGO_CXXFLAGS;
#     * when DIR has libtorch_cuda.so, the CUDA libraries are linked with
#       --no-as-needed: gotch's C++ calls nothing that only they define, so
#       --as-needed (ours and Ubuntu gcc's default) would drop them and the
#       binary would see no GPU.
#     No GPU has run this yet; see README "GPU hosts".
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
# The 2.x branch (torch_compat_2x.h) goes only into LIBTORCH=DIR builds, the
# same way: the 1.13 build's flags do not change with it.
_rt_src2="$_rt_root/scripts/gotch/torch_compat_2x.h"
_rt_hash2=$(sha256sum "$_rt_src2" | cut -c1-16)
_rt_hdr2="$_rt_cache/torch_compat_2x-$_rt_hash2.h"
if [ ! -f "$_rt_hdr2" ]; then
  mkdir -p "$_rt_cache" && cp "$_rt_src2" "$_rt_hdr2.tmp$$" && mv "$_rt_hdr2.tmp$$" "$_rt_hdr2"
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
if [ -z "${LIBTORCH:-}" ] || [ "$LIBTORCH" = system ]; then
  export CGO_CXXFLAGS="-I/usr/include/torch/csrc/api/include -include $_rt_hdr -DRINGTUNE_TORCH_COMPAT=$_rt_hash -Wno-deprecated-declarations"
  export CGO_LDFLAGS="-L$_rt_stub -Wl,--as-needed"
else
  # shellcheck source=scripts/libtorch.sh
  . "$_rt_root/scripts/libtorch.sh"
  rt_libtorch_flags "$LIBTORCH" "-include $_rt_hdr -include $_rt_hdr2 -DRINGTUNE_TORCH_COMPAT=$_rt_hash-$_rt_hash2" "$_rt_stub" "$_rt_root/.build/cxx20" || return 1
  export CGO_CXXFLAGS="$RT_CXXFLAGS"
  export CGO_LDFLAGS="$RT_LDFLAGS"
  # Sourcing twice must not stack the flags.
  GOFLAGS=$(printf '%s' "${GOFLAGS:-}" | sed 's/ *-overlay=[^ ]*//g; s/ *-modfile=[^ ]*//g; s/^ *//')
  GOFLAGS="${GOFLAGS:+$GOFLAGS }$RT_GOFLAGS"
  export GOFLAGS
  export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  unset RT_CXXFLAGS RT_LDFLAGS RT_GOFLAGS
fi
unset _rt_root
export CGO_ENABLED=1
# One BLAS thread per process unless the user says otherwise: ringtune sets
# libtorch's intra-op threads itself, and oversubscription slows every rank.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
unset _rt_src _rt_hdr _rt_hash _rt_src2 _rt_hdr2 _rt_hash2 _rt_cache _rt_stub _rt_l

# shellcheck shell=bash
# Sourced by scripts/env.sh (and scripts/setup.sh, scripts/gpu/check.sh): what
# building against a libtorch 2.x directory takes. Kept apart from env.sh so
# that the rules can be tested on their own (internal/setupcheck).
#
# A libtorch directory is either an official libtorch zip (libtorch/lib,
# libtorch/include) or a pip torch package (python3 -c 'import torch;
# print(torch.__path__[0])': the same lib/ and include/ inside).

# rt_libtorch_check DIR: fails with a message saying what is wrong with DIR.
rt_libtorch_check() {
  local d=$1
  if [ ! -f "$d/lib/libtorch_cpu.so" ]; then
    echo "no libtorch at '$d' (expected $d/lib/libtorch_cpu.so): give the directory of an official libtorch zip, or a pip torch's package directory (python3 -c 'import torch; print(torch.__path__[0])')" >&2
    return 1
  fi
  if [ ! -f "$d/include/torch/csrc/api/include/torch/torch.h" ]; then
    echo "'$d' has no C++ headers (include/torch/csrc/api/include/torch/torch.h): use a 'shared-with-deps' libtorch zip or a pip torch wheel, which ship them" >&2
    return 1
  fi
}

# rt_libtorch_version DIR: prints MAJOR.MINOR.PATCH from the headers.
rt_libtorch_version() {
  local d=$1 f maj min pat
  for f in "$d/include/torch/headeronly/version.h" "$d/include/torch/csrc/api/include/torch/version.h"; do
    [ -f "$f" ] || continue
    maj=$(sed -n 's/^#define TORCH_VERSION_MAJOR \([0-9]*\).*/\1/p' "$f")
    min=$(sed -n 's/^#define TORCH_VERSION_MINOR \([0-9]*\).*/\1/p' "$f")
    pat=$(sed -n 's/^#define TORCH_VERSION_PATCH \([0-9]*\).*/\1/p' "$f")
    if [ -n "$maj" ]; then
      echo "$maj.$min.$pat"
      return 0
    fi
  done
  echo unknown
}

# rt_libtorch_abi DIR: prints the _GLIBCXX_USE_CXX11_ABI value libtorch was
# built with (0 or 1). libc10.so exports std::string-taking functions, whose
# mangled names contain __cxx11 only under the new ABI. RINGTUNE_CXX11_ABI
# overrides.
rt_libtorch_abi() {
  local d=$1
  if [ -n "${RINGTUNE_CXX11_ABI:-}" ]; then
    echo "$RINGTUNE_CXX11_ABI"
    return 0
  fi
  if ! command -v nm >/dev/null 2>&1; then
    echo "nm (binutils) is needed to read the C++ ABI of $d/lib/libc10.so; or set RINGTUNE_CXX11_ABI=0|1" >&2
    return 1
  fi
  # grep -c reads all of nm's output: with grep -q, nm could die of SIGPIPE
  # and, under the callers' pipefail, turn the answer into 0.
  if [ "$(nm -D --defined-only "$d/lib/libc10.so" 2>/dev/null | grep -c '__cxx11')" -gt 0 ]; then
    echo 1
  else
    echo 0
  fi
}

# rt_libtorch_std DIR: prints the C++ standard the headers demand: c++20 from
# libtorch 2.13 on (torch/all.h refuses anything older), else c++17.
rt_libtorch_std() {
  if grep -qs 'C++20 or later compatible compiler is required' "$1/include/torch/csrc/api/include/torch/all.h"; then
    echo c++20
  else
    echo c++17
  fi
}

# rt_libtorch_cuda DIR: succeeds when DIR is a CUDA build of libtorch.
rt_libtorch_cuda() {
  [ -f "$1/lib/libtorch_cuda.so" ]
}

# rt_libtorch_cxx20 STD DIR: for c++20, prints the GOFLAGS that build gotch
# and model/torch with -std=c++20 instead of their -std=c++17; prints nothing
# for c++17. cgo puts #cgo CXXFLAGS after CGO_CXXFLAGS, so the environment
# cannot override them. Go refuses -overlay for files in the module cache,
# so gotch comes from a copy under DIR (its packages only; lib.go edited)
# named by a replace directive in a copy of go.mod (-modfile): the module
# cache and go.mod stay untouched. Our own torch.go gets an -overlay.
rt_libtorch_cxx20() {
  local std=$1 dir=$2 root gotch src dst
  [ "$std" = c++20 ] || return 0
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  mkdir -p "$dir" || return 1
  if [ -f "$root/vendor/modules.txt" ]; then
    # A vendored tree (the GPU bundle): vendor/ is part of the main module,
    # so both files can simply be overlaid.
    local json='{"Replace":{' sep=''
    for src in "$root/vendor/github.com/sugarme/gotch/libtch/lib.go" "$root/model/torch/torch.go"; do
      dst="$dir/$(basename "$(dirname "$src")")-$(basename "$src")"
      sed 's/-std=c++17/-std=c++20/' "$src" >"$dst" || return 1
      grep -q -- '-std=c++20' "$dst" || {
        echo "$src names no -std=c++17 to replace: update rt_libtorch_cxx20 in scripts/libtorch.sh" >&2
        return 1
      }
      json="$json$sep\"$src\":\"$dst\""
      sep=,
    done
    echo "$json}}" >"$dir/overlay.json"
    echo "-overlay=$dir/overlay.json"
    return 0
  fi
  gotch=$(cd "$root" && GOFLAGS= go list -m -f '{{.Dir}}' github.com/sugarme/gotch) || {
    echo "cannot find gotch in the Go module cache: run 'go mod download'" >&2
    return 1
  }
  mkdir -p "$dir" || return 1
  if [ ! -f "$dir/gotch/.complete" ] || [ "$(cat "$dir/gotch/.complete")" != "$gotch" ]; then
    rm -rf "$dir/gotch"
    mkdir -p "$dir/gotch"
    # Only what ringtune builds: the module's root package, libtch and ts.
    (cd "$gotch" && cp -r --no-preserve=mode ./*.go go.mod libtch ts "$dir/gotch/") || return 1
    sed -i 's/-std=c++17/-std=c++20/' "$dir/gotch/libtch/lib.go"
    grep -q -- '-std=c++20' "$dir/gotch/libtch/lib.go" || {
      echo "$gotch/libtch/lib.go names no -std=c++17 to replace: update rt_libtorch_cxx20 in scripts/libtorch.sh" >&2
      return 1
    }
    echo "$gotch" >"$dir/gotch/.complete"
  fi
  { cat "$root/go.mod"; echo; echo "replace github.com/sugarme/gotch => $dir/gotch"; } >"$dir/go.mod"
  cp "$root/go.sum" "$dir/go.sum"
  src=$root/model/torch/torch.go
  sed 's/-std=c++17/-std=c++20/' "$src" >"$dir/torch.go.tmp" || return 1
  grep -q -- '-std=c++20' "$dir/torch.go.tmp" || {
    echo "$src names no -std=c++17 to replace: update rt_libtorch_cxx20 in scripts/libtorch.sh" >&2
    return 1
  }
  cmp -s "$dir/torch.go.tmp" "$dir/torch.go" && rm -f "$dir/torch.go.tmp" || mv "$dir/torch.go.tmp" "$dir/torch.go"
  echo "{\"Replace\":{\"$src\":\"$dir/torch.go\"}}" >"$dir/overlay.json"
  echo "-modfile=$dir/go.mod -overlay=$dir/overlay.json"
}

# rt_libtorch_flags DIR COMPAT_FLAGS STUBDIR CXX20_DIR: sets RT_CXXFLAGS,
# RT_LDFLAGS and RT_GOFLAGS (empty when none are needed) for DIR.
# COMPAT_FLAGS force-include the compat headers (scripts/env.sh).
rt_libtorch_flags() {
  local d=$1 compat=$2 stub=$3 odir=$4 abi std cuda=""
  rt_libtorch_check "$d" || return 1
  abi=$(rt_libtorch_abi "$d") || return 1
  std=$(rt_libtorch_std "$d")
  RT_GOFLAGS=$(rt_libtorch_cxx20 "$std" "$odir") || return 1
  RT_CXXFLAGS="-I$d/include -I$d/include/torch/csrc/api/include $compat -D_GLIBCXX_USE_CXX11_ABI=$abi -Wno-deprecated-declarations"
  if rt_libtorch_cuda "$d"; then
    cuda="-Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed"
  fi
  # $d/lib comes before the stubs, so a CUDA build's real libraries win;
  # the stubs only satisfy the names gotch lists that DIR lacks (libcudart
  # and friends live elsewhere in pip wheels), and --as-needed drops them.
  RT_LDFLAGS="-L$d/lib -Wl,-rpath,$d/lib -L$stub -Wl,--as-needed${cuda:+ $cuda}"
}

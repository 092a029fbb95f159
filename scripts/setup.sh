#!/usr/bin/env bash
# ringtune setup: installs what the build, the tests and the demo need, and
# checks that libtorch really runs on OpenBLAS. Idempotent: a second run only
# checks. Safe to run as often as you like (the Makefile runs it first).
#
#   scripts/setup.sh                 Debian/Ubuntu: apt packages (libtorch-dev
#                                    1.13 CPU, OpenBLAS, python3-torch for the
#                                    test oracle, chromium for the dashboard
#                                    test), Go modules, demo data.
#   scripts/setup.sh --check         only check; print what is missing and
#                                    exit 1 instead of installing.
#   scripts/setup.sh --libtorch DIR  build against a libtorch 2.x at DIR
#                                    instead (GPU hosts): an official libtorch
#                                    zip unpacked at DIR, or a pip torch's
#                                    package directory (python3 -c 'import
#                                    torch; print(torch.__path__[0])').
#                                    Also: LIBTORCH=DIR scripts/setup.sh.
#                                    The C++ ABI, the C++ standard and CUDA
#                                    are detected (scripts/libtorch.sh).
#   scripts/setup.sh --libtorch DIR --download-libtorch [--cuda cu124]
#                                    download libtorch 2.6.0 from pytorch.org
#                                    into DIR first (only when asked).
#   scripts/setup.sh --no-data       skip fetching the demo dataset.
#
# The --libtorch path is compiled in CI against Debian's libtorch 2.6 and
# 2.14 headers (scripts/check-headers.sh) and rehearsed against a pip-style
# layout of Debian's 1.13 (scripts/gpu/check.sh); no GPU has run it yet.
set -euo pipefail

# Go's build cache and ours live under $HOME; a bare environment (a CI
# runner, cron) may lack it.
if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

check_only=0
libtorch=${LIBTORCH:-}
download=0
cuda=cu124
fetch_data=1
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check_only=1 ;;
    --libtorch) [ $# -ge 2 ] || die "--libtorch needs a directory"; libtorch=$2; shift ;;
    --libtorch=*) libtorch=${1#--libtorch=} ;;
    --download-libtorch) download=1 ;;
    --cuda) [ $# -ge 2 ] || die "--cuda needs a value such as cu124"; cuda=$2; shift ;;
    --no-data) fetch_data=0 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see scripts/setup.sh --help)" ;;
  esac
  shift
done

t0=$(date +%s)

# --- Go ------------------------------------------------------------------
need_go=1.26
if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed. Install Go $need_go or newer (https://go.dev/dl/) and put it on PATH."
fi
gov=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$need_go" "$gov" | sort -V | head -1)" != "$need_go" ]; then
  die "Go $gov is too old: ringtune needs Go $need_go or newer (https://go.dev/dl/)."
fi
say "Go $gov"

# --- system packages --------------------------------------------------------
# Where the system libtorch lives; the tests point these elsewhere to check
# the message a machine without libtorch gets.
torch_inc=${RINGTUNE_TORCH_INCLUDE:-/usr/include/torch/csrc/api/include/torch/torch.h}
torch_lib=${RINGTUNE_TORCH_LIB:-/usr/lib/x86_64-linux-gnu/libtorch_cpu.so}
pkgs=(libtorch-dev libopenblas0-pthread python3-torch python3-numpy
  # The launch tests start a real sshd and a one-machine Slurm themselves.
  openssh-server openssh-client slurmctld slurmd slurm-client munge)
# Tools that may come from elsewhere than apt (a Node.js install, say):
# install Debian's package only when the command is missing.
command -v g++ >/dev/null 2>&1 || pkgs+=(g++)
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
# The dashboard test renders the page in headless Chromium. Debian packages
# it as chromium; Ubuntu's is a snap, which containers cannot run, so there
# it must come from elsewhere (RINGTUNE_CHROMIUM names any Chrome binary).
os_id=$( (. /etc/os-release 2>/dev/null && echo "${ID:-}") || true)
if [ -z "${RINGTUNE_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$os_id" = debian ]; then
    pkgs+=(chromium)
  else
    say "note: no chromium on PATH and this is not Debian: the dashboard test (coordinator TestDashboard) needs a Chrome or Chromium; put it on PATH or set RINGTUNE_CHROMIUM"
  fi
fi

missing_pkgs() {
  local p miss=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || miss+=("$p")
  done
  echo "${miss[@]:-}"
}

torchinfo_args=()
if [ -n "$libtorch" ] && [ "$libtorch" != system ]; then
  # A libtorch 2.x directory (GPU hosts).
  if [ "$download" = 1 ] && [ ! -f "$libtorch/lib/libtorch_cpu.so" ]; then
    url="https://download.pytorch.org/libtorch/$cuda/libtorch-cxx11-abi-shared-with-deps-2.6.0%2B$cuda.zip"
    [ "$check_only" = 1 ] && die "libtorch is not at $libtorch (run without --check to download it)"
    command -v unzip >/dev/null || die "unzip is needed to unpack libtorch: apt-get install unzip"
    say "downloading libtorch 2.6.0+$cuda from $url"
    tmp=$(mktemp -d)
    curl -fL --retry 3 -o "$tmp/libtorch.zip" "$url" || die "download of $url failed"
    mkdir -p "$libtorch"
    unzip -q "$tmp/libtorch.zip" -d "$tmp" && cp -a "$tmp/libtorch/." "$libtorch/"
    rm -rf "$tmp"
  fi
  libtorch=$(cd "$libtorch" 2>/dev/null && pwd) || die "no libtorch directory '$libtorch'"
  # shellcheck source=scripts/libtorch.sh
  . scripts/libtorch.sh
  msg=$(rt_libtorch_check "$libtorch" 2>&1) || die "$msg"
  ver=$(rt_libtorch_version "$libtorch")
  abi=$(rt_libtorch_abi "$libtorch" 2>&1) || die "$abi"
  std=$(rt_libtorch_std "$libtorch")
  kind=CPU
  if rt_libtorch_cuda "$libtorch"; then
    kind=CUDA
    torchinfo_args=(-want-cuda)
  fi
  case "$ver" in
    1.13.* | 2.1.* | 2.[6-9].* | 2.1[0-9].*) ;;
    *) say "warning: libtorch $ver at $libtorch is untested: ringtune is checked against 1.13, 2.6 and 2.14 (2.1 is gotch's own target)" ;;
  esac
  mkdir -p .build && echo "$libtorch" > .build/libtorch-path
  say "using libtorch $ver ($kind, C++ ABI $abi, -std=$std) at $libtorch (recorded in .build/libtorch-path)"
else
  rm -f .build/libtorch-path
  miss=$(missing_pkgs)
  if [ ! -f "$torch_inc" ] || [ ! -f "$torch_lib" ] || [ -n "$miss" ]; then
    if [ "$check_only" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
      msg="libtorch or its companions are missing"
      [ ! -f "$torch_inc" ] && msg="$msg; no libtorch headers at $torch_inc"
      [ ! -f "$torch_lib" ] && msg="$msg; no libtorch library at $torch_lib"
      [ -n "$miss" ] && msg="$msg; missing packages: $miss"
      die "$msg. Install them with: sudo apt-get install -y --no-install-recommends ${pkgs[*]} (Debian 12 / Ubuntu), or on other systems point scripts/setup.sh --libtorch DIR at a libtorch 2.x (official zip or pip torch)"
    fi
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing ${miss:-libtorch-dev} with apt-get (libtorch 1.13 CPU, OpenBLAS, PyTorch for the test oracle)"
    t1=$(date +%s)
    $sudo apt-get update -qq
    # Install daemons (sshd, munged, slurmd) without starting them: the tests
    # run their own instances on loopback ports.
    rcd=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      rcd=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' | $sudo tee "$rcd" >/dev/null && $sudo chmod 755 "$rcd"
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    [ -n "$rcd" ] && $sudo rm -f "$rcd"
    say "apt-get took $(( $(date +%s) - t1 ))s"
    [ -f "$torch_inc" ] || die "apt-get finished but $torch_inc is still missing"
  fi
  say "libtorch $(dpkg-query -W -f='${Version}' libtorch-dev) (Debian, CPU)"
  # Debian's libtorch links libblas.so.3; only OpenBLAS behind that name makes
  # matrix products fast (the reference BLAS is ~5x slower end to end).
  blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
  case "$blas" in
    *openblas*) say "libblas.so.3 -> $blas (OpenBLAS)" ;;
    *)
      [ "$check_only" = 1 ] && die "libblas.so.3 resolves to '$blas', not OpenBLAS: sudo update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
      say "pointing libblas.so.3 at OpenBLAS"
      sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
      $sudo update-alternatives --set libblas.so.3-x86_64-linux-gnu /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 >/dev/null
      ;;
  esac
fi

# --- Go modules -------------------------------------------------------------
t1=$(date +%s)
go mod download
go mod verify >/dev/null || die "go mod verify failed: a module in the cache was modified; run 'go clean -modcache' and retry"
say "Go modules downloaded and verified in $(( $(date +%s) - t1 ))s"

# --- build gotch and check libtorch at run time ------------------------------
# shellcheck source=scripts/env.sh
. scripts/env.sh
t1=$(date +%s)
say "building the torch layer (a cold build of gotch takes 3-6 minutes; later builds are cached)"
go build -o .build/torchinfo ./internal/torchinfo
say "built in $(( $(date +%s) - t1 ))s"
.build/torchinfo "${torchinfo_args[@]}" || die "libtorch does not run: see the message above"

# --- demo data ---------------------------------------------------------------
if [ "$fetch_data" = 1 ]; then
  if [ "$check_only" = 1 ]; then
    [ -s .data/sentiment/train.jsonl ] || die "demo data missing: run scripts/fetch-data.sh"
  else
    scripts/fetch-data.sh
  fi
fi

say "done in $(( $(date +%s) - t0 ))s"

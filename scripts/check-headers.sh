#!/usr/bin/env bash
# check-headers.sh: compiles gotch's C++ and ours (-fsyntax-only) against the
# libtorch 2.x headers GPU users have, without a GPU and without installing
# anything. CI runs it (.ci/run); it is how we know the 2.x build compiles.
#
#   scripts/check-headers.sh            check every version in $VERSIONS
#   CHECK_HEADERS_VERSIONS="2.6.0+dfsg-7:trixie" scripts/check-headers.sh
#
# For each Debian libtorch-dev version (2.6 from trixie, 2.14 from sid; they
# bracket the 2.11 of pip's CUDA wheels) it:
#   1. fetches the .deb with `apt-get download`, using a private sources list
#      and private apt state under the cache dir: nothing is installed and
#      /etc/apt is not touched. The .deb and its unpacked headers are cached
#      (~/.cache/ringtune/headers), so later runs need no network;
#   2. compiles gotch's libtch/torch_api.cpp (with scripts/gotch/torch_compat.h
#      and torch_compat_2x.h force-included, as scripts/env.sh does for a
#      LIBTORCH build) and every C++ file of ours
#      with g++ -fsyntax-only, in the C++ standard the headers demand
#      (C++20 from 2.13 on, else C++17; the same rule as scripts/setup.sh).
# Debian's 1.13 headers in /usr/include are hidden by empty tmpfs mounts in a
# private mount namespace (unshare): otherwise __has_include in the compat
# header and any include the 2.x tree lacks would silently find 1.13's.
# The versions are checked in parallel; each takes about 1.3 GB of memory.
# libtorch-dev needs no other -dev package for these files (checked with
# g++ -M: only libc and kernel headers come from outside it).
# Exit status: 0 when every file compiles against every version, else 1.
set -euo pipefail

if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { echo "check-headers: $*" >&2; }
die() { echo "check-headers: error: $*" >&2; exit 1; }

# version:suite pairs. A suite drops old versions when it moves on; when sid
# no longer has 2.14.1+dfsg-1 and the cache is cold, the download fails with a
# message naming the version: set CHECK_HEADERS_VERSIONS to what
# `apt-cache policy` (with the same private sources) offers.
versions=${CHECK_HEADERS_VERSIONS:-"2.6.0+dfsg-7:trixie 2.14.1+dfsg-1:sid"}
cache="${RINGTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringtune}/headers"
mirror=${CHECK_HEADERS_MIRROR:-http://deb.debian.org/debian}
keyring=${CHECK_HEADERS_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
# Headers of the system libtorch to hide (Debian's libtorch-dev 1.13).
hide=(/usr/include/torch /usr/include/ATen /usr/include/c10 /usr/include/caffe2)

command -v g++ >/dev/null || die "g++ is missing: apt-get install g++"
command -v unshare >/dev/null || die "unshare (util-linux) is missing"
gotch=$(go list -m -f '{{.Dir}}' github.com/sugarme/gotch 2>/dev/null) ||
  die "cannot find gotch in the Go module cache: run 'go mod download' (scripts/setup.sh does)"
[ -f "$gotch/libtch/torch_api.cpp" ] || die "no $gotch/libtch/torch_api.cpp: run 'go mod download'"
mapfile -t ours < <(git ls-files '*.cpp' '*.cc' 2>/dev/null || find . -name '*.cpp' -not -path './.data/*')
[ "${#ours[@]}" -gt 0 ] || die "found none of our C++ files (expected model/torch/rt.cpp)"

t0=$(date +%s)
mkdir -p "$cache"

# fetch VERSION SUITE: prints the directory holding the unpacked headers.
fetch() {
  local ver=$1 suite=$2 dir="$cache/libtorch-dev_$1" deb apt
  if [ -f "$dir/.complete" ]; then
    echo "$dir"
    return
  fi
  deb="$cache/debs/libtorch-dev_${ver//:/%3a}_amd64.deb"
  if [ ! -f "$deb" ]; then
    apt="$cache/apt"
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/parts" "$apt/prefs" "$cache/debs"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
      -o "Dir::Etc::Preferences=$apt/prefs/none" -o "Dir::Etc::PreferencesParts=$apt/prefs"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::State::Status=$apt/status"
      -o "Dir::Cache=$apt" -o "Dir::Cache::Archives=$apt/archives"
      -o Debug::NoLocking=1 -o APT::Architecture=amd64 -o APT::Sandbox::User=root
      -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
      -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false)
    # One update serves both versions; the lock keeps the parallel fetches
    # from updating the same lists at once.
    (
      flock 9
      : >"$apt/status"
      printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" trixie "$keyring" "$mirror" sid >"$apt/sources.list"
      if [ ! -f "$apt/updated" ] || [ -n "$(find "$apt/updated" -mmin +60)" ]; then
        apt-get "${opts[@]}" -qq update >&2 || die "apt-get update of $mirror (trixie, sid) failed; is the network or the mirror reachable?"
        touch "$apt/updated"
      fi
    ) 9>"$apt/lock" || exit 1
    (cd "$cache/debs" && apt-get "${opts[@]}" -qq download "libtorch-dev=$ver" >&2) ||
      die "could not download libtorch-dev=$ver from $suite: set CHECK_HEADERS_VERSIONS to a version that 'apt-cache policy libtorch-dev' lists for $suite"
  fi
  rm -rf "$dir.tmp"
  dpkg-deb -x "$deb" "$dir.tmp" || die "cannot unpack $deb (delete it to fetch it again)"
  touch "$dir.tmp/.complete"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

# check VERSION SUITE LOG: compiles every file against that version's headers.
check() {
  local ver=$1 suite=$2 log=$3 dir inc std f rc=0 t
  t=$(date +%s)
  dir=$(fetch "$ver" "$suite" 2>"$log") || { cat "$log" >&2; return 1; }
  inc="$dir/usr/include"
  std=c++17
  grep -qs 'C++20 or later compatible compiler is required' "$inc/torch/csrc/api/include/torch/all.h" && std=c++20
  {
    echo "== libtorch-dev $ver ($suite), -std=$std"
    cat "$log"
    for f in "$gotch/libtch/torch_api.cpp" "${ours[@]}"; do
      local extra=()
      # gotch's C++ gets the compat header, exactly as scripts/env.sh sets it.
      [ "$f" = "$gotch/libtch/torch_api.cpp" ] && extra=(-include "$root/scripts/gotch/torch_compat.h" -include "$root/scripts/gotch/torch_compat_2x.h")
      echo "-- $f"
      g++ -fsyntax-only -std=$std -I"$(dirname "$f")" -I"$inc" -I"$inc/torch/csrc/api/include" \
        "${extra[@]}" -Wno-deprecated-declarations "$f" || rc=1
    done
    echo "== libtorch-dev $ver: $([ $rc = 0 ] && echo ok || echo FAILED) in $(($(date +%s) - t))s"
  } >"$log.all" 2>&1
  mv "$log.all" "$log"
  return $rc
}

# Re-run inside a private mount namespace with the system headers hidden.
if [ "${_CHECK_HEADERS_NS:-}" != 1 ]; then
  ns=(unshare -m)
  [ "$(id -u)" = 0 ] || ns=(unshare -rm)
  exec env _CHECK_HEADERS_NS=1 "${ns[@]}" bash "$0" "$@"
fi
for h in "${hide[@]}"; do
  [ -d "$h" ] || continue
  mount -t tmpfs -o ro,size=1k ringtune-hidden "$h" || die "cannot hide $h (mount in a private namespace failed; run as root or allow user namespaces)"
done
[ -e /usr/include/torch/csrc ] && die "the 1.13 headers are still visible in /usr/include/torch"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
names=()
for v in $versions; do
  ver=${v%%:*}
  suite=${v#*:}
  [ "$suite" != "$v" ] || die "bad entry '$v' in CHECK_HEADERS_VERSIONS: want VERSION:SUITE"
  check "$ver" "$suite" "$logs/$ver.log" &
  pids+=($!)
  names+=("$ver")
done
fail=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    tail -1 "$logs/${names[$i]}.log" >&2
  else
    fail=1
    grep -E 'error|^==|^--' "$logs/${names[$i]}.log" >&2 || cat "$logs/${names[$i]}.log" >&2
  fi
done
say "total $(($(date +%s) - t0))s"
[ $fail = 0 ] || die "the C++ does not compile against every libtorch 2.x above; fix scripts/gotch/torch_compat_2x.h or our C++"
say "ok: gotch's C++ and ours compile against libtorch-dev $versions"

#!/usr/bin/env bash
# bundle.sh [OUT]: packs what a GPU host without Go or network needs to
# build and check ringtune, into one tar (default .build/gpu-bundle.tar, at
# most 32 MiB) of two tar.xz:
#   ringtune.tar.xz  ringtune/: this checkout's tracked files (as in the
#                    working tree), vendor/ (`go mod vendor`) and .data/ (the
#                    demo data and tokenizers, scripts/fetch-data.sh)
#   go.tar.xz        go/: this Go toolchain, trimmed to what `go build` and
#                    `go vet` need (no src/cmd, tests or testdata). It only
#                    changes with the Go version, so it is made once and
#                    cached (compressing it takes most of the time).
# On the host:
#   tar xf gpu-bundle.tar && tar xJf go.tar.xz && tar xJf ringtune.tar.xz
#   ringtune/scripts/gpu/check.sh RESULTS
#
# Why a toolchain and sources, not prebuilt binaries: the host then builds
# exactly as every user does (scripts/env.sh against its own libtorch), so
# the check proves that build; a gotch op that does not compile against the
# host's headers fails the build instead of failing when called; and there
# is one source tree, with no separately compiled libtch.so to keep in step
# with the binaries. The cost is gotch's C++ compile there (one translation
# unit, minutes), which a warm rerun on the same host skips (the Go cache is
# kept in ringtune/.build/gocache).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${1:-.build/gpu-bundle.tar}
if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
  export HOME
fi
cache="${RINGTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ringtune}"
limit=$((32 * 1024 * 1024))
say() { echo "bundle: $*" >&2; }
die() { echo "bundle: error: $*" >&2; exit 1; }

[ -s .data/sentiment/train.jsonl ] || die "no demo data in .data: run scripts/fetch-data.sh first"
command -v xz >/dev/null || die "xz is missing: apt-get install xz-utils"
goroot=$(go env GOROOT)
stage=$(mktemp -d)
trap 'chmod -R u+w "$stage" 2>/dev/null; rm -rf "$stage"' EXIT
t0=$(date +%s)

# The source tree: tracked files as they are in the working tree.
mkdir -p "$stage/ringtune"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$stage/ringtune"
(cd "$stage/ringtune" && GOFLAGS=-mod=mod go mod vendor) || die "go mod vendor failed"
mkdir -p "$stage/ringtune/.data"
cp -r .data/sentiment .data/tokenizers "$stage/ringtune/.data/"

# The toolchain: the go command, the tools a build, cgo and vet run, and the
# standard library's sources.
gotar=$cache/go-$(go env GOVERSION)-$(go env GOOS)-$(go env GOARCH).tar.xz
if [ ! -f "$gotar" ]; then
  say "packing the Go toolchain once into $gotar"
  mkdir -p "$stage/go/bin" "$stage/go/pkg/tool" "$cache"
  cp "$goroot/bin/go" "$stage/go/bin/"
  tooldir=$(go env GOTOOLDIR)
  mkdir -p "$stage/go/pkg/tool/$(basename "$tooldir")"
  for t in compile link asm cgo vet buildid pack; do
    [ -x "$tooldir/$t" ] && cp "$tooldir/$t" "$stage/go/pkg/tool/$(basename "$tooldir")/"
  done
  cp -r "$goroot/pkg/include" "$stage/go/pkg/"
  for f in VERSION go.env; do
    [ -f "$goroot/$f" ] && cp "$goroot/$f" "$stage/go/"
  done
  (cd "$goroot" && find src -path src/cmd -prune -o -name testdata -prune -o \
    -type f ! -name '*_test.go' -print0 | tar --null -T - -cf -) | tar -xf - -C "$stage/go"
  tar -C "$stage" -cf - go | xz -T0 -6 >"$gotar.tmp"
  mv "$gotar.tmp" "$gotar"
fi
cp "$gotar" "$stage/go.tar.xz"
tar -C "$stage" -cf - ringtune | xz -T0 -6 >"$stage/ringtune.tar.xz"

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf "$out.tmp" go.tar.xz ringtune.tar.xz
mv "$out.tmp" "$out"
size=$(stat -c %s "$out")
say "$out: $(awk -v s="$size" 'BEGIN {printf "%.1f MiB", s/1048576}') in $(($(date +%s) - t0))s"
[ "$size" -le "$limit" ] || die "$out is $size bytes, over the 32 MiB limit"

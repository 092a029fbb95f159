#!/usr/bin/env bash
# Vendor uPlot (the dashboard's chart library) into coordinator/dash/web/uplot
# from the npm registry, checked against its pinned sha512. The files are
# committed; run this only to update them (change VERSION and SHA512 first;
# the new hash is `npm view uplot@VERSION dist.integrity` without "sha512-").
set -euo pipefail
VERSION=1.6.32
SHA512='KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=='

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/coordinator/dash/web/uplot"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tgz=$(cd "$tmp" && npm pack --silent "uplot@$VERSION" | tail -n1)
got=$(openssl dgst -sha512 -binary "$tmp/$tgz" | base64 -w0)
if [ "$got" != "$SHA512" ]; then
  echo "vendor-uplot: uplot@$VERSION has sha512 $got, want $SHA512 (pinned in $0)" >&2
  exit 1
fi
tar -xzf "$tmp/$tgz" -C "$tmp"
install -m 644 "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$tmp/package/LICENSE" "$dest/"
sed -i "s/uplot@[0-9.]*/uplot@$VERSION/" "$dest/README.md"
sed -i "s|\`[A-Za-z0-9+/]*==\`|\`$SHA512\`|" "$dest/README.md"
echo "vendor-uplot: uplot@$VERSION in $dest" >&2

#!/usr/bin/env bash
# Runs one named benchmark: scripts/bench.sh NAME [ARGS...]
# Each benchmark lives in scripts/bench/NAME.sh and prints one summary line per
# measurement, "bench: NAME key=value ...", so that runs can be compared.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "usage: scripts/bench.sh NAME [ARGS...]"
  echo "benchmarks:"
  for f in "$here"/bench/*.sh; do [ -e "$f" ] && echo "  $(basename "$f" .sh)"; done
  exit 2
fi
name=$1; shift
script="$here/bench/$name.sh"
if [ ! -f "$script" ]; then
  echo "bench.sh: no benchmark named '$name' (looked for $script); run scripts/bench.sh --help for the list" >&2
  exit 2
fi
exec bash "$script" "$@"

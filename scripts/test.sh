#!/usr/bin/env bash
# The README's test command: sets up what is missing (apt packages, Go
# modules, demo data; see scripts/setup.sh), then vets and runs every test.
# Extra arguments go to `go test` (e.g. scripts/test.sh -run Tiny ./model/...).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
scripts/setup.sh
t1=$(date +%s)
# shellcheck source=scripts/env.sh
. scripts/env.sh
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.data/*'))
if [ -n "$unformatted" ]; then
  echo "test: not gofmt-formatted:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...
go build ./...
t2=$(date +%s)
echo "test: setup $((t1 - t0))s, vet+build $((t2 - t1))s" >&2
if [ $# -eq 0 ]; then
  set -- ./...
fi
go test -count=1 -timeout 20m "$@"
t3=$(date +%s)
echo "test: setup $((t1 - t0))s, vet+build $((t2 - t1))s, tests $((t3 - t2))s, total $((t3 - t0))s" >&2

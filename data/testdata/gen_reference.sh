#!/usr/bin/env bash
# Regenerates data/testdata/reference_ids.json from the reference tokenizers.
# Needs node, npm and the files of scripts/fetch-data.sh (run it first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA="$ROOT/.data"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for spec in @huggingface/tokenizers@0.2.0 gpt-3-encoder@1.1.4; do
	dir="$TMP/$(echo "$spec" | tr '/@' '__')"
	mkdir -p "$dir"
	echo "gen_reference: npm pack $spec" >&2
	tgz="$(cd "$dir" && npm pack --silent "$spec" | tail -n1)"
	tar -xzf "$dir/$tgz" -C "$dir"
done
node "$ROOT/data/testdata/gen_reference.js" \
	"$TMP/_huggingface_tokenizers_0.2.0/package" \
	"$TMP/gpt-3-encoder_1.1.4/package" \
	"$DATA/tokenizers/bert-base-uncased/tokenizer.json" \
	"$DATA/sentiment/eval.jsonl" \
	"$ROOT/data/testdata/reference_ids.json"

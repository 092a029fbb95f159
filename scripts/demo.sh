#!/usr/bin/env bash
# The README's main command: sets up what is missing, then runs a real local
# cluster (a coordinator and 3 node processes on 127.0.0.1) that fine-tunes
# a small BERT from scratch on the 3,000 labelled sentences of npm
# sentiment@5.0.2, prints progress and evaluation accuracy, and writes the
# Hugging Face model directory to runs/local/model.
# Arguments go to scripts/local-cluster.sh (e.g. `scripts/demo.sh 2`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/local-cluster.sh "$@"

#!/usr/bin/env bash
# bench.sh DEVICE [STEPS]: ringtune (internal/gpucheck -bench-steps) against
# PyTorch eager (bench_torch.py) on the same GPU, in the same run: training
# steps of GPT-2 124M and a 1.1B Llama (TinyLlama's shape), random weights
# (no weights are reachable on the GPU host), random tokens, bf16 autocast
# with fp32 weights and AdamW state on both sides. Prints
#   bench: gpu model=M precision=bf16 tokens_per_s=X torch_tokens_per_s=Y ratio=X/Y peak_mem_gb=P torch_peak_mem_gb=Q
# Peak memory is the process's largest GPU memory in use as nvidia-smi
# reports it (sampled every 0.2 s), measured the same way for both.
# Run by scripts/gpu/check.sh after its build (.build/gpucheck).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
device=${1:?usage: bench.sh DEVICE [STEPS]}
steps=${2:-20}
python=${PYTHON:-python3}
idx=${device#cuda:}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# peak PID: the largest used GPU memory (MiB) of PID while it runs.
peak() {
  local pid=$1 max=0 v
  while kill -0 "$pid" 2>/dev/null; do
    v=$(nvidia-smi -i "$idx" --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
      awk -F', *' -v p="$pid" '$1 == p {print $2}')
    [ -n "$v" ] && [ "$v" -gt "$max" ] && max=$v
    sleep 0.2
  done
  echo "$max"
}

# measure NAME CMD...: runs CMD, prints its last line and peak memory (GiB).
measure() {
  local out=$tmp/$1.out
  shift
  "$@" >"$out" 2>"$out.err" &
  local pid=$!
  local mib
  mib=$(peak "$pid")
  wait "$pid" || { cat "$out.err" >&2; return 1; }
  echo "$(tail -1 "$out") peak_gb=$(awk -v m="$mib" 'BEGIN {printf "%.2f", m/1024}')"
}

field() { sed -n "s/.*$1=\([-0-9.e]*\).*/\1/p"; }

mkdir -p "$tmp/gpt2-124m" "$tmp/llama-1b"
cat >"$tmp/gpt2-124m/config.json" <<'JSON'
{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
 "n_head": 12, "n_inner": null, "n_positions": 1024, "activation_function": "gelu_new", "resid_pdrop": 0.0,
 "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
 "tie_word_embeddings": true}
JSON
cat >"$tmp/llama-1b/config.json" <<'JSON'
{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 2048,
 "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
 "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02, "rms_norm_eps": 1e-5,
 "rope_theta": 10000.0, "tie_word_embeddings": false, "attention_dropout": 0.0}
JSON

for spec in gpt2-124m:8 llama-1b:4; do
  model=${spec%%:*} rows=${spec#*:} seq=512
  go=$(measure "$model-go" .build/gpucheck -dir "$tmp/$model" -device "$device" -precision bf16 \
    -bench-steps "$steps" -batch "$rows" -seq "$seq")
  py=$(measure "$model-torch" "$python" scripts/gpu/bench_torch.py "$tmp/$model/config.json" "$device" "$steps" "$rows" "$seq" bf16)
  echo "# $model ringtune: $go" >&2
  echo "# $model torch:    $py" >&2
  g=$(echo "$go" | field tokens_per_s) p=$(echo "$py" | field tokens_per_s)
  echo "bench: gpu model=$model precision=bf16 batch=$rows seq=$seq steps=$steps tokens_per_s=$g torch_tokens_per_s=$p" \
    "ratio=$(awk -v a="$g" -v b="$p" 'BEGIN {printf "%.2f", a/b}')" \
    "peak_mem_gb=$(echo "$go" | field peak_gb) torch_peak_mem_gb=$(echo "$py" | field peak_gb)"
done

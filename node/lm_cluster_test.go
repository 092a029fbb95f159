package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/internal/clustertest"
)

// gpt2Config is a 1-layer GPT-2 with the real vocabulary and dropout off.
const gpt2Config = `{
  "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257,
  "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64, "activation_function": "gelu_new",
  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
  "initializer_range": 0.02, "tie_word_embeddings": true, "bos_token_id": 50256, "eos_token_id": 50256
}`

// tokensFile writes the sentences of a JSONL dataset as pre-tokenized rows
// (GPT-2 BPE ids), every third with its first half masked by -100 labels as
// a prompt would be, and returns how many rows it wrote.
func tokensFile(t *testing.T, tok *data.Tokenizer, src, dst string) int {
	t.Helper()
	exs, err := data.ReadFile(src, "jsonl", data.Fields{Text: "text", Task: data.CausalLM})
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	for i, ex := range exs {
		ids, err := tok.IDs(ex.Text)
		if err != nil {
			t.Fatal(err)
		}
		row := map[string][]int{"input_ids": ids}
		if i%3 == 0 {
			l := append([]int{}, ids...)
			for j := range len(l) / 2 {
				l[j] = data.IgnoreIndex
			}
			row["labels"] = l
		}
		b, _ := json.Marshal(row)
		sb.Write(b)
		sb.WriteByte('\n')
	}
	if err := os.WriteFile(dst, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return len(exs)
}

// TestPackedTokensTrain: a causal-LM run on pre-tokenized rows with
// data.pack, on two libtorch nodes, packs the documents into fewer
// sequences, commits every packed sequence of each epoch exactly once,
// keeps the replicas identical, agrees with the nodes on the loss divisor
// (the coordinator stops the run otherwise), and lowers the evaluation
// perplexity from the first epoch to the second. The model directory has no
// tokenizer: pre-tokenized data needs none.
func TestPackedTokensTrain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bins := clustertest.Build(t, "./cmd/coordinator", "./cmd/node")
	f := clustertest.NewFixture(t, clustertest.Options{
		Label: fmt.Sprintf("lm-%d", os.Getpid()), MinNodes: 2, MaxNodes: 2,
		ModelConfig: gpt2Config, TrainLines: 96, EvalLines: 24,
		Model: "  task: causal_lm\n  init: random\n",
		Train: `  epochs: 2
  global_batch: 8
  micro_batch: 4
  optimizer: adamw
  lr: 3.0e-3
  schedule: constant
  max_grad_norm: 1.0
  seed: 5
  threads: 1
  digest_every: 1
`,
	})
	tok, err := data.LoadTokenizer(clustertest.DataFile(t, "tokenizers/gpt2"))
	if err != nil {
		t.Fatal(err)
	}
	docs := tokensFile(t, tok, filepath.Join(f.Dir, "train.jsonl"), filepath.Join(f.Dir, "train_tokens.jsonl"))
	tokensFile(t, tok, filepath.Join(f.Dir, "eval.jsonl"), filepath.Join(f.Dir, "eval_tokens.jsonl"))
	if err := os.Remove(filepath.Join(f.Dir, "model", "tokenizer.json")); err != nil {
		t.Fatal(err)
	}
	f.YAML = strings.Replace(f.YAML, `  train_file: train.jsonl
  eval_file: eval.jsonl
  max_length: 32
  tokenizer: model/tokenizer.json
`, `  format: tokens_jsonl
  pack: true
  train_file: train_tokens.jsonl
  eval_file: eval_tokens.jsonl
  max_length: 64
`, 1)
	if !strings.Contains(f.YAML, "pack: true") {
		t.Fatal("fixture's data section changed; update this test")
	}
	f.Write(t, f.YAML)

	c := clustertest.RunCluster(t, ctx, f, bins[0], bins[1], 2, nil)
	if code := c.Coord.Wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("coordinator exit %d", code)
	}
	for _, p := range c.Nodes {
		if code := p.Wait(t, 30*time.Second); code != 0 {
			t.Fatalf("node exit %d", code)
		}
	}
	out := c.Coord.Text()
	m := regexp.MustCompile(`msg=packed file=\S*train_tokens.jsonl documents=(\d+) sequences=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatal("the coordinator did not report packing the train file")
	}
	nd, _ := strconv.Atoi(m[1])
	ns, _ := strconv.Atoi(m[2])
	if nd != docs || ns >= nd/2 {
		t.Fatalf("packed %d documents (wrote %d) into %d sequences: want fewer than half as many", nd, docs, ns)
	}
	if n := strings.Count(out, fmt.Sprintf("committed=%d missing=0 samples=%d", ns, ns)); n != 2 {
		t.Fatalf("%d complete epochs of %d packed sequences, want 2", n, ns)
	}
	if !strings.Contains(out, "replicas identical") {
		t.Fatal("no digest agreement")
	}
	evals := regexp.MustCompile(`msg=evaluation applied=\d+ count=\S+ loss=(\S+) perplexity=(\S+)`).FindAllStringSubmatch(out, -1)
	if len(evals) != 2 {
		t.Fatalf("%d evaluations, want one per epoch", len(evals))
	}
	var ppl [2]float64
	for i, e := range evals {
		loss, _ := strconv.ParseFloat(e[1], 64)
		ppl[i], _ = strconv.ParseFloat(e[2], 64)
		if math.Abs(ppl[i]-math.Exp(loss)) > 1e-6*ppl[i] {
			t.Errorf("evaluation %d: perplexity %v is not exp(loss %v)", i, ppl[i], loss)
		}
	}
	t.Logf("%d documents packed into %d sequences of up to 64 tokens; eval perplexity %.1f after epoch 1, %.1f after epoch 2", nd, ns, ppl[0], ppl[1])
	if !(ppl[1] < ppl[0]) || !(ppl[0] < 50257) {
		t.Errorf("perplexity %v after epoch 1 and %v after epoch 2: training did not lower it", ppl[0], ppl[1])
	}
	if _, err := os.Stat(filepath.Join(f.Dir, "out", "model.safetensors")); err != nil {
		t.Errorf("no exported model: %v", err)
	}
}

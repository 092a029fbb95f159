package node_test

// The cluster with real libtorch nodes: the coordinator and `node join`
// binaries as separate processes on loopback, fine-tuning a small BERT on
// sentences of the real dataset.

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/internal/clustertest"
	"github.com/ringtune/ringtune/model/safetensors"
)

func TestMain(m *testing.M) {
	code := m.Run()
	clustertest.Cleanup()
	os.Exit(code)
}

// bertConfig is a 1-layer BERT with dropout off, so that runs with different
// world sizes compute the same updates.
const bertConfig = `{
  "architectures": ["BertForSequenceClassification"], "model_type": "bert",
  "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
  "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
  "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 64, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
}`

// TestTwoNodesEqualOneNode: the same global batch on 1 and 2 libtorch nodes
// gives the same weights (to float tolerance: the all-reduce sums in another
// order), the replicas agree after every step, and the exported directory
// is a Hugging Face BERT.
func TestTwoNodesEqualOneNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	bins := clustertest.Build(t, "./cmd/coordinator", "./cmd/node")
	results := map[int]map[string][]float32{}
	for _, n := range []int{2, 1} {
		f := clustertest.NewFixture(t, clustertest.Options{
			Label: fmt.Sprintf("bert%d-%d", n, os.Getpid()), MinNodes: n, MaxNodes: n,
			ModelConfig: bertConfig, TrainLines: 48, EvalLines: 16,
			Model: "  task: classification\n  num_labels: 2\n  init: random\n",
			Train: `  epochs: 1
  global_batch: 16
  micro_batch: 4
  optimizer: adamw
  lr: 1.0e-3
  schedule: linear
  warmup_steps: 1
  max_grad_norm: 1.0
  seed: 11
  threads: 1
  digest_every: 1
`,
		})
		// Buckets of 256 KiB: this 1M-parameter model's gradient (4 MB)
		// would fit the default 25 MiB bucket whole, which is reduced in
		// one operation after backward; smaller ones keep the overlap and
		// the word embedding's split (3.9 MB) in this run.
		ar := "allreduce:\n  bucket_bytes: 262144\n"
		if n > 1 {
			// The coordinator's own tests run the ring on its default raw TCP
			// path; run this one on gRPC streams so both transports train.
			ar += "  transport: grpc\n"
		}
		f.YAML = strings.Replace(f.YAML, "allreduce:\n", ar, 1)
		f.Write(t, f.YAML)
		c := clustertest.RunCluster(t, ctx, f, bins[0], bins[1], n, nil)
		if code := c.Coord.Wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("%d-node run: coordinator exit %d", n, code)
		}
		for _, p := range c.Nodes {
			if code := p.Wait(t, 30*time.Second); code != 0 {
				t.Fatalf("%d-node run: node exit %d", n, code)
			}
		}
		out := c.Coord.Text()
		if n > 1 && !strings.Contains(c.Nodes[0].Text(), `transport=grpc`) {
			t.Fatalf("the 2-node run did not use the gRPC transport")
		}
		if n > 1 && !strings.Contains(c.Nodes[0].Text(), `overlap=true split_embedding_rows=30522`) {
			t.Fatalf("the 2-node run did not overlap the all-reduce with backward (allreduce.overlap defaults to true) with the word embedding split")
		}
		if n > 1 && !strings.Contains(out, `replicas identical" applied=3`) {
			t.Fatalf("no digest agreement after the last step in the %d-node run", n)
		}
		if !strings.Contains(out, "committed=48 missing=0") {
			t.Fatalf("%d-node run: the epoch's ledger is not complete", n)
		}
		results[n] = readAll(t, filepath.Join(f.Dir, "out"))
	}
	one, two := results[1], results[2]
	if len(one) == 0 || len(one) != len(two) {
		t.Fatalf("exports differ in tensors: %d vs %d", len(one), len(two))
	}
	for name, a := range one {
		b, ok := two[name]
		if !ok || len(a) != len(b) {
			t.Fatalf("tensor %s missing or resized in the 2-node export", name)
		}
		var diff, scale float64
		for i := range a {
			diff = math.Max(diff, math.Abs(float64(a[i])-float64(b[i])))
			scale = math.Max(scale, math.Abs(float64(a[i])))
		}
		if diff > 1e-5*math.Max(scale, 1e-3) {
			t.Errorf("%s: 1-node and 2-node weights differ by %.3g (scale %.3g)", name, diff, scale)
		}
	}
	if _, ok := one["classifier.weight"]; !ok {
		t.Errorf("export is not a BertForSequenceClassification (no classifier.weight); tensors: %d", len(one))
	}
}

func readAll(t *testing.T, dir string) map[string][]float32 {
	t.Helper()
	for _, name := range []string{"config.json", "tokenizer.json", "model.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("export lacks %s: %v", name, err)
		}
	}
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]float32{}
	for _, n := range f.Names() {
		v, err := f.Float32s(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = v
	}
	return out
}

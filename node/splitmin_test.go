package node

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/node/agent"
)

// TestSplitOnlyBigEmbeddings: allreduce.sparse_embedding splits the word
// embedding only when its matrix has at least Job.SplitMinBytes bytes of
// float32 gradient (the agent passes allreduce.bucket_bytes): below that,
// the matrix is reduced with the rest of the gradient, its segment in the
// buckets, and the step makes no extra ring operation (SplitRows 0). Both
// a tied (GPT-2) and an untied (BERT classification) embedding, on real
// libtorch models.
func TestSplitOnlyBigEmbeddings(t *testing.T) {
	for _, c := range []struct {
		name, config, task string
		matrix             int // vocab × hidden
	}{
		{"gpt2-tied", splitGPT2, "causal_lm", 300 * 32},
		{"bert-untied", overlapBert, "classification", 200 * 32},
	} {
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(c.config), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, minBytes := range []int{0, 4 * c.matrix, 4*c.matrix + 4, 25 << 20} {
			tr := &Trainer{}
			if _, err := tr.Setup(agent.Job{ModelDir: d, Task: c.task, NumLabels: 2, Init: "random", Seed: 5, Device: "cpu",
				Train: control.TrainSpec{Optimizer: "adamw", LR: 1e-2, Schedule: "constant", Betas: []float64{0.9, 0.999}, Eps: 1e-8,
					Threads: 1, SparseEmbedding: true}, SplitMinBytes: minBytes, TotalSteps: 10}); err != nil {
				t.Fatal(err)
			}
			want := minBytes <= 4*c.matrix
			if got := tr.SplitRows() > 0; got != want {
				t.Errorf("%s, SplitMinBytes %d (matrix %d bytes): split %v, want %v", c.name, minBytes, 4*c.matrix, got, want)
			}
			if got := tr.m.SplitEmbeddingNumel(); got != int64(c.matrix) {
				t.Errorf("%s: SplitEmbeddingNumel %d, want %d", c.name, got, c.matrix)
			}
			// Split, an untied matrix leaves the buckets and a tied one
			// gets a group of its own (its head part); unsplit, neither.
			splitShape := false
			for _, sg := range tr.GradSegments() {
				splitShape = splitShape || sg.Skip || (sg.Group == 2 && sg.Len == c.matrix)
			}
			if splitShape != want {
				t.Errorf("%s, SplitMinBytes %d: gradient segments shaped for split %v, want %v", c.name, minBytes, splitShape, want)
			}
			_ = tr.Close()
		}
	}
}

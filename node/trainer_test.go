package node

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/node/agent"
)

const tinyBert = `{
  "architectures": ["BertForSequenceClassification"], "model_type": "bert",
  "vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
  "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
  "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 16, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
}`

func newTrainer(t *testing.T, seed int64) *Trainer {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(tinyBert), 0o644); err != nil {
		t.Fatal(err)
	}
	tr := &Trainer{}
	if _, err := tr.Setup(agent.Job{ModelDir: d, Task: "classification", NumLabels: 2, Init: "random", Seed: seed, Device: "cpu",
		Train: control.TrainSpec{Optimizer: "adamw", LR: 1e-2, Schedule: "constant", Betas: []float64{0.9, 0.999}, Eps: 1e-8, Threads: 1}, TotalSteps: 10}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// TestStateStreamRoundTrip: WriteState streams the libtorch trainer's
// parameters, both AdamW moments and the step count in control's layout
// (checked against the model's own copies), and ReadState into a trainer
// with other weights makes it bit-identical (equal digests, which cover the
// moments too); a state of the wrong size is refused before anything is
// overwritten.
func TestStateStreamRoundTrip(t *testing.T) {
	a, b := newTrainer(t, 1), newTrainer(t, 2)
	batch, err := data.Collate([]data.Encoded{{IDs: []int{2, 5, 7, 3}, TypeIDs: []int{0, 0, 0, 0}, Label: 1}, {IDs: []int{2, 9, 3}, TypeIDs: []int{0, 0, 0}, Label: 0}}, data.Classification, 0)
	if err != nil {
		t.Fatal(err)
	}
	for step := range 2 {
		if _, _, err := a.Accumulate(batch); err != nil {
			t.Fatal(err)
		}
		if err := a.Apply(step, 2); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := a.WriteState(&buf); err != nil {
		t.Fatal(err)
	}
	params, optim, steps, err := control.DecodeState(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, a.m.NumParams())
	if err := a.m.CopyParamsTo(want); err != nil {
		t.Fatal(err)
	}
	ost, err := a.m.OptimizerState()
	if err != nil {
		t.Fatal(err)
	}
	if steps != 2 || int64(steps) != ost.Step || !slices.Equal(params, want) || !slices.Equal(optim, slices.Concat(ost.Buffers...)) {
		t.Fatalf("WriteState: steps %d (optimizer %d), params equal %v, moments equal %v", steps, ost.Step, slices.Equal(params, want), slices.Equal(optim, slices.Concat(ost.Buffers...)))
	}

	da, _ := a.Digest()
	db, _ := b.Digest()
	if bytes.Equal(da, db) {
		t.Fatal("different seeds gave equal digests")
	}
	if err := b.ReadState(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	db, _ = b.Digest()
	if !bytes.Equal(da, db) {
		t.Fatal("ReadState(WriteState()) does not reproduce the digest")
	}
	// The next step agrees too (the step count came along).
	for _, tr := range []*Trainer{a, b} {
		if _, _, err := tr.Accumulate(batch); err != nil {
			t.Fatal(err)
		}
		if err := tr.Apply(2, 2); err != nil {
			t.Fatal(err)
		}
	}
	da, _ = a.Digest()
	db, _ = b.Digest()
	if !bytes.Equal(da, db) {
		t.Fatal("replicas differ after a step taken from a streamed state")
	}

	c := newTrainer(t, 3)
	dc, _ := c.Digest()
	if err := c.ReadState(bytes.NewReader(control.EncodeState(params[:10], optim, 2))); err == nil {
		t.Fatal("a state of the wrong size was accepted")
	}
	if d, _ := c.Digest(); !bytes.Equal(d, dc) {
		t.Fatal("a refused state changed the trainer")
	}
}

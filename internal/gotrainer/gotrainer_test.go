package gotrainer

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/node/agent"
)

func setup(t *testing.T, opt string) *Trainer {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(`{"vocab_size":20}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tr := &Trainer{}
	if _, err := tr.Setup(agent.Job{ModelDir: d, Task: "classification", NumLabels: 2, Init: "random", Seed: 3,
		Train: control.TrainSpec{Optimizer: opt, LR: 0.1, Schedule: "constant", Betas: []float64{0.9, 0.999}, Eps: 1e-8, MaxGradNorm: 1}, TotalSteps: 10}); err != nil {
		t.Fatal(err)
	}
	return tr
}

func batch(t *testing.T, rows [][]int, labels []int) *data.Batch {
	t.Helper()
	var items []data.Encoded
	for i, r := range rows {
		items = append(items, data.Encoded{IDs: r, TypeIDs: make([]int, len(r)), Label: labels[i]})
	}
	b, err := data.Collate(items, data.Classification, 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSplitInvariance: one batch of 4 and two of 2 give the same update, the
// property that makes N ranks equal one.
func TestSplitInvariance(t *testing.T) {
	for _, opt := range []string{"sgd", "adamw"} {
		rows := [][]int{{1, 2, 3}, {4, 5}, {6}, {7, 8, 9, 10}}
		labels := []int{0, 1, 1, 0}
		a, b := setup(t, opt), setup(t, opt)
		if _, _, err := a.Accumulate(batch(t, rows, labels)); err != nil {
			t.Fatal(err)
		}
		for _, h := range [][2]int{{0, 2}, {2, 4}} {
			if _, _, err := b.Accumulate(batch(t, rows[h[0]:h[1]], labels[h[0]:h[1]])); err != nil {
				t.Fatal(err)
			}
		}
		_ = a.Apply(0, 4)
		_ = b.Apply(0, 4)
		for i := range a.params {
			if d := a.params[i] - b.params[i]; d > 1e-6 || d < -1e-6 {
				t.Fatalf("%s: param %d differs by %g", opt, i, d)
			}
		}
		if a.params[a.labels*a.vocab] == 0 {
			t.Fatalf("%s: bias did not move", opt)
		}
	}
}

func TestStateAndDigest(t *testing.T) {
	a, b := setup(t, "adamw"), setup(t, "adamw")
	da, _ := a.Digest()
	db, _ := b.Digest()
	if string(da) != string(db) {
		t.Fatal("same seed, different init")
	}
	if _, _, err := a.Accumulate(batch(t, [][]int{{1, 2}}, []int{1})); err != nil {
		t.Fatal(err)
	}
	_ = a.Apply(0, 1)
	var st bytes.Buffer
	if err := a.WriteState(&st); err != nil {
		t.Fatal(err)
	}
	full := append([]byte(nil), st.Bytes()...)
	if err := b.ReadState(&st); err != nil {
		t.Fatal(err)
	}
	da, _ = a.Digest()
	db, _ = b.Digest()
	if string(da) != string(db) {
		t.Fatal("ReadState(WriteState()) does not reproduce the digest")
	}
	// The layout is control's: DecodeState reads it.
	if p, _, n, err := control.DecodeState(full); err != nil || n != 1 || len(p) != len(a.params) {
		t.Fatalf("DecodeState of WriteState: %d params, %d steps, %v", len(p), n, err)
	}
	if err := b.ReadState(bytes.NewReader(control.EncodeState([]float32{1}, nil, 0))); err == nil {
		t.Fatal("wrong-size state accepted")
	}
	if err := b.ReadState(bytes.NewReader(full[:len(full)-4])); err == nil {
		t.Fatal("truncated state accepted")
	}
}

func TestRejectsBadBatch(t *testing.T) {
	a := setup(t, "sgd")
	if _, _, err := a.Accumulate(batch(t, [][]int{{25}}, []int{0})); err == nil {
		t.Fatal("token outside the vocabulary accepted")
	}
	if _, _, err := a.Accumulate(batch(t, [][]int{{2}}, []int{5})); err == nil {
		t.Fatal("label out of range accepted")
	}
}

package coordinator

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

func TestGlobalCount(t *testing.T) {
	enc := []data.Encoded{{IDs: []int{1, 2, 3}}, {IDs: []int{4}}}
	if n := GlobalCount(data.Classification, enc, []int{0, 1, 0}); n != 3 {
		t.Fatalf("classification: %d", n)
	}
	if n := GlobalCount(data.CausalLM, enc, []int{0, 1}); n != 2 {
		t.Fatalf("causal LM: %d", n)
	}
	// Labels of -100 and the first token of each packed document are not
	// targets: the divisor must equal the model's count of targets.
	packed, err := data.Pack([]data.Encoded{{IDs: []int{1, 2, 3}, Labels: []int{-100, -100, 3}}, {IDs: []int{4, 5}}}, 8, 9)
	if err != nil {
		t.Fatal(err)
	}
	// [1 2 3 9 | 4 5 9]: targets 3, 9 (2 is -100) and 5, 9 (4 starts a document).
	if n := GlobalCount(data.CausalLM, packed, []int{0}); n != 4 {
		t.Fatalf("packed causal LM: %d targets, want 4", n)
	}
}

func TestCausalLMMetricsReportPerplexity(t *testing.T) {
	m := Metrics(data.CausalLM, 0, control.EvalSums{LossSum: 12, Count: 8})
	if m["loss"] != 1.5 || math.Abs(m["perplexity"]-math.Exp(1.5)) > 1e-12 || m["count"] != 8 {
		t.Fatalf("metrics %v: want loss 1.5 (mean per token), perplexity e^1.5, count 8", m)
	}
}

func TestRankBatchesCoverTheBatch(t *testing.T) {
	enc := make([]data.Encoded, 10)
	for i := range enc {
		enc[i] = data.Encoded{IDs: []int{i + 1}, TypeIDs: []int{0}, Label: i % 2}
	}
	idx := []int{9, 3, 5, 1, 0, 7, 2}
	var got []int64
	for r := 0; r < 3; r++ {
		bs, err := RankBatches(enc, idx, 3, r, 2, data.Classification, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			if b.Size > 2 {
				t.Fatalf("micro-batch of %d > 2", b.Size)
			}
			got = append(got, b.InputIDs...)
		}
	}
	slices.Sort(got)
	want := []int64{1, 2, 3, 4, 6, 8, 10}
	if !slices.Equal(got, want) {
		t.Fatalf("ranks together saw %v, want %v", got, want)
	}
}

func TestCheckpointRoundTripAndCorruption(t *testing.T) {
	dir := t.TempDir()
	st := control.EncodeState([]float32{1, 2, 3}, []float32{4}, 7)
	for _, a := range []int{5, 10, 15} {
		if _, err := WriteCheckpoint(dir, a, 1, nil, st, 2); err != nil {
			t.Fatal(err)
		}
	}
	names, _ := listCheckpoints(dir)
	if !slices.Equal(names, []string{ckptName(10), ckptName(15)}) {
		t.Fatalf("kept %v", names)
	}
	// Corrupt the newest: resume must fall back to the previous one.
	p := filepath.Join(dir, ckptName(15))
	b, _ := os.ReadFile(p)
	b[len(b)-1] ^= 1
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	var skipped []string
	path, applied, got, err := LatestCheckpoint(dir, func(err error) { skipped = append(skipped, err.Error()) })
	if err != nil || applied != 10 || string(got) != string(st) || filepath.Base(path) != ckptName(10) {
		t.Fatalf("latest: %s %d %v", path, applied, err)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0], "checksum") || !strings.Contains(skipped[0], ckptName(15)) {
		t.Fatalf("skipped %v", skipped)
	}
	// Truncated file.
	if err := os.WriteFile(p, b[:len(b)-5], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadCheckpoint(p); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("truncated: %v", err)
	}
	if _, _, _, err := LatestCheckpoint(t.TempDir(), nil); err == nil {
		t.Fatal("empty dir gave a checkpoint")
	}
}

func TestMetrics(t *testing.T) {
	m := Metrics(data.Classification, 2, control.EvalSums{LossSum: 2, Count: 4, Correct: 3, Confusion: []float64{2, 0, 1, 1}})
	if m["accuracy"] != 0.75 || m["loss"] != 0.5 {
		t.Fatalf("%v", m)
	}
	// class 0: tp 2 fp 1 fn 0 → 0.8; class 1: tp 1 fp 0 fn 1 → 2/3.
	if f := m["macro_f1"]; f < 0.7333 || f > 0.7334 {
		t.Fatalf("macro F1 %v", f)
	}
}

func TestExitCode(t *testing.T) {
	if ExitCode(nil) != 0 || ExitCode(badInput(os.ErrNotExist)) != 2 || ExitCode(&Error{Code: ExitDiverged, Err: os.ErrClosed}) != 3 || ExitCode(os.ErrClosed) != 1 {
		t.Fatal("exit codes")
	}
}

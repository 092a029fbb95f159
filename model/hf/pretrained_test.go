package hf_test

import (
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/safetensors"
)

// trainedCheckpoint builds a tiny BERT for task from random weights, takes
// one optimizer step on a batch (so no tensor is at its initial value) and
// saves it as ringtune does at the end of a run.
func trainedCheckpoint(t *testing.T, task data.Task, labels int) string {
	t.Helper()
	m, err := hf.Load(tinyDir(t, "bert"), hf.Options{Task: task, NumLabels: labels, Init: config.InitRandom, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := &data.Batch{Size: 2, Seq: 5, InputIDs: []int64{2, 5, 9, 11, 3, 2, 7, 7, 3, 0},
		AttentionMask: []int64{1, 1, 1, 1, 1, 1, 1, 1, 1, 0}}
	switch task {
	case data.MaskedLM:
		b.Labels = []int64{-100, 5, -100, 11, -100, -100, 7, -100, -100, -100}
	case data.TokenClassification:
		b.Labels = []int64{-100, 1, 0, 2, -100, -100, 3, 1, -100, -100}
	default:
		b.Labels = []int64{1, 0}
	}
	if err := m.SetOptimizer(hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-2, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Schedule: config.ScheduleConstant, TotalSteps: 1}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.ForwardBackward(b); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Update(0); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "ckpt")
	if err := m.Save(out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPretrainedCheckpointLoadsIntoEveryHead loads a masked-LM checkpoint
// written by ringtune, and a token-classification one, into every BERT head:
// the encoder must be bit-identical to the file, the new head initialised,
// the other head's tensors ignored, and the load report must say so.
func TestPretrainedCheckpointLoadsIntoEveryHead(t *testing.T) {
	mlm := trainedCheckpoint(t, data.MaskedLM, 0)
	pos := trainedCheckpoint(t, data.TokenClassification, 4)
	mlmHead := []string{"cls.predictions.bias", "cls.predictions.transform.LayerNorm.bias", "cls.predictions.transform.LayerNorm.weight",
		"cls.predictions.transform.dense.bias", "cls.predictions.transform.dense.weight"}
	cases := []struct {
		name     string
		ckpt     string
		task     data.Task
		labels   int
		newly    []string
		ignored  []string
		inReport string
	}{
		{"mlm into sequence classification", mlm, data.Classification, 2,
			[]string{"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}, mlmHead, "newly initialised"},
		{"mlm into regression", mlm, data.Regression, 1,
			[]string{"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}, mlmHead, "ignored"},
		{"mlm into token classification", mlm, data.TokenClassification, 5,
			[]string{"classifier.weight", "classifier.bias"}, mlmHead, "BertForTokenClassification"},
		{"mlm into mlm", mlm, data.MaskedLM, 0, nil, nil, "tensors loaded"},
		{"token classification into mlm", pos, data.MaskedLM, 0,
			[]string{"cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
				"cls.predictions.transform.LayerNorm.bias", "cls.predictions.bias"}, []string{"classifier.bias", "classifier.weight"}, "BertForMaskedLM"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, err := safetensors.Open(filepath.Join(tc.ckpt, safetensors.SingleFileName))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			m, err := hf.Load(tc.ckpt, hf.Options{Task: tc.task, NumLabels: tc.labels, Init: config.InitPretrained, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if !slices.Equal(sorted(m.NewlyInitialized), sorted(tc.newly)) {
				t.Errorf("newly initialised %v, want %v", m.NewlyInitialized, tc.newly)
			}
			if !slices.Equal(m.Ignored, tc.ignored) {
				t.Errorf("ignored %v, want %v", m.Ignored, tc.ignored)
			}
			if want := len(m.Params().Specs) - len(tc.newly); len(m.Loaded) != want {
				t.Errorf("%d tensors loaded, want %d", len(m.Loaded), want)
			}
			rep := m.LoadReport()
			if !strings.Contains(rep, tc.inReport) || !strings.Contains(rep, tc.ckpt) {
				t.Errorf("load report %q lacks %q or the directory", rep, tc.inReport)
			}
			for _, n := range tc.newly {
				if !strings.Contains(rep, n) {
					t.Errorf("load report %q does not name newly initialised %s", rep, n)
				}
			}
			flat := make([]float32, m.NumParams())
			if err := m.CopyParamsTo(flat); err != nil {
				t.Fatal(err)
			}
			got := paramsByName(m, flat)
			encoder := 0
			for _, name := range m.Loaded {
				want, err := f.Float32s(name)
				if err != nil {
					t.Fatal(err)
				}
				for i, v := range got[name] {
					if math.Float32bits(v) != math.Float32bits(want[i]) {
						t.Fatalf("%s[%d] = %v after loading, file has %v: not bit-identical", name, i, v, want[i])
					}
				}
				if strings.HasPrefix(name, "bert.") {
					encoder++
				}
			}
			if encoder < 16 {
				t.Errorf("only %d encoder tensors loaded", encoder)
			}
			for _, name := range tc.newly {
				w := got[name]
				nonzero := slices.ContainsFunc(w, func(v float32) bool { return v != 0 })
				if strings.HasSuffix(name, "dense.weight") || name == "classifier.weight" {
					if !nonzero {
						t.Errorf("new head weight %s is all zero: not initialised", name)
					}
				}
			}
		})
	}
}

// TestTokenEvalMetrics checks token accuracy and macro F1 from the
// confusion matrix, with -100 positions left out.
func TestTokenEvalMetrics(t *testing.T) {
	e := &hf.Eval{Task: data.TokenClassification, NumLabels: 3, Count: 6, LossSum: 3,
		// true row, predicted column: class 0: 2 right, 1 as 1; class 1: 1 right; class 2: 1 right, 1 as 0.
		Confusion: []int64{2, 1, 0, 0, 1, 0, 1, 0, 1}}
	mt := e.Metrics()
	if math.Abs(mt.Accuracy-4.0/6) > 1e-12 {
		t.Errorf("token accuracy %v, want 4/6", mt.Accuracy)
	}
	// F1: class 0: 2·2/(3+3)=2/3; class 1: 2·1/(1+2)=2/3; class 2: 2·1/(2+1)=2/3.
	if math.Abs(mt.MacroF1-2.0/3) > 1e-12 {
		t.Errorf("macro F1 %v, want 2/3", mt.MacroF1)
	}
	if !strings.Contains(mt.String(), "token_accuracy=") {
		t.Errorf("metrics %q do not name token accuracy", mt.String())
	}
	m := (&hf.Eval{Task: data.MaskedLM, LossSum: 6, Count: 3}).Metrics()
	if math.Abs(m.Perplexity-math.Exp(2)) > 1e-9 {
		t.Errorf("masked-LM perplexity %v, want e²", m.Perplexity)
	}
}

func sorted(v []string) []string { v = slices.Clone(v); slices.Sort(v); return v }

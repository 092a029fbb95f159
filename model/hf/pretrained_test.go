package hf_test

import (
	"encoding/json"
	"math"
	"os"
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

// withConfigKey copies checkpoint dir with config.json's key set to v (or
// removed, v nil).
func withConfigKey(t *testing.T, dir, key string, v any) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ckpt")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"config.json", safetensors.SingleFileName} {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "config.json" {
			cfg := map[string]any{}
			if err := json.Unmarshal(raw, &cfg); err != nil {
				t.Fatal(err)
			}
			cfg[key] = v
			if v == nil {
				delete(cfg, key)
			}
			if raw, err = json.Marshal(cfg); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(out, name), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestSequenceHeadRedraw loads a masked-LM checkpoint whose config.json
// carries hf.SequenceHeadRedrawKey (as scripts/pretrain.sh writes it): into
// a sequence classifier the named attention tensors are drawn afresh
// (reported as newly initialised, the same on every load with the seed, as
// data-parallel replicas need), every other tensor bit-identical to the
// file; into token classification and the masked LM everything loads; a
// saved fine-tuned model drops the key; a malformed key is an error naming
// it.
func TestSequenceHeadRedraw(t *testing.T) {
	plain := trainedCheckpoint(t, data.MaskedLM, 0)
	qk := []any{".attention.self.query.", ".attention.self.key."}
	ckpt := withConfigKey(t, plain, hf.SequenceHeadRedrawKey, qk)
	f, err := safetensors.Open(filepath.Join(ckpt, safetensors.SingleFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	load := func(task data.Task, labels int) (*hf.Model, map[string][]float32) {
		m, err := hf.Load(ckpt, hf.Options{Task: task, NumLabels: labels, Init: config.InitPretrained, Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		flat := make([]float32, m.NumParams())
		if err := m.CopyParamsTo(flat); err != nil {
			t.Fatal(err)
		}
		return m, paramsByName(m, flat)
	}
	redrawn := []string{"bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.query.bias",
		"bert.encoder.layer.0.attention.self.key.weight", "bert.encoder.layer.0.attention.self.key.bias"}
	m, got := load(data.Classification, 2)
	want := append([]string{"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}, redrawn...)
	if !slices.Equal(sorted(m.NewlyInitialized), sorted(want)) {
		t.Errorf("newly initialised %v, want %v", m.NewlyInitialized, want)
	}
	rep := m.LoadReport()
	if !slices.Equal(sorted(m.Redrawn), sorted(redrawn)) || !strings.Contains(rep, "4 of them in the checkpoint but drawn afresh") || !strings.Contains(rep, hf.SequenceHeadRedrawKey) {
		t.Errorf("redrawn %v, load report %q: want %v, counted and with the key named", m.Redrawn, rep, redrawn)
	}
	for _, n := range redrawn {
		if slices.Contains(m.Loaded, n) || !strings.Contains(rep, n) {
			t.Errorf("%s: listed as loaded, or not named in the load report %q", n, rep)
		}
		file, err := f.Float32s(n)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(n, ".weight") && slices.Equal(got[n], file) {
			t.Errorf("%s equals the checkpoint's: not drawn afresh", n)
		}
		if strings.HasSuffix(n, ".bias") && slices.ContainsFunc(got[n], func(v float32) bool { return v != 0 }) {
			t.Errorf("%s = %v: a fresh bias is zero", n, got[n])
		}
	}
	for _, n := range m.Loaded {
		file, err := f.Float32s(n)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range got[n] {
			if math.Float32bits(v) != math.Float32bits(file[i]) {
				t.Fatalf("%s[%d] = %v after loading, file has %v: not bit-identical", n, i, v, file[i])
			}
		}
	}
	if len(m.Loaded)+len(m.NewlyInitialized) != len(m.Params().Specs) {
		t.Errorf("%d loaded + %d new != %d parameters", len(m.Loaded), len(m.NewlyInitialized), len(m.Params().Specs))
	}
	_, again := load(data.Classification, 2)
	for _, n := range redrawn {
		if !slices.Equal(got[n], again[n]) {
			t.Errorf("%s differs between two loads with seed 1: replicas would disagree", n)
		}
	}
	// Regression reads [CLS] too; token classification and the masked LM
	// load the attention as it is.
	if r, _ := load(data.Regression, 1); !slices.Contains(r.NewlyInitialized, redrawn[0]) {
		t.Errorf("regression: newly initialised %v lacks %s", r.NewlyInitialized, redrawn[0])
	}
	for _, task := range []data.Task{data.TokenClassification, data.MaskedLM} {
		tm, tg := load(task, 5)
		if slices.Contains(tm.NewlyInitialized, redrawn[0]) {
			t.Errorf("%s: %s re-drawn; only sequence-level tasks re-draw", task, redrawn[0])
		}
		file, _ := f.Float32s(redrawn[0])
		if !slices.Equal(tg[redrawn[0]], file) {
			t.Errorf("%s: %s not loaded from the file", task, redrawn[0])
		}
	}
	// A model fine-tuned from it keeps its own attention.
	out := filepath.Join(t.TempDir(), "tuned")
	if err := m.Save(out); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(out, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), hf.SequenceHeadRedrawKey) {
		t.Errorf("saved config.json keeps %s: %s", hf.SequenceHeadRedrawKey, raw)
	}
	for _, bad := range []any{"query", []any{}, []any{""}, []any{3}, []any{"no.such.tensor"}} {
		_, err := hf.Load(withConfigKey(t, plain, hf.SequenceHeadRedrawKey, bad), hf.Options{Task: data.Classification, NumLabels: 2, Init: config.InitPretrained, Seed: 1})
		if err == nil || !strings.Contains(err.Error(), hf.SequenceHeadRedrawKey) || !strings.Contains(err.Error(), "config.json") {
			t.Errorf("%s = %v: error %v, want one naming config.json and the key", hf.SequenceHeadRedrawKey, bad, err)
		}
	}
}

package hf_test

import (
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/safetensors"
	"github.com/ringtune/ringtune/model/torch"
)

// tinyDir writes a config.json of a tiny model of family into a fresh
// directory.
func tinyDir(t *testing.T, family string) string {
	t.Helper()
	cfgs := map[string]map[string]any{
		"bert": {"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
			"num_attention_heads": 2, "intermediate_size": 24, "max_position_embeddings": 32, "num_labels": 3},
		"gpt2": {"model_type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32},
		"llama": {"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
			"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 24, "max_position_embeddings": 32},
	}
	dir := t.TempDir()
	raw, _ := json.Marshal(cfgs[family])
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// savedTensors builds a random model and returns its saved tensors.
func savedTensors(t *testing.T, dir string) []safetensors.Tensor {
	t.Helper()
	m, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := m.Save(out); err != nil {
		t.Fatal(err)
	}
	m.Close()
	f, err := safetensors.Open(filepath.Join(out, safetensors.SingleFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []safetensors.Tensor
	for _, n := range f.Names() {
		tt, err := f.Tensor(n)
		if err != nil {
			t.Fatal(err)
		}
		tt.Data = append([]byte(nil), tt.Data...)
		ts = append(ts, tt)
	}
	return ts
}

func TestCorruptCheckpoints(t *testing.T) {
	base := tinyDir(t, "bert")
	good := savedTensors(t, base)
	const victim = "bert.encoder.layer.0.output.dense.weight"
	edit := func(f func([]safetensors.Tensor) []safetensors.Tensor) func(string) error {
		return func(path string) error {
			ts := append([]safetensors.Tensor(nil), good...)
			return safetensors.Write(path, f(ts), nil)
		}
	}
	cases := []struct {
		name   string
		write  func(path string) error
		tensor string // the error must name it (and the file)
	}{
		{"missing tensor", edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i := range ts {
				if ts[i].Name == victim {
					return append(ts[:i], ts[i+1:]...)
				}
			}
			return ts
		}), victim},
		{"extra tensor", edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
			return append(ts, safetensors.FromFloat32("bert.encoder.layer.7.output.dense.weight", []int64{2}, []float32{1, 2}))
		}), "bert.encoder.layer.7.output.dense.weight"},
		{"wrong shape", edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
			for i := range ts {
				if ts[i].Name == victim {
					ts[i] = safetensors.FromFloat32(victim, []int64{3, 4}, make([]float32, 12))
				}
			}
			return ts
		}), victim},
		{"truncated file", func(path string) error {
			if err := edit(func(ts []safetensors.Tensor) []safetensors.Tensor { return ts })(path); err != nil {
				return err
			}
			st, err := os.Stat(path)
			if err != nil {
				return err
			}
			return os.Truncate(path, st.Size()-10)
		}, ""},
		{"bad header", func(path string) error {
			return os.WriteFile(path, append([]byte{0x10, 0, 0, 0, 0, 0, 0, 0}, []byte("{not json at all")...), 0o644)
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg, _ := os.ReadFile(filepath.Join(base, "config.json"))
			os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644)
			file := filepath.Join(dir, safetensors.SingleFileName)
			if err := tc.write(file); err != nil {
				t.Fatal(err)
			}
			m, err := hf.Load(dir, hf.Options{})
			if err == nil {
				m.Close()
				t.Fatal("loaded a corrupt checkpoint without error")
			}
			msg := err.Error()
			if !strings.Contains(msg, file) {
				t.Errorf("error does not name the file %s: %v", file, err)
			}
			if tc.tensor != "" && !strings.Contains(msg, tc.tensor) {
				t.Errorf("error does not name tensor %s: %v", tc.tensor, err)
			}
		})
	}
}

func TestLoadBaseCheckpointInitialisesHead(t *testing.T) {
	dir := tinyDir(t, "bert")
	var base []safetensors.Tensor
	for _, tt := range savedTensors(t, dir) {
		// A BertModel checkpoint: no head, no "bert." prefix.
		if strings.HasPrefix(tt.Name, "classifier.") {
			continue
		}
		tt.Name = strings.TrimPrefix(tt.Name, "bert.")
		base = append(base, tt)
	}
	if err := safetensors.Write(filepath.Join(dir, safetensors.SingleFileName), base, nil); err != nil {
		t.Fatal(err)
	}
	m, err := hf.Load(dir, hf.Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := strings.Join(m.NewlyInitialized, ","); got != "classifier.weight,classifier.bias" {
		t.Errorf("newly initialised %q, want the classifier only", got)
	}
}

func TestNoWeightsSaysWhatToDo(t *testing.T) {
	dir := tinyDir(t, "gpt2")
	_, err := hf.Load(dir, hf.Options{})
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "init: random") {
		t.Errorf("error %v should name the directory and suggest init: random", err)
	}
}

func TestBadConfigNamesKey(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"model_type":"llama","num_attention_heads":4,"num_key_value_heads":3}`), 0o644)
	_, err := hf.Load(dir, hf.Options{Init: config.InitRandom})
	if err == nil || !strings.Contains(err.Error(), "num_key_value_heads") || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("error %v should name config.json and num_key_value_heads", err)
	}
}

func TestBF16NeedsCUDA(t *testing.T) {
	_, err := hf.Load(tinyDir(t, "llama"), hf.Options{Init: config.InitRandom, Precision: config.PrecisionBF16})
	if err == nil || !strings.Contains(err.Error(), "CUDA") {
		t.Errorf("bf16 on CPU: error %v should say it needs CUDA", err)
	}
}

func TestRandomInit(t *testing.T) {
	for _, fam := range []string{"bert", "gpt2", "llama"} {
		t.Run(fam, func(t *testing.T) {
			dir := tinyDir(t, fam)
			digest := func(seed int64) string {
				m, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: seed})
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				if fam == "bert" {
					checkInit(t, m)
				}
				d, err := m.Digest()
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
			a, b, c := digest(42), digest(42), digest(43)
			if a != b {
				t.Errorf("same seed, different weights: %s vs %s", a, b)
			}
			if a == c {
				t.Errorf("seeds 42 and 43 gave the same weights")
			}
			// And in another process.
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "HF_TEST_DIGEST_DIR="+dir)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("child: %v", err)
			}
			if string(out) != a {
				t.Errorf("another process made weights %s, this one %s", out, a)
			}
		})
	}
}

// checkInit checks BERT's HF-style initialisation: N(0, 0.02) matrices with
// the padding row zeroed, zero biases, unit LayerNorm weights.
func checkInit(t *testing.T, m *hf.Model) {
	t.Helper()
	flat := make([]float32, m.NumParams())
	if err := m.CopyParamsTo(flat); err != nil {
		t.Fatal(err)
	}
	p := paramsByName(m, flat)
	w := p["bert.encoder.layer.0.intermediate.dense.weight"]
	var ss float64
	for _, v := range w {
		ss += float64(v) * float64(v)
	}
	if std := math.Sqrt(ss / float64(len(w))); math.Abs(std-0.02) > 0.003 {
		t.Errorf("weight std %.4f, want 0.02", std)
	}
	for _, v := range p["bert.embeddings.word_embeddings.weight"][:16] {
		if v != 0 {
			t.Fatalf("padding row of the word embeddings is not zero")
		}
	}
	for _, v := range p["bert.encoder.layer.0.output.dense.bias"] {
		if v != 0 {
			t.Fatalf("bias not zero")
		}
	}
	for _, v := range p["bert.embeddings.LayerNorm.weight"] {
		if v != 1 {
			t.Fatalf("LayerNorm weight not one")
		}
	}
}

func TestStateRoundTripAndEval(t *testing.T) {
	dir := tinyDir(t, "gpt2")
	m, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := &data.Batch{Size: 2, Seq: 4, InputIDs: []int64{1, 2, 3, 4, 5, 6, 0, 0},
		AttentionMask: []int64{1, 1, 1, 1, 1, 1, 0, 0}, Labels: []int64{1, 2, 3, 4, 5, 6, -100, -100}}
	if err := m.SetOptimizer(hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, TotalSteps: 10}); err != nil {
		t.Fatal(err)
	}
	_, n, err := m.ForwardBackward(b)
	if err != nil || n != 4 {
		t.Fatalf("count %d (want 3+1 next-token targets), err %v", n, err)
	}
	if _, err := m.Update(0); err != nil {
		t.Fatal(err)
	}
	st, err := m.OptimizerState()
	if err != nil {
		t.Fatal(err)
	}
	params := make([]float32, m.NumParams())
	m.CopyParamsTo(params)
	d1, _ := m.Digest()

	// A late joiner: fresh model, state copied in, same next step.
	j, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: 99})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.SetOptimizer(hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, TotalSteps: 10}); err != nil {
		t.Fatal(err)
	}
	if err := j.SetParams(params); err != nil {
		t.Fatal(err)
	}
	if err := j.SetOptimizerState(st); err != nil {
		t.Fatal(err)
	}
	if d2, _ := j.Digest(); d2 != d1 {
		t.Fatal("digest differs after SetParams")
	}
	for _, mm := range []*hf.Model{m, j} {
		mm.ZeroGrad()
		if err := mm.SetSeed(7); err != nil { // same dropout masks
			t.Fatal(err)
		}
		if _, _, err := mm.ForwardBackward(b); err != nil {
			t.Fatal(err)
		}
		if _, err := mm.Update(1); err != nil {
			t.Fatal(err)
		}
	}
	d1, _ = m.Digest()
	if d2, _ := j.Digest(); d1 != d2 {
		t.Error("joiner diverged from the original after one step")
	}
	bad := *st
	bad.Buffers = bad.Buffers[:1]
	if err := j.SetOptimizerState(&bad); err == nil {
		t.Error("optimizer state with a missing buffer accepted")
	}

	e := m.NewEval()
	if err := m.EvalBatch(e, b); err != nil {
		t.Fatal(err)
	}
	mt := e.Metrics()
	if mt.Count != 4 || math.Abs(mt.Perplexity-math.Exp(mt.Loss)) > 1e-9 || mt.Loss < math.Log(50)-1 {
		t.Errorf("metrics %+v: want 4 tokens, loss near ln(50) for a random model, perplexity exp(loss)", mt)
	}
}

func TestClassificationMetrics(t *testing.T) {
	e := &hf.Eval{Task: data.Classification, NumLabels: 3,
		// true 0: 2 right, 1 as 1; true 1: 1 right; true 2: none; predicted 2 once (true 1).
		Confusion: []int64{2, 1, 0, 0, 1, 1, 0, 0, 0}, Count: 5, LossSum: 5}
	mt := e.Metrics()
	// F1: class0 2·2/(3+2)=0.8, class1 2·1/(2+2)=0.5, class2 0 (predicted, no support).
	if math.Abs(mt.Accuracy-0.6) > 1e-12 || math.Abs(mt.MacroF1-(0.8+0.5+0)/3) > 1e-12 {
		t.Errorf("accuracy %v macro-F1 %v", mt.Accuracy, mt.MacroF1)
	}
}

var _ = torch.CPU

// TestStepEqualsSeparatePasses: the fused AdamW step (scale, update, zero in
// one pass) gives the parameters, moments and norm of ScaleGrads + Update +
// ZeroGrad to float tolerance, with weight decay and warm-up, over steps.
func TestStepEqualsSeparatePasses(t *testing.T) {
	dir := tinyDir(t, "bert")
	oc := hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-2, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, WeightDecay: 0.1,
		Schedule: config.ScheduleLinear, WarmupSteps: 1, TotalSteps: 10}
	b := &data.Batch{Size: 2, Seq: 4, InputIDs: []int64{1, 2, 3, 4, 5, 6, 0, 0},
		AttentionMask: []int64{1, 1, 1, 1, 1, 1, 0, 0}, Labels: []int64{1, 0}}
	var models [2]*hf.Model
	for i := range models {
		m, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: 5, Task: data.Classification, NumLabels: 3})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.SetOptimizer(oc); err != nil {
			t.Fatal(err)
		}
		models[i] = m
	}
	for step := 0; step < 3; step++ {
		var norms [2]float64
		for i, m := range models {
			if err := m.SetSeed(int64(step)); err != nil { // same dropout masks
				t.Fatal(err)
			}
			if _, _, err := m.ForwardBackward(b); err != nil {
				t.Fatal(err)
			}
			var u hf.UpdateInfo
			var err error
			if i == 0 {
				u, err = m.Step(step, 0.5)
			} else {
				if err = m.ScaleGrads(0.5); err == nil {
					if u, err = m.Update(step); err == nil {
						err = m.ZeroGrad()
					}
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			norms[i] = u.GradNorm
			for _, g := range m.GradSlice() {
				if g != 0 {
					t.Fatalf("step %d, model %d: gradient not zeroed", step, i)
				}
			}
		}
		if d := math.Abs(norms[0] - norms[1]); d > 1e-5*norms[1] || norms[1] == 0 {
			t.Errorf("step %d: gradient norm %g fused, %g separate", step, norms[0], norms[1])
		}
		var a, c [2][]float32
		for i, m := range models {
			a[i] = make([]float32, m.NumParams())
			if err := m.CopyParamsTo(a[i]); err != nil {
				t.Fatal(err)
			}
			st, err := m.OptimizerState()
			if err != nil {
				t.Fatal(err)
			}
			c[i] = append(st.Buffers[0], st.Buffers[1]...)
		}
		for _, pair := range [][2][]float32{a, c} {
			for k := range pair[0] {
				x, y := float64(pair[0][k]), float64(pair[1][k])
				if math.Abs(x-y) > 1e-5*max(1, math.Abs(y)) {
					t.Fatalf("step %d, element %d: fused %g, separate %g", step, k, x, y)
				}
			}
		}
	}
}

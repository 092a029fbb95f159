package hf_test

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/safetensors"
	"github.com/ringtune/ringtune/model/torch"
)

const python = "/usr/bin/python3"

var (
	torchOnce sync.Once
	torchErr  error
)

// oracle runs testdata/hf_ref.py, skipping the test when the interpreter
// has no torch.
func oracle(t *testing.T, args ...string) []byte {
	t.Helper()
	torchOnce.Do(func() {
		if out, err := exec.Command(python, "-c", "import torch, numpy").CombinedOutput(); err != nil {
			torchErr = fmt.Errorf("%v: %s", err, out)
		}
	})
	if torchErr != nil {
		t.Skipf("PyTorch oracle unavailable: %s cannot import torch and numpy (%v); install python3-torch", python, torchErr)
	}
	cmd := exec.Command(python, append([]string{"testdata/hf_ref.py"}, args...)...)
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hf_ref.py %v: %v\n%s", args, err, stderr.String())
	}
	return out
}

func zero() *float64 { z := 0.0; return &z }

type refBatch struct {
	IDs     [][]int64       `json:"ids"`
	Mask    [][]int64       `json:"mask"`
	Types   [][]int64       `json:"types"`
	Labels  json.RawMessage `json:"labels"`
	Targets []float32       `json:"targets"`
}

func readBatch(t *testing.T, dir string, task data.Task) *data.Batch {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "batch.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rb refBatch
	if err := json.Unmarshal(raw, &rb); err != nil {
		t.Fatal(err)
	}
	b := &data.Batch{Size: len(rb.IDs), Seq: len(rb.IDs[0]), Targets: rb.Targets}
	for i := range rb.IDs {
		b.InputIDs = append(b.InputIDs, rb.IDs[i]...)
		b.AttentionMask = append(b.AttentionMask, rb.Mask[i]...)
		b.TokenTypeIDs = append(b.TokenTypeIDs, rb.Types[i]...)
	}
	switch task {
	case data.Classification:
		if err := json.Unmarshal(rb.Labels, &b.Labels); err != nil {
			t.Fatal(err)
		}
	case data.CausalLM, data.MaskedLM, data.TokenClassification:
		var l [][]int64
		if err := json.Unmarshal(rb.Labels, &l); err != nil {
			t.Fatal(err)
		}
		for _, r := range l {
			b.Labels = append(b.Labels, r...)
		}
	}
	return b
}

// relErr is max|got-want| / max|want|: a tolerance relative to the
// tensor's scale, so elements near zero do not dominate.
func relErr(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var d, s float64
	for i := range got {
		d = math.Max(d, math.Abs(float64(got[i])-float64(want[i])))
		s = math.Max(s, math.Abs(float64(want[i])))
	}
	if s == 0 {
		return d
	}
	return d / s
}

const tol = 1e-5

func check(t *testing.T, what string, got, want []float32) {
	t.Helper()
	checkScaled(t, what, got, want, 0)
}

// checkScaled is check with the error measured against at least scale.
// Gradients that are analytically zero (attention key biases: softmax
// ignores a shift shared by a whole row) are rounding noise on both sides
// and are compared against the scale of the whole gradient.
func checkScaled(t *testing.T, what string, got, want []float32, scale float64) {
	t.Helper()
	var s float64
	for _, w := range want {
		s = math.Max(s, math.Abs(float64(w)))
	}
	e := relErr(got, want)
	if scale > s && s > 0 {
		e *= s / scale
	}
	if e > tol || math.IsNaN(e) {
		t.Errorf("%s: relative error %.3g > %g", what, e, tol)
	}
}

// paramsByName splits a flat block into HF-named slices.
func paramsByName(m *hf.Model, flat []float32) map[string][]float32 {
	p := m.Params()
	out := map[string][]float32{}
	for i, sp := range p.Specs {
		n := int64(1)
		for _, d := range sp.Shape {
			n *= d
		}
		out[sp.Name] = flat[p.Offsets[i]:][:n]
	}
	return out
}

func TestMatchesPyTorch(t *testing.T) {
	cases := []struct {
		family, task string
		opts         []string
	}{
		{"bert", "classification", nil},
		{"bert", "regression", []string{"--format", "bin"}},
		{"bert", "masked_lm", nil},
		{"bert", "token_classification", []string{"--format", "bin"}},
		{"gpt2", "causal_lm", []string{"--dtype", "F16"}},
		{"llama", "causal_lm", []string{"--format", "sharded", "--dtype", "BF16"}},
	}
	for _, tc := range cases {
		t.Run(tc.family+"_"+tc.task, func(t *testing.T) {
			dir := t.TempDir()
			oracle(t, append([]string{"make", tc.family, tc.task, dir}, tc.opts...)...)
			ref, err := safetensors.Load(filepath.Join(dir, "ref.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			get := func(name string) []float32 {
				v, err := ref.Float32s(name)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			task := data.Task(tc.task)
			m, err := hf.Load(dir, hf.Options{Task: task, Dropout: zero(), Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if len(m.NewlyInitialized) != 0 {
				t.Fatalf("parameters missing from a complete checkpoint: %v", m.NewlyInitialized)
			}
			b := readBatch(t, dir, task)

			// Loss and gradients of one micro-batch.
			sum, count, err := m.ForwardBackward(b)
			if err != nil {
				t.Fatal(err)
			}
			if want := get("count")[0]; float32(count) != want {
				t.Fatalf("count %d, PyTorch %v", count, want)
			}
			check(t, "loss sum", []float32{float32(sum)}, get("loss"))
			grads := paramsByName(m, m.GradSlice())
			var scale float64
			for name := range grads {
				for _, v := range get("grad/" + name) {
					scale = math.Max(scale, math.Abs(float64(v)))
				}
			}
			for name, g := range grads {
				checkScaled(t, "gradient of "+name, g, get("grad/"+name), scale)
			}
			if len(grads) != countPrefix(ref.Names(), "grad/") {
				t.Errorf("model has %d parameters, PyTorch %d", len(grads), countPrefix(ref.Names(), "grad/"))
			}

			// Logits in evaluation mode.
			out, err := m.Predict(b)
			if err != nil {
				t.Fatal(err)
			}
			wantLogits := get("logits")
			goLogits := lastLogits(t, m, b, out, wantLogits)

			// Optimizer steps on the gradients divided by the count.
			init := make([]float32, m.NumParams())
			if err := m.CopyParamsTo(init); err != nil {
				t.Fatal(err)
			}
			g := make([]float32, m.NumParams())
			copy(g, m.GradSlice())
			if err := m.ScaleGrads(1 / float64(count)); err != nil {
				t.Fatal(err)
			}
			for i, v := range m.GradSlice() {
				if want := g[i] / float32(count); math.Abs(float64(v-want)) > 1e-6*math.Abs(float64(want))+1e-12 {
					t.Fatalf("ScaleGrads: element %d is %v, want %v", i, v, want)
				}
			}
			// The optimizers get PyTorch's own gradients, divided by the
			// count as the oracle does, so that they are tested alone: an
			// AdamW update g/(|g|+eps) magnifies the rounding noise of
			// near-zero gradients.
			scaled := make([]float32, m.NumParams())
			p := m.Params()
			for i, sp := range p.Specs {
				for j, v := range get("grad/" + sp.Name) {
					scaled[p.Offsets[i]+int64(j)] = v / float32(count)
				}
			}
			for _, opt := range []hf.OptimConfig{
				{Name: config.OptimizerAdamW, LR: 1e-2, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6, WeightDecay: 0.1,
					Schedule: config.ScheduleLinear, WarmupSteps: 1, TotalSteps: 5, MaxGradNorm: 0.5},
				{Name: config.OptimizerSGD, LR: 0.05, Momentum: 0.9, WeightDecay: 0.1,
					Schedule: config.ScheduleCosine, TotalSteps: 4},
			} {
				if err := m.SetParams(init); err != nil {
					t.Fatal(err)
				}
				if err := m.SetOptimizer(opt); err != nil {
					t.Fatal(err)
				}
				for s := range 3 {
					if err := m.SetGrads(scaled); err != nil {
						t.Fatal(err)
					}
					if _, err := m.Update(s); err != nil {
						t.Fatal(err)
					}
				}
				after := make([]float32, m.NumParams())
				if err := m.CopyParamsTo(after); err != nil {
					t.Fatal(err)
				}
				for name, v := range paramsByName(m, after) {
					check(t, opt.Name+" parameters of "+name, v, get(opt.Name+"/"+name))
				}
			}

			// Saved checkpoint reloaded by PyTorch gives our logits.
			saved := filepath.Join(t.TempDir(), "saved")
			if err := m.Save(saved); err != nil {
				t.Fatal(err)
			}
			var pyLogits any
			if err := json.Unmarshal(oracle(t, "logits", saved, filepath.Join(dir, "batch.json")), &pyLogits); err != nil {
				t.Fatal(err)
			}
			out2, err := m.Predict(b)
			if err != nil {
				t.Fatal(err)
			}
			flatPy := flatten(pyLogits)
			var got []float32
			for _, r := range out2.Logits {
				got = append(got, r...)
			}
			if task == data.CausalLM {
				flatPy = pickLast(flatPy, b, m.Config().Vocab)
			}
			check(t, "logits of the saved model reloaded by PyTorch", got, flatPy)
			_ = goLogits
		})
	}
}

func countPrefix(names []string, p string) int {
	n := 0
	for _, s := range names {
		if strings.HasPrefix(s, p) {
			n++
		}
	}
	return n
}

// lastLogits compares Predict's logits with PyTorch's: all of them for a
// classifier, the next-token logits after each row's last token for an LM.
func lastLogits(t *testing.T, m *hf.Model, b *data.Batch, out *hf.Output, want []float32) []float32 {
	t.Helper()
	var got []float32
	for _, r := range out.Logits {
		got = append(got, r...)
	}
	if m.Task() == data.CausalLM {
		want = pickLast(want, b, m.Config().Vocab)
	}
	check(t, "logits", got, want)
	return got
}

func pickLast(all []float32, b *data.Batch, v int) []float32 {
	var out []float32
	for r := range b.Size {
		last := 0
		for j := range b.Seq {
			if b.AttentionMask[r*b.Seq+j] != 0 {
				last = j
			}
		}
		out = append(out, all[(r*b.Seq+last)*v:][:v]...)
	}
	return out
}

func flatten(v any) []float32 {
	switch x := v.(type) {
	case float64:
		return []float32{float32(x)}
	case []any:
		var out []float32
		for _, e := range x {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return nil
}

func TestSchedulesMatchHF(t *testing.T) {
	var want map[string][]float64
	if err := json.Unmarshal(oracle(t, "schedules"), &want); err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 {
		t.Fatal("oracle returned no schedules")
	}
	for key, lrs := range want {
		var kind string
		var warm, total int
		if _, err := fmt.Sscanf(strings.ReplaceAll(key, "/", " "), "%s %d %d", &kind, &warm, &total); err != nil {
			t.Fatal(err)
		}
		for step, w := range lrs {
			f, err := hf.LRFactor(kind, step, warm, total)
			if err != nil {
				t.Fatal(err)
			}
			if got := 0.5 * f; math.Abs(got-w) > 1e-12 {
				t.Errorf("%s step %d: lr %v, HF %v", key, step, got, w)
			}
		}
	}
	if _, err := hf.LRFactor("exponential", 5, 0, 10); err == nil || !strings.Contains(err.Error(), "exponential") {
		t.Errorf("unknown schedule: error %v should name it", err)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv("HF_TEST_DIGEST_DIR") != "" {
		// Child process of TestRandomInitAcrossProcesses.
		mod, err := hf.Load(os.Getenv("HF_TEST_DIGEST_DIR"), hf.Options{Init: config.InitRandom, Seed: 42})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		d, err := mod.Digest()
		mod.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(d)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

var _ = torch.CPU

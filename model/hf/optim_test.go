package hf_test

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/safetensors"
)

// TestStepMatchesTorchAdamW: Model.Step, the node's whole optimizer step
// (scale the summed gradients, clip, AdamW, zero the gradients; one fused
// pass on CPU), against torch.optim.AdamW after clip_grad_norm_ in PyTorch:
// several steps of a linear schedule, with weight decay on the decay prefix
// only, with clipping active, inactive and off. Parameters and both moments
// must agree to 1e-6 relative.
func TestStepMatchesTorchAdamW(t *testing.T) {
	cases := []struct {
		name              string
		maxNorm, decay    float64
		wantClipped       bool
		gradStd, countInv float64
	}{
		{name: "no clipping, decay", maxNorm: 0, decay: 0.1, gradStd: 3, countInv: 1.0 / 8},
		{name: "clipping active, decay", maxNorm: 0.5, decay: 0.1, wantClipped: true, gradStd: 3, countInv: 1.0 / 8},
		{name: "clipping inactive, no decay", maxNorm: 1e6, decay: 0, gradStd: 3, countInv: 1.0 / 8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := hf.Load(tinyDir(t, "gpt2"), hf.Options{Init: config.InitRandom, Seed: 7, Task: data.CausalLM})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			oc := hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-2, Beta1: 0.9, Beta2: 0.98, Eps: 1e-6,
				WeightDecay: tc.decay, MaxGradNorm: tc.maxNorm, Schedule: config.ScheduleLinear, WarmupSteps: 1, TotalSteps: 6}
			if err := m.SetOptimizer(oc); err != nil {
				t.Fatal(err)
			}
			n := int(m.NumParams())
			p0 := make([]float32, n)
			if err := m.CopyParamsTo(p0); err != nil {
				t.Fatal(err)
			}
			in := []safetensors.Tensor{safetensors.FromFloat32("p", []int64{int64(n)}, p0)}
			rng := rand.New(rand.NewPCG(3, 4))
			const steps = 4
			for k := range steps {
				g := make([]float32, n)
				for i := range g {
					g[i] = float32(rng.NormFloat64() * tc.gradStd)
				}
				in = append(in, safetensors.FromFloat32(fmt.Sprintf("g%d", k), []int64{int64(n)}, g))
				if err := m.SetGrads(g); err != nil {
					t.Fatal(err)
				}
				u, err := m.Step(k, tc.countInv)
				if err != nil {
					t.Fatal(err)
				}
				var want float64
				for _, x := range g {
					y := float64(x * float32(tc.countInv))
					want += y * y
				}
				if want = math.Sqrt(want); math.Abs(u.GradNorm-want) > 1e-6*want {
					t.Errorf("step %d: gradient norm %v, want %v", k, u.GradNorm, want)
				}
				if clipped := tc.maxNorm > 0 && u.GradNorm > tc.maxNorm; clipped != tc.wantClipped {
					t.Fatalf("step %d: norm %v against max %v: the case does not test what it says", k, u.GradNorm, tc.maxNorm)
				}
				for i, x := range m.GradSlice() {
					if x != 0 {
						t.Fatalf("step %d: gradient %d is %v after Step, want 0", k, i, x)
					}
				}
			}
			dir := t.TempDir()
			if err := safetensors.Write(filepath.Join(dir, "in.safetensors"), in, nil); err != nil {
				t.Fatal(err)
			}
			args, _ := json.Marshal(map[string]any{"decay_numel": m.Params().DecayNumel, "scale": tc.countInv,
				"max_norm": tc.maxNorm, "lr": oc.LR, "betas": []float64{oc.Beta1, oc.Beta2}, "eps": oc.Eps,
				"weight_decay": tc.decay, "warmup": oc.WarmupSteps, "total": oc.TotalSteps})
			oracle(t, "adamw", filepath.Join(dir, "in.safetensors"), filepath.Join(dir, "out.safetensors"), string(args))
			ref, err := safetensors.Load(filepath.Join(dir, "out.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			got := make([]float32, n)
			if err := m.CopyParamsTo(got); err != nil {
				t.Fatal(err)
			}
			st, err := m.OptimizerState()
			if err != nil {
				t.Fatal(err)
			}
			// Per parameter, the largest difference over the largest
			// value (relErr): an element near 0 (a bias that started at 0,
			// a moment whose steps' gradients cancel) is a sum of terms
			// much larger than itself, and its rounding error is relative
			// to those.
			for _, c := range []struct {
				name string
				got  []float32
			}{{"p", got}, {"exp_avg", st.Buffers[0]}, {"exp_avg_sq", st.Buffers[1]}} {
				want, err := ref.Float32s(c.name)
				if err != nil {
					t.Fatal(err)
				}
				if len(want) != n {
					t.Fatalf("%s: PyTorch has %d elements, the model %d", c.name, len(want), n)
				}
				wantBy, worst := paramsByName(m, want), 0.0
				for name, g := range paramsByName(m, c.got) {
					e := relErr(g, wantBy[name])
					if !(e <= 1e-6) {
						t.Errorf("%s of %s after %d steps: relative error %.2g > 1e-6", c.name, name, steps, e)
					}
					worst = math.Max(worst, e)
				}
				t.Logf("%s: largest relative error %.2g", c.name, worst)
			}
			if st.Step != steps {
				t.Errorf("optimizer step count %d, want %d", st.Step, steps)
			}
		})
	}
}

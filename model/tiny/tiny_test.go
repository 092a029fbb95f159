package tiny_test

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/ringtune/ringtune/model/tiny"
	"github.com/ringtune/ringtune/model/torch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const python = "/usr/bin/python3"

func needTorch(t *testing.T) {
	t.Helper()
	if err := exec.Command(python, "-c", "import torch").Run(); err != nil {
		t.Skipf("%s cannot import torch (%v): install python3-torch (scripts/setup.sh does)", python, err)
	}
}

func writeFloats(t *testing.T, path string, v []float32) {
	t.Helper()
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFloats(t *testing.T, path string) []float32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMatchesPyTorch checks the loss, every parameter's gradient, and the
// parameters after three clipped AdamW steps against the same model written
// in plain PyTorch (tiny_torch.py), from the same weights and batch.
func TestMatchesPyTorch(t *testing.T) {
	needTorch(t)
	cfg := tiny.Small()
	const steps, lr, maxNorm = 3, 1e-3, 1.0
	dir := t.TempDir()
	b, seq := 4, 12

	th := torch.NewThread()
	defer th.Close()
	var loss float64
	var grads, after, before []float32
	var m *tiny.Model
	err := th.Do(func() error {
		if err := torch.SetThreads(1); err != nil {
			return err
		}
		if err := torch.Seed(7); err != nil {
			return err
		}
		var err error
		m, err = tiny.New(cfg, torch.CPU)
		if err != nil {
			return err
		}
		before = make([]float32, m.Params.Numel)
		return m.Params.CopyParamsTo(before)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer th.Do(func() error { m.Free(); return nil })

	rng := rand.New(rand.NewPCG(5, 6))
	ids := make([]int64, b*seq)
	mask := make([]int64, b*seq)
	labels := make([]int64, b)
	for i := range b {
		n := seq - 3*i // rows of different lengths exercise the padding mask
		for j := range n {
			ids[i*seq+j] = int64(rng.IntN(cfg.Vocab))
			mask[i*seq+j] = 1
		}
		labels[i] = int64(rng.IntN(cfg.Labels))
	}

	err = th.Do(func() error {
		s := torch.NewScope()
		defer s.Close()
		mk := func() (torch.Tensor, torch.Tensor, torch.Tensor) {
			return s.FromInt64(ids, int64(b), int64(seq)), s.FromInt64(mask, int64(b), int64(seq)), s.FromInt64(labels, int64(b))
		}
		i0, k0, y0 := mk()
		l := m.Loss(s, i0, k0, y0, false)
		s.Backward(l)
		loss = s.Item(l)
		if err := s.Release(); err != nil {
			return err
		}
		grads = make([]float32, m.Params.Numel)
		if err := m.Params.CopyGradTo(grads); err != nil {
			return err
		}
		opt, err := torch.NewAdamW(m.Params, torch.DefaultAdamW())
		if err != nil {
			return err
		}
		defer opt.Free()
		for range steps {
			if err := m.Params.ZeroGrad(); err != nil {
				return err
			}
			i, k, y := mk()
			s.Backward(m.Loss(s, i, k, y, true))
			if err := s.Release(); err != nil {
				return err
			}
			g := m.Params.GradSlice()
			for j := range g {
				g[j] /= float32(b)
			}
			if _, err := m.Params.ClipGradNorm(maxNorm); err != nil {
				return err
			}
			if err := opt.Apply(lr); err != nil {
				return err
			}
		}
		after = make([]float32, m.Params.Numel)
		return m.Params.CopyParamsTo(after)
	})
	if err != nil {
		t.Fatal(err)
	}

	names := make([]string, len(m.Params.Specs))
	shapes := make([][]int64, len(m.Params.Specs))
	for i, sp := range m.Params.Specs {
		names[i], shapes[i] = sp.Name, sp.Shape
	}
	writeJSON(t, filepath.Join(dir, "cfg.json"), map[string]any{
		"vocab": cfg.Vocab, "hidden": cfg.Hidden, "layers": cfg.Layers, "heads": cfg.Heads, "ffn": cfg.FFN,
		"max_len": cfg.MaxLen, "labels": cfg.Labels, "dropout": 0.0,
		"names": names, "shapes": shapes, "offsets": m.Params.Offsets,
		"lr": lr, "steps": steps, "max_norm": maxNorm,
	})
	writeJSON(t, filepath.Join(dir, "batch.json"), map[string]any{"ids": ids, "mask": mask, "labels": labels, "b": b, "t": seq})
	writeFloats(t, filepath.Join(dir, "params.bin"), before)
	cmd := exec.Command(python, "tiny_torch.py", "check", dir)
	cmd.Env = append(os.Environ(), "OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("PyTorch oracle failed: %v\n%s", err, out)
	}

	var ref struct{ Loss float64 }
	raw, err := os.ReadFile(filepath.Join(dir, "loss.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	if d := math.Abs(loss-ref.Loss) / math.Abs(ref.Loss); d > 1e-5 {
		t.Errorf("loss: Go %.9g, PyTorch %.9g (rel %.2g)", loss, ref.Loss, d)
	}
	refGrads := readFloats(t, filepath.Join(dir, "grads.bin"))
	refAfter := readFloats(t, filepath.Join(dir, "after.bin"))
	for i, sp := range m.Params.Specs {
		off, n := m.Params.Offsets[i], int64(1)
		for _, d := range sp.Shape {
			n *= d
		}
		if rel := relErr(grads[off:off+n], refGrads[off:off+n]); rel > 1e-5 {
			t.Errorf("gradient of %s: max error %.3g relative to its largest element", sp.Name, rel)
		}
		if rel := relErr(after[off:off+n], refAfter[off:off+n]); rel > 1e-5 {
			t.Errorf("%s after %d AdamW steps: max error %.3g relative to its largest element", sp.Name, steps, rel)
		}
	}
}

// relErr is max|a-b| / max|b| (0 when both are all zero).
func relErr(a, b []float32) float64 {
	var diff, scale float64
	for i := range a {
		diff = math.Max(diff, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	if scale == 0 {
		return diff
	}
	return diff / scale
}

package torch_test

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/ringtune/ringtune/model/tiny"
	"github.com/ringtune/ringtune/model/torch"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// onThread runs f on a locked torch thread with 1 intra-op thread and seed 1.
func onThread(t *testing.T, f func() error) {
	t.Helper()
	th := torch.NewThread()
	defer th.Close()
	if err := th.Do(func() error {
		if err := torch.SetThreads(1); err != nil {
			return err
		}
		if err := torch.Seed(1); err != nil {
			return err
		}
		return f()
	}); err != nil {
		t.Fatal(err)
	}
}

// batch makes a learnable task: label 1 iff token 7 occurs in the unpadded
// part of the row.
func batch(s *torch.Scope, rng *rand.Rand, b, seq, vocab int) (ids, mask, labels torch.Tensor) {
	idv := make([]int64, b*seq)
	mv := make([]int64, b*seq)
	lv := make([]int64, b)
	for i := range b {
		n := seq/2 + rng.IntN(seq/2+1)
		for j := range seq {
			if j < n {
				idv[i*seq+j] = int64(8 + rng.IntN(vocab-8))
				mv[i*seq+j] = 1
			}
		}
		if rng.IntN(2) == 1 {
			idv[i*seq+rng.IntN(n)] = 7
			lv[i] = 1
		}
	}
	return s.FromInt64(idv, int64(b), int64(seq)), s.FromInt64(mv, int64(b), int64(seq)), s.FromInt64(lv, int64(b))
}

func TestTinyModelLearns(t *testing.T) {
	onThread(t, func() error {
		cfg := tiny.Small()
		cfg.Dropout = 0.1
		m, err := tiny.New(cfg, torch.CPU)
		if err != nil {
			return err
		}
		defer m.Free()
		opt, err := torch.NewAdamW(m.Params, torch.DefaultAdamW())
		if err != nil {
			return err
		}
		defer opt.Free()
		rng := rand.New(rand.NewPCG(1, 2))
		s := torch.NewScope()
		defer s.Close()
		const bs = 16
		var first, last float64
		for step := range 150 {
			ids, mask, labels := batch(s, rng, bs, 24, cfg.Vocab)
			if err := m.Params.ZeroGrad(); err != nil {
				return err
			}
			loss := m.Loss(s, ids, mask, labels, true)
			s.Backward(loss)
			l := s.Item(loss) / bs
			if err := s.Release(); err != nil {
				return err
			}
			if _, err := m.Params.ClipGradNorm(1.0); err != nil {
				return err
			}
			// Gradients are summed over the batch, so divide like a node does.
			g := m.Params.GradSlice()
			for i := range g {
				g[i] /= bs
			}
			if err := opt.Apply(1e-3); err != nil {
				return err
			}
			if step < 10 {
				first += l / 10
			}
			if step >= 140 {
				last += l / 10
			}
		}
		t.Logf("mean loss: first 10 steps %.4f, last 10 steps %.4f", first, last)
		if !(last < 0.5*first) {
			t.Errorf("loss did not fall: first %.4f last %.4f", first, last)
		}
		// Evaluation: accuracy on fresh data well above chance.
		correct := 0
		for range 4 {
			ids, mask, labels := batch(s, rng, 32, 24, cfg.Vocab)
			pred := s.Argmax(m.Logits(s, ids, mask, false), -1)
			p := make([]int64, 32)
			l := make([]int64, 32)
			if s.Err() == nil {
				if err := pred.CopyTo(p); err != nil {
					return err
				}
				if err := labels.CopyTo(l); err != nil {
					return err
				}
			}
			for i := range p {
				if p[i] == l[i] {
					correct++
				}
			}
			if err := s.Release(); err != nil {
				return err
			}
		}
		t.Logf("eval accuracy %d/128", correct)
		if correct < 110 {
			t.Errorf("eval accuracy %d/128, want >= 110", correct)
		}
		return nil
	})
}

func TestFlatGradientsRoundTripBitExact(t *testing.T) {
	onThread(t, func() error {
		m, err := tiny.New(tiny.Small(), torch.CPU)
		if err != nil {
			return err
		}
		defer m.Free()
		s := torch.NewScope()
		defer s.Close()
		rng := rand.New(rand.NewPCG(3, 4))
		ids, mask, labels := batch(s, rng, 4, 16, m.Cfg.Vocab)
		s.Backward(m.Loss(s, ids, mask, labels, false))
		if err := s.Err(); err != nil {
			return err
		}
		n := m.Params.Numel
		alias := m.Params.GradSlice()
		if int64(len(alias)) != n {
			t.Fatalf("GradSlice has %d elements, want %d", len(alias), n)
		}
		copied := make([]float32, n)
		if err := m.Params.CopyGradTo(copied); err != nil {
			return err
		}
		nonzero := 0
		for i := range copied {
			if math.Float32bits(copied[i]) != math.Float32bits(alias[i]) {
				t.Fatalf("element %d: copy %v alias %v", i, copied[i], alias[i])
			}
			if copied[i] != 0 {
				nonzero++
			}
		}
		if nonzero < int(n)/10 {
			t.Fatalf("only %d of %d gradient elements are non-zero: backward did not reach the block", nonzero, n)
		}
		// Each parameter's .grad is the matching slice of the block.
		for i, sp := range m.Params.Specs {
			g := make([]float32, m.Params.At(i).Numel())
			gt := s.Narrow(m.Params.Grad(), 0, m.Params.Offsets[i], int64(len(g)))
			if err := s.Err(); err != nil {
				return err
			}
			if err := gt.CopyTo(g); err != nil {
				return err
			}
			for j := range g {
				if g[j] != alias[m.Params.Offsets[i]+int64(j)] {
					t.Fatalf("%s: gradient element %d differs from the block", sp.Name, j)
				}
			}
		}
		// Round trip: write every bit pattern back (including NaN payloads
		// and negative zero) and read it again.
		want := make([]float32, n)
		for i := range want {
			want[i] = math.Float32frombits(rng.Uint32())
		}
		if err := m.Params.SetGradFrom(want); err != nil {
			return err
		}
		got := make([]float32, n)
		if err := m.Params.CopyGradTo(got); err != nil {
			return err
		}
		for i := range got {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) || math.Float32bits(alias[i]) != math.Float32bits(want[i]) {
				t.Fatalf("element %d: wrote %08x, read %08x (alias %08x)", i,
					math.Float32bits(want[i]), math.Float32bits(got[i]), math.Float32bits(alias[i]))
			}
		}
		// Backward accumulates into the block in place: zero, run again, and
		// the alias sees the new gradients.
		if err := m.Params.ZeroGrad(); err != nil {
			return err
		}
		for i := range alias {
			if alias[i] != 0 {
				t.Fatalf("ZeroGrad left element %d = %v", i, alias[i])
			}
		}
		s.Backward(m.Loss(s, ids, mask, labels, false))
		if err := s.Err(); err != nil {
			return err
		}
		for i := range alias {
			if math.Float32bits(alias[i]) != math.Float32bits(copied[i]) {
				t.Fatalf("second backward: element %d = %v, first backward gave %v", i, alias[i], copied[i])
			}
		}
		// Wrong-length buffers are refused.
		if err := m.Params.CopyGradTo(make([]float32, 3)); err == nil {
			t.Error("CopyGradTo accepted a buffer of the wrong length")
		}
		return nil
	})
}

func TestSameSeedSameWeights(t *testing.T) {
	var a, b []float32
	for _, dst := range []*[]float32{&a, &b} {
		onThread(t, func() error {
			m, err := tiny.New(tiny.Small(), torch.CPU)
			if err != nil {
				return err
			}
			defer m.Free()
			*dst = make([]float32, m.Params.Numel)
			return m.Params.CopyParamsTo(*dst)
		})
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			t.Fatalf("seeded init differs at %d: %v vs %v", i, a[i], b[i])
		}
	}
}

func TestScopeErrorIsReturnedAndSticky(t *testing.T) {
	onThread(t, func() error {
		s := torch.NewScope()
		defer s.Close()
		a := s.Zeros(torch.Float32, torch.CPU, 2, 3)
		b := s.Zeros(torch.Float32, torch.CPU, 4, 5)
		c := s.Matmul(a, b)
		if c.Defined() {
			t.Error("matmul of [2,3]x[4,5] returned a tensor")
		}
		err := s.Err()
		if err == nil || !strings.Contains(err.Error(), "torch matmul") || !strings.Contains(err.Error(), "2x3") {
			t.Fatalf("want an error naming matmul and the shapes, got %v", err)
		}
		if strings.Contains(err.Error(), "Exception raised from") {
			t.Errorf("error carries the C++ backtrace: %v", err)
		}
		// Sticky: later ops do nothing.
		if d := s.Ones(torch.Float32, torch.CPU, 2); d.Defined() {
			t.Error("op after an error returned a tensor")
		}
		if got := s.Release(); got != err {
			t.Errorf("Release returned %v, want the sticky error", got)
		}
		if s.Len() != 0 {
			t.Errorf("Release left %d tensors", s.Len())
		}
		// Cleared: the scope works again.
		if d := s.Ones(torch.Float32, torch.CPU, 2); !d.Defined() || s.Err() != nil {
			t.Errorf("scope did not recover after Release: %v", s.Err())
		}
		// Bad input to a creation op.
		s.FromFloat32([]float32{1, 2, 3}, 2, 2)
		if err := s.Err(); err == nil || !strings.Contains(err.Error(), "3 elements do not fill shape [2 2]") {
			t.Errorf("want a shape error, got %v", err)
		}
		return nil
	})
}

func TestDevice(t *testing.T) {
	for _, bad := range []string{"gpu", "cuda:", "cuda:x", "cuda:-1", ""} {
		if _, err := torch.ParseDevice(bad); err == nil {
			t.Errorf("ParseDevice(%q) accepted it", bad)
		}
	}
	d, err := torch.ParseDevice("cuda:0")
	if err != nil || d.String() != "cuda:0" {
		t.Fatalf("ParseDevice(cuda:0) = %v, %v", d, err)
	}
	if torch.CUDADeviceCount() > 0 {
		t.Skip("this host has CUDA; the CPU-build message is not reachable")
	}
	err = d.Check()
	if err == nil || !strings.Contains(err.Error(), "--device cpu") || !strings.Contains(err.Error(), "cuda:0") {
		t.Fatalf("cuda:0 on a CPU build: want an error naming the device and the fix, got %v", err)
	}
	if _, err := torch.NewParams([]torch.ParamSpec{{Name: "w", Shape: []int64{2}}}, d); err == nil {
		t.Fatal("NewParams on cuda:0 succeeded on a CPU build")
	}
	if cpu, _ := torch.ParseDevice("cpu"); cpu.Check() != nil {
		t.Fatal("cpu failed its check")
	}
}

func TestParamsRejectBadSpecs(t *testing.T) {
	onThread(t, func() error {
		for _, specs := range [][]torch.ParamSpec{
			{{Name: "a", Shape: []int64{2}}, {Name: "a", Shape: []int64{3}}},
			{{Name: "b", Shape: []int64{2, 0}}},
		} {
			if p, err := torch.NewParams(specs, torch.CPU); err == nil {
				p.Free()
				t.Errorf("NewParams(%v) accepted bad specs", specs)
			}
		}
		return nil
	})
}

func TestThreadRecoversPanics(t *testing.T) {
	th := torch.NewThread()
	defer th.Close()
	err := th.Do(func() error { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("want the panic as an error, got %v", err)
	}
	if err := th.Do(func() error { return nil }); err != nil {
		t.Fatalf("thread unusable after a panic: %v", err)
	}
}

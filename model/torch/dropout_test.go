package torch

import (
	"math"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/sugarme/gotch/libtch"
)

// onTorchThread runs f on a locked torch thread with 1 intra-op thread.
func onTorchThread(t testing.TB, threads int, f func(s *Scope) error) {
	t.Helper()
	th := NewThread()
	defer th.Close()
	if err := th.Do(func() error {
		if err := SetThreads(threads); err != nil {
			return err
		}
		s := NewScope()
		defer s.Close()
		if err := f(s); err != nil {
			return err
		}
		return s.Err()
	}); err != nil {
		t.Fatal(err)
	}
}

// dropoutOnes is Dropout of a ones tensor of n elements under seed, and
// the gradient of its sum.
func dropoutOnes(t *testing.T, threads int, seed int64, n int, p float64, calls int) (outs [][]float32, grad []float32) {
	onTorchThread(t, threads, func(s *Scope) error {
		if err := Seed(seed); err != nil {
			return err
		}
		x := s.Ones(Float32, CPU, int64(n))
		s.SetRequiresGrad(x, true)
		var y Tensor
		for range calls {
			y = s.Dropout(x, p, true)
			v, err := y.Float32s()
			if err != nil {
				return err
			}
			outs = append(outs, v)
		}
		s.Backward(s.Sum(y))
		g, err := s.run("grad", func(o *libtch.Ctensor) { libtch.AtgGrad(o, x.c) }).Float32s()
		grad = g
		return err
	})
	return outs, grad
}

// TestDropoutMask: on CPU float32, Dropout keeps each element with
// probability 1-p (within 5 standard deviations over 2^20 elements) and
// scales it by PyTorch's float 1/(1-p), exactly; torch.Seed decides the
// mask (same seed, same mask, whatever the thread count), each call draws
// a new one, and backward multiplies by the same mask.
func TestDropoutMask(t *testing.T) {
	const n = 1 << 20
	for _, p := range []float64{0.1, 0.5} {
		outs, grad := dropoutOnes(t, 1, 42, n, p, 2)
		again, _ := dropoutOnes(t, 2, 42, n, p, 1)
		other, _ := dropoutOnes(t, 1, 43, n, p, 1)
		scale := float32(1) / float32(1-p)
		zeros, same, sameOther, diffCall := 0, 0, 0, 0
		for i, v := range outs[0] {
			switch v {
			case 0:
				zeros++
			case scale:
			default:
				t.Fatalf("p %v: element %d is %v, want 0 or %v", p, i, v, scale)
			}
			if v == again[0][i] {
				same++
			}
			if v == other[0][i] {
				sameOther++
			}
			if v != outs[1][i] {
				diffCall++
			}
			if grad[i] != outs[1][i] {
				t.Fatalf("p %v: gradient %v at %d, forward %v: backward used another mask", p, grad[i], i, outs[1][i])
			}
		}
		frac, sd := float64(zeros)/n, math.Sqrt(p*(1-p)/n)
		if math.Abs(frac-p) > 5*sd {
			t.Errorf("p %v: %.5f of the elements dropped (sd %.5f)", p, frac, sd)
		}
		if same != n {
			t.Errorf("p %v: seed 42 on 1 and 2 threads: %d of %d elements agree", p, same, n)
		}
		// Independent masks agree where both keep or both drop:
		// p² + (1-p)² of the time.
		want := p*p + (1-p)*(1-p)
		if f := float64(sameOther) / n; math.Abs(f-want) > 0.01 {
			t.Errorf("p %v: seeds 42 and 43 agree on %.4f of the elements, independent masks %.4f", p, f, want)
		}
		if f := float64(diffCall) / n; math.Abs(f-(1-want)) > 0.01 {
			t.Errorf("p %v: two calls differ on %.4f of the elements, independent masks %.4f", p, f, 1-want)
		}
	}
}

// TestDropoutScaleMatchesPyTorch: the kept value of a ones tensor is the
// one torch.nn.functional.dropout gives, bit for bit, and libtorch's own
// at::dropout agrees.
func TestDropoutScaleMatchesPyTorch(t *testing.T) {
	const py = "/usr/bin/python3"
	for _, p := range []float64{0.1, 0.3} {
		out, err := exec.Command(py, "-c", `import sys, torch
torch.manual_seed(0)
y = torch.nn.functional.dropout(torch.ones(4096), float(sys.argv[1]), True)
print(y.max().item().hex())`, strconv.FormatFloat(p, 'g', -1, 64)).CombinedOutput()
		if err != nil {
			t.Skipf("%s cannot run torch (install python3-torch): %v %s", py, err, out)
		}
		want, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		if err != nil {
			t.Fatalf("PyTorch printed %q: %v", out, err)
		}
		var ours, aten float32
		onTorchThread(t, 1, func(s *Scope) error {
			x := s.Ones(Float32, CPU, 4096)
			for _, c := range []struct {
				y   Tensor
				dst *float32
			}{{s.Dropout(x, p, true), &ours}, {s.dropoutATen(x, p), &aten}} {
				v, err := c.y.Float32s()
				if err != nil {
					return err
				}
				for _, e := range v {
					*c.dst = max(*c.dst, e)
				}
			}
			return nil
		})
		if ours != float32(want) || aten != float32(want) {
			t.Errorf("p %v: kept value %v (at::dropout %v), PyTorch's %v", p, ours, aten, float32(want))
		}
	}
}

// BenchmarkDropout compares Dropout with libtorch's at::dropout on the
// shapes of bench train's BERT (attention probabilities [8,4,128,128],
// hidden states [8,128,256]), forward only, 1 thread.
func BenchmarkDropout(b *testing.B) {
	for _, shape := range [][]int64{{8, 4, 128, 128}, {8, 128, 256}} {
		for _, impl := range []string{"ours", "aten"} {
			n := int64(1)
			for _, d := range shape {
				n *= d
			}
			b.Run(impl+"/"+strconv.FormatInt(n, 10), func(b *testing.B) {
				onTorchThread(b, 1, func(s *Scope) error {
					x := s.Keep(s.Randn(Float32, CPU, shape...))
					defer x.Free()
					b.ResetTimer()
					for range b.N {
						if impl == "ours" {
							s.Dropout(x, 0.1, true)
						} else {
							s.dropoutATen(x, 0.1)
						}
						if err := s.Release(); err != nil {
							return err
						}
					}
					return nil
				})
			})
		}
	}
}

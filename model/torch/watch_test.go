package torch_test

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/model/tiny"
	"github.com/ringtune/ringtune/model/torch"
)

// TestGradWatchReportsFinalGradients checks the hooks against backward
// itself: armed for the second of two accumulated passes, every parameter
// is reported exactly once, and at the moment it is reported its slice of
// the gradient block already holds the value it has when backward ends (the
// sum of both passes). The first pass, disarmed, reports nothing. The
// reports come while backward runs, head first: the classifier before the
// embeddings, which is what lets buckets of the top layers start early.
func TestGradWatchReportsFinalGradients(t *testing.T) {
	onThread(t, func() error {
		cfg := tiny.Small()
		cfg.Dropout = 0
		m, err := tiny.New(cfg, torch.CPU)
		if err != nil {
			return err
		}
		defer m.Free()
		p := m.Params
		w, err := p.Watch()
		if err != nil {
			return err
		}
		defer w.Free()
		if w.Host() != nil {
			t.Errorf("CPU watch has a host block")
		}
		rng := rand.New(rand.NewPCG(3, 4))
		s := torch.NewScope()
		defer s.Close()
		g := p.GradSlice()
		var order []int
		seen := map[int][]float32{}
		w.Arm(func(i int) { t.Errorf("disarmed pass reported parameter %d", i) })
		if err := w.Finish(false); err != nil {
			return err
		}
		ids, mask, labels := batch(s, rng, 8, 16, cfg.Vocab)
		s.Backward(m.Loss(s, ids, mask, labels, true))
		if err := s.Release(); err != nil {
			return err
		}
		w.Arm(func(i int) {
			order = append(order, i)
			lo := p.Offsets[i]
			seen[i] = slices.Clone(g[lo : lo+numel(p.Specs[i].Shape)])
		})
		ids, mask, labels = batch(s, rng, 8, 16, cfg.Vocab)
		s.Backward(m.Loss(s, ids, mask, labels, true))
		if err := s.Release(); err != nil {
			return err
		}
		inPass := len(order)
		if err := w.Finish(true); err != nil {
			return err
		}
		if len(order) != len(p.Specs) {
			t.Fatalf("%d reports for %d parameters: %v", len(order), len(p.Specs), order)
		}
		if inPass == 0 {
			t.Fatalf("no parameter reported during backward")
		}
		for i, sp := range p.Specs {
			lo := p.Offsets[i]
			if !slices.Equal(seen[i], g[lo:lo+numel(sp.Shape)]) {
				t.Errorf("%s: gradient when reported differs from the final one", sp.Name)
			}
		}
		pos := func(name string) int {
			for k, i := range order {
				if p.Specs[i].Name == name {
					return k
				}
			}
			t.Fatalf("%s never reported", name)
			return -1
		}
		if inPass != len(p.Specs) {
			t.Errorf("%d of %d parameters reported during backward (tiny uses them all)", inPass, len(p.Specs))
		}
		if !(pos("cls.weight") < pos("layer.1.ff2.weight") && pos("layer.1.ff2.weight") < pos("layer.0.ff2.weight") && pos("layer.0.ff2.weight") < pos("emb.tok")) {
			t.Errorf("reports not head first: order %v", order)
		}
		// Armed without any backward (a micro-batch without loss terms):
		// Finish(true) reports every parameter, once.
		n := 0
		w.Arm(func(int) { n++ })
		if err := w.Finish(true); err != nil {
			return err
		}
		if n != len(p.Specs) {
			t.Errorf("flush reported %d of %d parameters", n, len(p.Specs))
		}
		// A panicking callback is an error of Finish, not a crash.
		w.Arm(func(int) { panic("boom") })
		ids, mask, labels = batch(s, rng, 8, 16, cfg.Vocab)
		s.Backward(m.Loss(s, ids, mask, labels, true))
		if err := s.Release(); err != nil {
			return err
		}
		if err := w.Finish(true); err == nil || !strings.Contains(err.Error(), "boom") {
			t.Errorf("Finish after a panicking callback: %v", err)
		}
		return nil
	})
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

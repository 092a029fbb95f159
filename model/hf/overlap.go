package hf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/data"
)

// GradSegments describes the flat gradient for package bucket: one segment
// per parameter, listed in the order backward is expected to finish them,
// and seg, which maps a parameter's block index (Params().Specs) to its
// segment.
//
// Backward runs the layers in reverse, so a parameter declared later (the
// head, the top blocks) is finished earlier; the expected order is the
// reverse of the declaration order. The block keeps the decayed parameters
// first (the optimizer's weight-decay prefix), each group in declaration
// order, so the segments list each group from its end back: consecutive
// segments are then adjacent in memory and a bucket of them is one
// contiguous range, without reordering the block (which checkpoints, the
// optimizer and ZeRO slices rely on). The two groups meet only where the
// head's last decayed matrix follows the embeddings' norm, and those are
// listed far apart, so no bucket mixes the first and the last parameters
// backward finishes.
//
// The parameters declared before the first block (the embeddings: their
// names come before any ".0." of a numbered layer) are finished last, at
// the very end of backward, and get a group of their own, so that no bucket
// makes the first block's parameters wait for them. The exception is a
// split tied embedding (SetSplitEmbedding): its gradient is then only the
// output projection's, finished first, so it is listed first, in a group
// of its own; a split untied one has none and is skipped.
func (m *Model) GradSegments() (segs []bucket.Segment, seg []int) {
	decl := make(map[string]int, len(m.lay.specs))
	firstBlock := len(m.lay.specs)
	for i, sp := range m.lay.specs {
		decl[sp.Name] = i
		if firstBlock == len(m.lay.specs) && strings.Contains(sp.Name, ".0.") {
			firstBlock = i
		}
	}
	p := m.params
	seg = make([]int, len(p.Specs))
	for _, decay := range []bool{true, false} {
		for i := len(p.Specs) - 1; i >= 0; i-- {
			sp := p.Specs[i]
			if sp.Decay != decay {
				continue
			}
			seg[i] = len(segs)
			sg := bucket.Segment{
				Off: int(p.Offsets[i]), Len: int(numelOf(sp.Shape)),
				Order: len(m.lay.specs) - decl[sp.Name],
				Group: boolInt(decl[sp.Name] < firstBlock),
			}
			switch {
			case sp.Name == m.split && m.splitTied:
				// Split (rows.go): only the output projection adds into
				// it, and that is the first thing backward does. A group
				// of its own keeps it out of every other bucket.
				sg.Order, sg.Group = 0, 2
			case sp.Name == m.split:
				// Split and untied: nothing adds into it; its rows are
				// reduced instead.
				sg.Skip = true
			}
			segs = append(segs, sg)
		}
	}
	return segs, seg
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func numelOf(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// WatchGrads registers the gradient-ready hooks (torch.GradWatch) once and
// returns the host block the hooks copy into on CUDA (nil on CPU).
func (m *Model) WatchGrads() ([]float32, error) {
	err := m.do(func() error {
		if m.watch != nil {
			return nil
		}
		w, err := m.params.Watch()
		if err != nil {
			return fmt.Errorf("model %s: %w", m.dir, err)
		}
		m.watch = w
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.watch.Host(), nil
}

// ForwardBackwardReady is ForwardBackward that calls ready(i), i a
// parameter's block index, as soon as backward has finished parameter i's
// gradient (on CUDA: copied it to the host block WatchGrads returned). When
// it returns without error every parameter has been reported exactly once,
// those backward did not reach included. ready runs on the thread running
// backward and must be quick and safe for concurrent use.
func (m *Model) ForwardBackwardReady(b *data.Batch, ready func(i int)) (lossSum float64, count int, err error) {
	if m.watch == nil {
		return 0, 0, errors.New("forward/backward: gradient hooks not registered (call WatchGrads first)")
	}
	m.watch.Arm(ready)
	lossSum, count, err = m.ForwardBackward(b)
	ferr := m.do(func() error { return m.watch.Finish(err == nil) })
	if err != nil {
		return 0, 0, err
	}
	if ferr != nil {
		return 0, 0, fmt.Errorf("forward/backward: %w", ferr)
	}
	return lossSum, count, nil
}

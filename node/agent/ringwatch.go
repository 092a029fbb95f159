package agent

import (
	"context"
	"sync"
)

// ringWatch lets the session's reader goroutine cancel the all-reduce in
// flight when the coordinator aborts that step. The protocol loop is
// blocked inside the all-reduce, so it cannot read the abort itself: without
// this, survivors of a frozen or lost rank stay blocked until the ring's own
// timeout although the coordinator has already decided (issue 11, defect
// 12).
type ringWatch struct {
	mu      sync.Mutex
	gen     uint64
	step    int // the step whose all-reduce is in flight, -1 when none
	cancel  context.CancelFunc
	aborted struct {
		gen  uint64
		step int
		ok   bool
	}
}

func newRingWatch() *ringWatch { return &ringWatch{step: -1} }

// begin returns the context of step's all-reduce in generation gen; it is
// already cancelled when the abort arrived before the all-reduce began.
func (w *ringWatch) begin(gen uint64, step int) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gen, w.step, w.cancel = gen, step, cancel
	if a := w.aborted; a.ok && a.gen == gen && a.step == step {
		cancel()
	}
	return ctx
}

// end marks the all-reduce over.
func (w *ringWatch) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cancel != nil {
		w.cancel()
	}
	w.step, w.cancel = -1, nil
}

// abort records the coordinator's abort of step in generation gen and
// cancels that step's all-reduce if it is in flight.
func (w *ringWatch) abort(gen uint64, step int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.aborted.gen, w.aborted.step, w.aborted.ok = gen, step, true
	if w.cancel != nil && w.gen == gen && w.step == step {
		w.cancel()
	}
}

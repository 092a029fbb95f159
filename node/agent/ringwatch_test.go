package agent

import (
	"context"
	"errors"
	"testing"
)

// TestRingWatchCancelsAbortedStep: an abort read while a step's all-reduce
// is in flight cancels it; one read before the all-reduce begins makes it
// start cancelled; an abort of another step or generation (the same step
// redone in the next generation) cancels nothing.
func TestRingWatchCancelsAbortedStep(t *testing.T) {
	w := newRingWatch()
	ctx := w.begin(2, 5)
	w.abort(2, 4)
	w.abort(1, 5)
	if ctx.Err() != nil {
		t.Fatal("an abort of another step or generation cancelled step 5 of generation 2")
	}
	w.abort(2, 5)
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatal("the abort of the step in flight did not cancel its all-reduce")
	}
	w.end()
	if ctx := w.begin(2, 5); ctx.Err() == nil {
		t.Error("an all-reduce of a step already aborted started live")
	}
	w.end()
	if ctx := w.begin(3, 5); ctx.Err() != nil {
		t.Error("step 5 redone in generation 3 started cancelled by generation 2's abort")
	}
	w.end()
}

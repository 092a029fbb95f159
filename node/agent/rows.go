package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/data"
)

// stepRows is one step's split-embedding rows (RowSplitter): agreed on by
// every rank before the first forward, reduced after backward.
type stepRows struct {
	tr   RowSplitter
	rows []int64
	// agree is how long agreeing on the rows took: communication the step
	// waited for before its first forward.
	agree time.Duration
}

// beginRows agrees with the other ranks on the rows of the split embedding
// the step reads — the union of every rank's micro-batches' tokens, by one
// all-reduce of a per-row count (the vocabulary's length in float32: 200
// KB for GPT-2) — and hands them to the trainer. It returns nil rows when
// the trainer does not split, a ring failure as
// ringErr (the step is lost, the node is fine), and the trainer's failure
// as err.
func beginRows(ctx context.Context, sp StepSpec, batches []*data.Batch) (sr *stepRows, ringErr, err error) {
	rs, ok := sp.Trainer.(RowSplitter)
	if !ok {
		return nil, nil, nil
	}
	n := rs.SplitRows()
	if n <= 0 {
		return nil, nil, nil
	}
	start := time.Now()
	used := make([]float32, n)
	for _, b := range batches {
		rs.MarkRows(b, used)
	}
	op, err := sp.Ring.Start(ctx, used)
	if err != nil {
		return nil, fmt.Errorf("agree on the embedding rows: %w", err), nil
	}
	if err := op.Wait(); err != nil {
		return nil, fmt.Errorf("agree on the embedding rows: %w", err), nil
	}
	var rows []int64
	for i, c := range used {
		if c > 0 {
			rows = append(rows, int64(i))
		}
	}
	if err := rs.BeginRows(rows); err != nil {
		return nil, nil, fmt.Errorf("begin the step's %d embedding rows: %w", len(rows), err)
	}
	return &stepRows{tr: rs, rows: rows, agree: time.Since(start)}, nil, nil
}

// grads is the rows' gradient to all-reduce after the plan's buckets
// (bucket.Reduce.Append), nil when the step has no rows on any rank (every
// rank agreed on the same empty union, so none appends). An error is the
// trainer's.
func (sr *stepRows) grads() ([]float32, error) {
	if sr == nil || len(sr.rows) == 0 {
		return nil, nil
	}
	g, err := sr.tr.RowGradients()
	if err != nil {
		return nil, fmt.Errorf("gradients of the %d embedding rows: %w", len(sr.rows), err)
	}
	return g, nil
}

// account adds the rows' agreement to the step's communication: it ran
// before the first forward, hidden behind nothing, so it counts as exposed.
func (sr *stepRows) account(st *bucket.Stats) {
	if sr == nil {
		return
	}
	st.Comm += sr.agree
	st.Exposed += sr.agree
}

package machine

import (
	"fmt"

	"github.com/ringtune/ringtune/data"
)

// schedule is the data side of the run: each epoch's permutation and the
// ledger that puts every sample of an epoch in exactly one committed step.
// An epoch's permutation is built once, when its first step begins, and
// locating a step is arithmetic, so a step costs O(batch), not O(dataset)
// (issue 11, defect 6).
type schedule struct {
	seed     int64
	n, gb    int
	dropLast bool
	perEpoch int
	total    int

	epoch  *data.Epoch
	ledger *data.Ledger
}

func newSchedule(c Config) *schedule {
	s := &schedule{seed: c.Seed, n: c.Samples, gb: c.GlobalBatch, dropLast: c.DropLast}
	if c.DropLast {
		s.perEpoch = c.Samples / c.GlobalBatch
	} else {
		s.perEpoch = (c.Samples + c.GlobalBatch - 1) / c.GlobalBatch
	}
	s.total = s.perEpoch * c.Epochs
	if c.MaxSteps > 0 && c.MaxSteps < s.total {
		s.total = c.MaxSteps
	}
	return s
}

func (s *schedule) locate(g int) (epoch, step int) { return g / s.perEpoch, g % s.perEpoch }

// begin returns global step g's batch and marks its fresh samples in
// flight. A new epoch's ledger (or the first after a resume or rollback)
// counts the epoch's earlier steps as committed.
func (s *schedule) begin(g int) (data.StepBatch, error) {
	e, st := s.locate(g)
	if s.epoch == nil || s.epoch.Index != e {
		ep, err := data.NewEpoch(s.seed, e, s.n, s.gb, s.dropLast)
		if err != nil {
			return data.StepBatch{}, err
		}
		l, err := data.LedgerFrom(ep, s.n, st)
		if err != nil {
			return data.StepBatch{}, err
		}
		s.epoch, s.ledger = ep, l
	}
	b, err := s.epoch.Batch(st)
	if err != nil {
		return b, err
	}
	return b, s.ledger.Assign(st, b.Fresh())
}

func (s *schedule) abort(g int) error {
	_, st := s.locate(g)
	_, err := s.ledger.Return(st)
	return err
}

// commit records step g; at an epoch's end it checks that every sample of
// the epoch was committed exactly once.
func (s *schedule) commit(g int) (epochDone bool, err error) {
	_, st := s.locate(g)
	if err := s.ledger.Commit(st); err != nil {
		return false, err
	}
	if st < s.perEpoch-1 {
		return false, nil
	}
	// With drop_last the samples after the last full batch belong to no
	// step: the epoch is complete without them.
	want := s.n
	if s.dropLast {
		want = s.perEpoch * s.gb
	}
	if s.ledger.Committed() != want {
		miss := s.ledger.Missing()
		return true, fmt.Errorf("epoch %d ended with %d samples never committed (first: %v)", s.epoch.Index, len(miss), miss[:min(5, len(miss))])
	}
	return true, nil
}

// reset forgets the ledger, so that the next begin rebuilds it (after a
// rollback to a checkpoint).
func (s *schedule) reset() { s.epoch, s.ledger = nil, nil }

package coordinator

import (
	"github.com/ringtune/ringtune/data"
)

// Schedule is the shape of the run's data side: how many steps an epoch
// and the run have, and where a global step falls. The permutations and
// the sample ledger live in the protocol machine (coordinator/machine,
// schedule.go), which alone decides what a step trains on.
type Schedule struct {
	Seed        int64
	N           int
	GlobalBatch int
	DropLast    bool
	Epochs      int
	MaxSteps    int

	perEpoch int // cached StepsPerEpoch
}

// StepsPerEpoch is the number of global steps of one epoch. The settings
// are checked (and an epoch's permutation built) only the first time:
// every step locates itself with it, and rebuilding an O(dataset)
// permutation per call cost the coordinator its CPU (issue 11, defect 6).
func (s *Schedule) StepsPerEpoch() (int, error) {
	if s.perEpoch > 0 {
		return s.perEpoch, nil
	}
	ep, err := data.NewEpoch(s.Seed, 0, s.N, s.GlobalBatch, s.DropLast)
	if err != nil {
		return 0, err
	}
	s.perEpoch = ep.Steps()
	return s.perEpoch, nil
}

// Total is the number of global steps of the run.
func (s *Schedule) Total() (int, error) {
	per, err := s.StepsPerEpoch()
	if err != nil {
		return 0, err
	}
	t := per * s.Epochs
	if s.MaxSteps > 0 && s.MaxSteps < t {
		t = s.MaxSteps
	}
	return t, nil
}

// Locate maps a global step to its epoch and step in the epoch.
func (s *Schedule) Locate(global int) (epoch, step int, err error) {
	per, err := s.StepsPerEpoch()
	if err != nil {
		return 0, 0, err
	}
	return global / per, global % per, nil
}

// GlobalCount is the divisor of step's summed gradient: its number of
// samples, for causal LM its number of next-token targets (each sequence
// predicts all but its first token, less the labels set to -100 and the
// first token of each packed document; see data.Encoded.Targets), and for
// masked LM and token classification its number of labelled tokens (enc
// must be masked).
func GlobalCount(task data.Task, enc []data.Encoded, indices []int) int {
	if task == data.MaskedLM || task == data.TokenClassification {
		n := 0
		for _, i := range indices {
			for _, l := range enc[i].Labels {
				if l != data.IgnoreIndex {
					n++
				}
			}
		}
		return n
	}
	if task != data.CausalLM {
		return len(indices)
	}
	n := 0
	for _, i := range indices {
		n += enc[i].Targets()
	}
	return n
}

// RankBatches collates rank's share of indices in a world of size world into
// micro-batches.
func RankBatches(enc []data.Encoded, indices []int, world, rank, micro int, task data.Task, pad int) ([]*data.Batch, error) {
	share, err := data.Shard(indices, world, rank)
	if err != nil {
		return nil, err
	}
	mbs, err := data.MicroBatches(share, micro)
	if err != nil {
		return nil, err
	}
	out := make([]*data.Batch, 0, len(mbs))
	for _, mb := range mbs {
		items := make([]data.Encoded, len(mb))
		for i, k := range mb {
			items[i] = enc[k]
		}
		b, err := data.Collate(items, task, pad)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

package agent

import (
	"context"
	"fmt"
	"math"

	"github.com/ringtune/ringtune/allreduce"
)

// ShardTrainer is a Trainer that can shard AdamW's moments over the ring
// (train.shard_optimizer zero1, ZeRO-1). Rank r of a ring of size ranks
// owns the slice allreduce.Slice(n, size, r) of the flat block: it keeps
// that slice's moments, and a buddy copy of its left neighbour's
// (allreduce.Slice(n, size, r-1)), so each slice lives on two ranks.
//
// A step then runs: Accumulate; a reduce-scatter with the buddy hop of
// Gradients() (KindReduceScatterBuddy: this rank ends with the summed
// gradient of both slices it holds); at the commit SliceSumSq, an exchange
// of the slices' sums of squares for the global norm, ApplyShard, and an
// all-gather of Params() in float32 (ShardedApply does all of it).
type ShardTrainer interface {
	Trainer
	// Reshard sets the ring layout: this rank's slices for rank of size.
	// The moments of the new slices start at zero.
	Reshard(rank, size int) error
	// SliceSumSq is Σ (g/globalCount)² over this rank's own slice of the
	// reduced gradient.
	SliceSumSq(globalCount int) (float64, error)
	// ApplyShard updates both slices this rank holds, like Apply, with the
	// gradient clipped to the global norm sqrt(sumsq).
	ApplyShard(step, globalCount int, sumsq float64) error
	// Params is the flat parameter block for the all-gather: it must stay
	// valid until ParamsGathered; ParamsGathered makes the gathered values
	// the model's (a no-op where Params aliases the model's memory).
	Params() ([]float32, error)
	ParamsGathered() error
	// OptimizerBytes is the memory the optimizer's state holds on this rank.
	OptimizerBytes() int64
}

// GlobalSumSq adds the ranks' sums of squares of their own slices, the same
// value on every rank: each rank puts its value as two float32 (the
// rounded value and its remainder, so nothing of the float64 is lost
// beyond 2^-48 relative) into its own slot, an all-gather in float32
// spreads the slots, and every rank adds them in rank order in float64.
func GlobalSumSq(ctx context.Context, ring *allreduce.Ring, own float64) (float64, error) {
	n := ring.Size()
	buf := make([]float32, 2*n)
	lo, _ := allreduce.Slice(2*n, n, ring.Rank())
	hi := float32(own)
	buf[lo], buf[lo+1] = hi, float32(own-float64(hi))
	if err := ring.AllGather(ctx, buf); err != nil {
		return 0, fmt.Errorf("global gradient norm: %w", err)
	}
	var sum float64
	for r := range n {
		lo, _ := allreduce.Slice(2*n, n, r)
		sum += float64(buf[lo]) + float64(buf[lo+1])
	}
	if math.IsNaN(sum) || sum < 0 {
		return sum, fmt.Errorf("global gradient norm: sum of squares %v", sum)
	}
	return sum, nil
}

// ShardedReduce is the communication of a zero1 step before its commit:
// the reduce-scatter, with the buddy hop, of the gradients.
func ShardedReduce(ctx context.Context, ring *allreduce.Ring, grads []float32) error {
	op, err := ring.StartKind(ctx, allreduce.KindReduceScatterBuddy, grads)
	if err != nil {
		return err
	}
	return op.Wait()
}

// ShardedApply is a committed zero1 step on this rank: the global norm
// from the slices, the update of this rank's slices, the all-gather of the
// parameters. An error after the update leaves the parameters partly
// gathered; the caller must treat its state as lost.
func ShardedApply(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, step, globalCount int) error {
	own, err := tr.SliceSumSq(globalCount)
	if err != nil {
		return err
	}
	sumsq, err := GlobalSumSq(ctx, ring, own)
	if err != nil {
		return err
	}
	if err := tr.ApplyShard(step, globalCount, sumsq); err != nil {
		return err
	}
	p, err := tr.Params()
	if err != nil {
		return err
	}
	if err := ring.AllGather(ctx, p); err != nil {
		return fmt.Errorf("all-gather of the parameters: %w", err)
	}
	return tr.ParamsGathered()
}

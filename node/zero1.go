package node

import (
	"fmt"
	"io"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/model/torch"
)

// The zero1 half of Trainer (agent.ShardTrainer): see agent.ShardTrainer
// for the step's order.

// shardSlices are rank's own slice and its buddy copy of rank-1's slice of
// an n-element block in a ring of size ranks (allreduce.Slice's split).
// Before the first generation (size 0) it holds nothing.
func shardSlices(n int64, rank, size int) (own, buddy torch.Range) {
	if size <= 0 {
		return torch.Range{}, torch.Range{}
	}
	lo, hi := allreduce.Slice(int(n), size, rank)
	blo, bhi := allreduce.Slice(int(n), size, rank-1)
	if size == 1 {
		blo, bhi = 0, 0 // one rank: nobody to be a buddy of
	}
	return torch.Range{Lo: int64(lo), Hi: int64(hi)}, torch.Range{Lo: int64(blo), Hi: int64(bhi)}
}

// Reshard implements agent.ShardTrainer: fresh, zeroed moments for rank's
// slices. It keeps nothing of the old slices' moments (the agent decides
// what a layout change does to the state).
func (t *Trainer) Reshard(rank, size int) error {
	if !t.zero1 {
		return fmt.Errorf("reshard: train.shard_optimizer is not zero1")
	}
	own, buddy := shardSlices(t.m.NumParams(), rank, size)
	if own == t.own && buddy == t.buddy && t.m.Shard() != nil {
		return nil
	}
	oc := t.m.OptimConfig()
	if err := t.m.SetShardedOptimizer(oc, []torch.Range{own, buddy}); err != nil {
		return fmt.Errorf("reshard to rank %d of %d: %w", rank, size, err)
	}
	t.own, t.buddy = own, buddy
	return nil
}

// SliceSumSq implements agent.ShardTrainer.
func (t *Trainer) SliceSumSq(globalCount int) (float64, error) {
	if globalCount <= 0 {
		return 0, fmt.Errorf("gradient norm: global count %d is not positive", globalCount)
	}
	if t.host != nil {
		// CUDA: the reduced gradient is in the host buffer.
		if err := t.m.SetGrads(t.host); err != nil {
			return 0, err
		}
		if t.rowHost != nil {
			if err := t.m.SetRowGrads(t.rowHost); err != nil {
				return 0, err
			}
			t.rowHost = nil
		}
	}
	// The split embedding's all-reduced rows join the reduce-scattered
	// head part: right in this rank's slices, which is all the update and
	// the norm read (the rest of the block holds partial sums).
	if err := t.m.FoldRows(); err != nil {
		return 0, err
	}
	return t.m.ShardSumSq(t.own, 1/float64(globalCount))
}

// ApplyShard implements agent.ShardTrainer.
func (t *Trainer) ApplyShard(step, globalCount int, sumsq float64) error {
	if globalCount <= 0 {
		return fmt.Errorf("apply step %d: global count %d is not positive", step, globalCount)
	}
	clip := torch.ClipCoef(sumsq, t.maxGradNorm)
	if _, err := t.m.ShardStep(step, 1/float64(globalCount), clip); err != nil {
		return fmt.Errorf("apply step %d: %w", step, err)
	}
	return nil
}

// Params implements agent.ShardTrainer: on CPU the model's own block.
func (t *Trainer) Params() ([]float32, error) {
	if t.params == nil {
		return t.m.Params().ParamSlice(), nil
	}
	if err := t.m.CopyParamsTo(t.params); err != nil {
		return nil, err
	}
	return t.params, nil
}

// ParamsGathered implements agent.ShardTrainer.
func (t *Trainer) ParamsGathered() error {
	if t.params == nil {
		return nil
	}
	return t.m.SetParams(t.params)
}

// OptimizerBytes implements agent.ShardTrainer.
func (t *Trainer) OptimizerBytes() int64 {
	if s := t.m.Shard(); s != nil {
		return s.Bytes()
	}
	n := t.m.NumParams()
	if t.optim == "sgd" {
		return 4 * n
	}
	return 8 * n
}

// writeShardState is WriteState under zero1. A rank holds the moments of
// two slices only, and the full state must be assembled from every rank's
// slice, which is not built yet: it fails with a message saying so, rather
// than write a state whose moments are partly zero. (The coordinator then
// skips the checkpoint with a warning, and a stale rank cannot pull.)
func (t *Trainer) writeShardState(io.Writer) error {
	return fmt.Errorf("write state: train.shard_optimizer is zero1 and this rank holds AdamW's moments of [%d,%d) and [%d,%d) only; assembling the full state from the ranks' slices is not implemented yet (use shard_optimizer: none for runs that need checkpoints or late joiners)",
		t.own.Lo, t.own.Hi, t.buddy.Lo, t.buddy.Hi)
}

// readShardState is ReadState under zero1: the parameters in full, and of
// each moment block only the parts in this rank's slices (the rest is read
// and dropped), so a full state, written under none, loads into a sharded
// rank.
func (t *Trainer) readShardState(r io.Reader, np, no, steps int) error {
	n := int(t.m.NumParams())
	if np != n || no != 2*n {
		return fmt.Errorf("read state: %d parameters and %d optimizer values, the model has %d parameters and adamw needs %d", np, no, n, 2*n)
	}
	p := t.m.Params().ParamSlice()
	if p == nil {
		p = make([]float32, n)
	}
	if err := control.ReadFloat32s(r, p); err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	if t.params != nil || t.host != nil { // CUDA: through the host copy
		if err := t.m.SetParams(p); err != nil {
			return err
		}
	}
	slices := []torch.Range{t.own, t.buddy}
	// moments[k][i]: block k (first, second moment) of slice i.
	var moments [2][2][]float32
	for k := range 2 {
		for i, s := range slices {
			moments[k][i] = make([]float32, s.Len())
		}
		buf := make([]float32, min(n, 1<<20))
		for off := 0; off < n; off += len(buf) {
			piece := buf[:min(len(buf), n-off)]
			if err := control.ReadFloat32s(r, piece); err != nil {
				return fmt.Errorf("read state: %w", err)
			}
			for i, s := range slices {
				lo, hi := max(int(s.Lo), off), min(int(s.Hi), off+len(piece))
				if lo < hi {
					copy(moments[k][i][lo-int(s.Lo):], piece[lo-off:hi-off])
				}
			}
		}
	}
	for i := range slices {
		if err := t.m.SetShardMoments(i, moments[0][i], moments[1][i], int64(steps)); err != nil {
			return fmt.Errorf("read state: %w", err)
		}
	}
	return nil
}

// Layout implements agent.ShardTrainer.
func (t *Trainer) Layout() (own, buddy [2]int) {
	return [2]int{int(t.own.Lo), int(t.own.Hi)}, [2]int{int(t.buddy.Lo), int(t.buddy.Hi)}
}

// HeldMoments implements agent.ShardTrainer: both slices' moments,
// libtorch's own memory on CPU (no copy: a re-slice must not double the
// state it holds), host copies on CUDA.
func (t *Trainer) HeldMoments() (ownM, ownV, budM, budV []float32, err error) {
	var b [4][]float32
	for i := range 4 {
		if b[i], err = t.m.ShardMomentsHost(i/2, i%2); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	return b[0], b[1], b[2], b[3], nil
}

// SetHeldMoments implements agent.ShardTrainer.
func (t *Trainer) SetHeldMoments(ownM, ownV, budM, budV []float32, step int64) error {
	if err := t.m.SetShardMoments(0, ownM, ownV, step); err != nil {
		return err
	}
	return t.m.SetShardMoments(1, budM, budV, step)
}

// NumParams implements agent.ShardTrainer.
func (t *Trainer) NumParams() int { return int(t.m.NumParams()) }

// WriteHeld implements agent.ShardTrainer.
func (t *Trainer) WriteHeld(w io.Writer, buddy bool, block int) error {
	i := 0
	if buddy {
		i = 1
	}
	src, err := t.m.ShardMomentsHost(i, block)
	if err != nil {
		return err
	}
	return control.WriteFloat32s(w, src)
}

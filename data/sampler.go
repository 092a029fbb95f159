package data

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// Permutation returns the order of an epoch's n samples: a Fisher–Yates
// shuffle driven by math/rand/v2's PCG seeded with (seed, epoch). It is not
// torch's generator, but it is fixed: the same arguments give the same order
// on every machine and Go version that keeps PCG and Perm stable (Go 1
// compatibility promises both), and epochs differ from one another.
func Permutation(seed int64, epoch, n int) []int {
	r := rand.New(rand.NewPCG(uint64(seed), uint64(epoch)))
	return r.Perm(n)
}

// Epoch splits one epoch's permutation into global batches, the unit of an
// optimizer step, independently of the world size: the samples of step s are
// the same whether 1 or 8 ranks share them, so a world that changes mid-epoch
// changes only who computes what, not the update.
//
// As torch's DistributedSampler, a short last batch is dropped (DropLast) or
// filled by repeating samples from the start of the permutation, so every
// step has exactly GlobalBatch samples.
type Epoch struct {
	Seed        int64
	Index       int // epoch number, 0-based
	N           int // dataset size
	GlobalBatch int
	DropLast    bool
	perm        []int
}

// NewEpoch plans epoch index of a dataset of n samples.
func NewEpoch(seed int64, index, n, globalBatch int, dropLast bool) (*Epoch, error) {
	if n <= 0 {
		return nil, fmt.Errorf("sampler: dataset is empty")
	}
	if globalBatch <= 0 {
		return nil, fmt.Errorf("sampler: global batch must be > 0, got %d", globalBatch)
	}
	if dropLast && n < globalBatch {
		return nil, fmt.Errorf("sampler: drop_last with %d samples and global batch %d leaves no step; lower train.global_batch or set train.drop_last false", n, globalBatch)
	}
	return &Epoch{Seed: seed, Index: index, N: n, GlobalBatch: globalBatch, DropLast: dropLast, perm: Permutation(seed, index, n)}, nil
}

// Steps is the number of global steps in the epoch.
func (e *Epoch) Steps() int {
	if e.DropLast {
		return e.N / e.GlobalBatch
	}
	return (e.N + e.GlobalBatch - 1) / e.GlobalBatch
}

// StepBatch is the global batch of one step.
type StepBatch struct {
	Step    int
	Indices []int // dataset indices, len = GlobalBatch
	// Padding counts the trailing Indices that repeat samples already in an
	// earlier step of the epoch (only in the last step, without drop_last).
	// They are trained on, but belong to no ledger.
	Padding int
}

// Batch returns the global batch of step s, 0 <= s < Steps().
func (e *Epoch) Batch(s int) (StepBatch, error) {
	if s < 0 || s >= e.Steps() {
		return StepBatch{}, fmt.Errorf("sampler: step %d out of range [0, %d) in epoch %d", s, e.Steps(), e.Index)
	}
	lo, hi := s*e.GlobalBatch, (s+1)*e.GlobalBatch
	b := StepBatch{Step: s, Indices: slices.Clone(e.perm[lo:min(hi, e.N)])}
	for i := 0; len(b.Indices) < e.GlobalBatch; i++ {
		b.Indices = append(b.Indices, e.perm[i%e.N])
		b.Padding++
	}
	return b, nil
}

// Fresh returns the indices of the batch that are not padding.
func (b StepBatch) Fresh() []int { return b.Indices[:len(b.Indices)-b.Padding] }

// Shard returns rank's share of a global batch in a world of size world:
// positions rank, rank+world, rank+2·world, … — DistributedSampler's
// strided split applied to one batch. The first len(batch)%world ranks get
// one sample more; a rank beyond len(batch) gets none.
func Shard(batch []int, world, rank int) ([]int, error) {
	if world <= 0 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("sampler: rank %d not in world of size %d", rank, world)
	}
	var out []int
	for i := rank; i < len(batch); i += world {
		out = append(out, batch[i])
	}
	return out, nil
}

// MicroBatches cuts a rank's share into chunks of at most micro samples, the
// forward/backward passes whose gradients the rank accumulates. Its length is
// the accumulation count, ceil(len(share)/micro).
func MicroBatches(share []int, micro int) ([][]int, error) {
	if micro <= 0 {
		return nil, fmt.Errorf("sampler: micro batch must be > 0, got %d", micro)
	}
	var out [][]int
	for lo := 0; lo < len(share); lo += micro {
		out = append(out, share[lo:min(lo+micro, len(share))])
	}
	return out, nil
}

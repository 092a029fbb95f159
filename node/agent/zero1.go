package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
)

// ShardTrainer is a Trainer that can shard AdamW's moments over the ring
// (train.shard_optimizer zero1, ZeRO-1). Rank r of a ring of size ranks
// owns the slice allreduce.Slice(n, size, r) of the flat block: it keeps
// that slice's moments, and a buddy copy of its left neighbour's
// (allreduce.Slice(n, size, r-1)), so each slice lives on two ranks.
//
// A step then runs: Accumulate; a reduce-scatter with the buddy hop of
// Gradients() (KindReduceScatterBuddy: this rank ends with the summed
// gradient of both slices it holds), whole or bucket by bucket as windows
// of the block (RunStep, overlapped with backward); SliceSumSq and an
// exchange of the slices' sums of squares for the global norm
// (ShardedSumSq); at the commit ApplyShard and an all-gather of Params()
// in float32 (ShardedApply).
type ShardTrainer interface {
	Trainer
	// Reshard sets the ring layout: this rank's slices for rank of size.
	// The moments of the new slices start at zero.
	Reshard(rank, size int) error
	// SliceSumSq is Σ (g/globalCount)² over this rank's own slice of the
	// reduced gradient. A RowSplitter first folds the step's all-reduced
	// rows into the gradient (once per step).
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
	// Layout is the element ranges [lo, hi) of the own and buddy slices
	// (empty before the first Reshard).
	Layout() (own, buddy [2]int)
	// HeldMoments returns both slices' first and second moments, as
	// copies or as views of the trainer's memory valid until the next
	// Reshard or SetHeldMoments (read them only).
	HeldMoments() (ownM, ownV, budM, budV []float32, err error)
	// SetHeldMoments overwrites them and the optimizer's step count.
	SetHeldMoments(ownM, ownV, budM, budV []float32, step int64) error
	// NumParams is the length of the flat block.
	NumParams() int
	// WriteHeld writes moment block (0 first, 1 second) of the own (or
	// buddy) slice to w as little-endian float32, without a copy of its
	// size where the device allows.
	WriteHeld(w io.Writer, buddy bool, block int) error
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
// the reduce-scatter, with the buddy hop, of grads (this rank ends with the
// summed gradient of its own slice and of its buddy's), then the global sum
// of squares of the summed gradient, unscaled, from the ranks' own slices.
// Both happen before the rank reports the step reduced, so that after the
// commit only the all-gather of the parameters is left to fail.
func ShardedReduce(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, grads []float32) (sumsq float64, err error) {
	op, err := ring.StartKind(ctx, allreduce.KindReduceScatterBuddy, grads)
	if err != nil {
		return 0, err
	}
	if err := op.Wait(); err != nil {
		return 0, err
	}
	return ShardedSumSq(ctx, ring, tr)
}

// ShardedSumSq is the end of ShardedReduce, once the gradient is
// reduce-scattered (whole, or bucket by bucket as RunStep does): the
// global sum of squares, unscaled, of the summed gradient, from the ranks'
// own slices.
func ShardedSumSq(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer) (sumsq float64, err error) {
	own, err := tr.SliceSumSq(1)
	if err != nil {
		return 0, err
	}
	return GlobalSumSq(ctx, ring, own)
}

// ErrGather marks a failed all-gather of the parameters after a committed
// zero1 update: this rank's own and buddy slices (parameters and moments)
// hold the committed step, the rest of its parameters may not. The state is
// whole again once a new generation has re-sliced it (see reslice).
var ErrGather = errors.New("all-gather of the parameters failed after the update")

// ShardedApply is a committed zero1 step on this rank: the update of this
// rank's slices with the gradient clipped to the global norm (sumsq from
// ShardedReduce, scaled here by 1/globalCount²), then the all-gather of the
// parameters. A failed all-gather is an ErrGather.
func ShardedApply(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, step, globalCount int, sumsq float64) error {
	_, err := shardedApply(ctx, ring, tr, step, globalCount, sumsq)
	return err
}

// shardedApply is ShardedApply; it also returns when the update ended and
// the all-gather began.
func shardedApply(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, step, globalCount int, sumsq float64) (updated time.Time, err error) {
	if globalCount <= 0 {
		return updated, fmt.Errorf("apply step %d: global count %d is not positive", step, globalCount)
	}
	c := float64(globalCount)
	if err := tr.ApplyShard(step, globalCount, sumsq/(c*c)); err != nil {
		return updated, err
	}
	updated = time.Now()
	p, err := tr.Params()
	if err != nil {
		return updated, err
	}
	if err := ring.AllGather(ctx, p); err != nil {
		return updated, fmt.Errorf("step %d: %w: %w", step, ErrGather, err)
	}
	return updated, tr.ParamsGathered()
}

// ShardInfo is what one rank of a new generation says, in the re-slice,
// about the zero1 state it holds.
type ShardInfo struct {
	// Valid: it holds its own and buddy slices (parameters and moments) of
	// committed step Applied, in the layout of rank Rank of Size in
	// generation Gen.
	Valid      bool
	Gen        uint64
	Rank, Size int
	Applied    int
	// Dirty: the rest of its parameters may be stale (ErrGather).
	Dirty bool
}

const shardInfoLen = 7 // float32 words per rank, each a uint32's bits

func (in ShardInfo) encode(dst []float32) {
	b := func(v bool) uint32 {
		if v {
			return 1
		}
		return 0
	}
	for i, v := range []uint32{b(in.Valid), uint32(in.Gen), uint32(in.Gen >> 32), uint32(in.Rank), uint32(in.Size), uint32(int32(in.Applied)), b(in.Dirty)} {
		dst[i] = math.Float32frombits(v)
	}
}

func decodeShardInfo(src []float32) ShardInfo {
	u := func(i int) uint32 { return math.Float32bits(src[i]) }
	return ShardInfo{Valid: u(0) == 1, Gen: uint64(u(1)) | uint64(u(2))<<32, Rank: int(u(3)), Size: int(u(4)),
		Applied: int(int32(u(5))), Dirty: u(6) == 1}
}

// LostError says that a slice of the optimizer state had both its holders
// (its owner and its buddy, adjacent ranks) lost together.
type LostError struct {
	Gen            uint64
	Rank, Size     int // the old owner of the lost slice and the old ring size
	Applied        int
	Holders, Ranks int
}

func (e *LostError) Error() string {
	return fmt.Sprintf("zero1: ranks %d and %d of generation %d (of %d) were both lost: they held the only copies (owner and buddy) of optimizer slice %d of step %d; the state is dropped on every rank and the run reloads from the newest checkpoint",
		e.Rank, (e.Rank+1)%e.Size, e.Gen, e.Size, e.Rank, e.Applied)
}

// zeroState is what a zero1 session holds besides the trainer.
type zeroState struct {
	// valid: the trainer holds its slices of committed step applied, in
	// the layout of rank rank of size in generation gen.
	valid      bool
	gen        uint64
	rank, size int
	// dirty: an all-gather of the parameters failed after an update; the
	// parameters outside this rank's slices may be stale until a re-slice.
	dirty bool
	sumsq float64 // global Σg² of the step in flight (ShardedReduce)
}

// optimizerBytes is the optimizer state this node holds, -1 when the
// trainer does not say.
func (s *session) optimizerBytes() int64 {
	if ob, ok := s.tr.(interface{ OptimizerBytes() int64 }); ok {
		return ob.OptimizerBytes()
	}
	return -1
}

// reslice runs Reslice at the start of generation w and records the result.
// A lost slice (two adjacent ranks died) drops the state: the node then
// holds no committed step, and the coordinator has it pull one (from a
// live replica, or the checkpoint it resumed from) or stops, naming the
// checkpoint to resume from.
func (s *session) reslice(w *control.World) {
	mine := ShardInfo{Valid: s.z.valid && s.applied >= 0, Gen: s.z.gen, Rank: s.z.rank, Size: s.z.size, Applied: s.applied, Dirty: s.z.dirty}
	start := time.Now()
	applied, moved, err := ResliceWithStats(context.Background(), s.ring, s.shard, mine)
	var lost *LostError
	switch {
	case errors.As(err, &lost):
		s.a.log.Error("optimizer state lost; reloading from the newest checkpoint", "err", err)
		s.applied, s.z = -1, zeroState{}
	case err != nil:
		// The new ring broke (another node lost). A holder still holds its
		// slices, and a clean one all of its parameters (Reslice writes
		// none there): it keeps its dirty flag. A rank that held no slices
		// of the newest step may have had its parameters partly
		// overwritten (applied -1): it holds no committed state.
		s.a.log.Warn("zero1 re-slice failed; retrying with the next generation", "gen", w.Generation, "err", err)
		if applied < 0 {
			s.applied, s.z = -1, zeroState{}
		}
	default:
		was := s.applied
		s.applied = applied
		s.z = zeroState{valid: applied >= 0, gen: w.Generation, rank: w.Rank, size: len(w.Peers)}
		s.a.log.Info("zero1 optimizer slices", "gen", w.Generation, "rank", w.Rank, "size", len(w.Peers), "applied", applied,
			"was_applied", was, "optimizer_bytes", s.optimizerBytes(), "moved_bytes", 4*moved.MovedFloats(), "full_bytes", 4*moved.FullFloats,
			"moved_params_bytes", 4*moved.ParamFloats, "sent_bytes", 4*moved.SentFloats, "seconds", time.Since(start).Seconds())
	}
}

// applyShard applies committed step m under zero1 (ShardedApply). A failed
// all-gather of the parameters is not fatal: the node holds the step in
// its slices, and the re-slice of the next generation makes its parameters
// whole again; gathered says whether they are whole now.
func (s *session) applyShard(m *control.Msg) (gathered bool, err error) {
	updated, err := shardedApply(context.Background(), s.ring, s.shard, m.Step, m.Count, s.z.sumsq)
	s.tm.updated = updated
	if err != nil && !errors.Is(err, ErrGather) {
		return false, fmt.Errorf("agent: apply step %d: %w", m.Step, err)
	}
	s.applied = m.Step + 1
	s.tm.applied = time.Now()
	s.tm.log(s.a.log, m.Step, s.optimizerBytes())
	if err != nil {
		s.a.log.Warn("zero1: parameters not gathered after the update; a new generation re-slices them", "step", m.Step, "err", err)
		s.z.dirty = true
		return false, nil
	}
	return true, nil
}

// serveShard answers a KindShard request: one moment block of the own or
// buddy slice, of the committed step the node holds.
func (s *session) serveShard(r stateReq) error {
	if s.shard == nil {
		return errors.New("this node does not shard the optimizer (train.shard_optimizer is none)")
	}
	if r.gen != 0 && r.gen != s.gen {
		return fmt.Errorf("this node is in generation %d, its slices are not cut as in generation %d, which the request assembles", s.gen, r.gen)
	}
	if !s.z.valid || s.z.gen != s.gen {
		return fmt.Errorf("this node holds no zero1 slices of generation %d", s.gen)
	}
	return s.shard.WriteHeld(r.w, r.buddy, r.block)
}

// writeAssembled writes the full training state of the committed step this
// zero1 node holds, from the loop (see assembly.write).
func (s *session) writeAssembled(w io.Writer) error {
	if !s.z.valid || s.z.dirty || s.z.gen != s.gen || s.world == nil {
		return fmt.Errorf("zero1: this node holds no whole state of step %d in generation %d (its slices are being re-sliced); ask another node", s.applied, s.gen)
	}
	p, err := s.shard.Params()
	if err != nil {
		return err
	}
	return s.assembly(p, s.shard.WriteHeld).write(context.Background(), w)
}

// assembly is what assembling a zero1 node's full state needs, taken from
// the session so that it can run off the loop (a background checkpoint).
type assembly struct {
	n, applied, rank int
	gen              uint64
	peers            []string
	params           []float32
	// writeHeld writes one moment block of the own or buddy slice.
	writeHeld func(w io.Writer, buddy bool, block int) error
	// fetch streams a peer's moment block (KindShard) into w.
	fetch func(ctx context.Context, w io.Writer, addr string, block int, buddy bool) error
}

func (s *session) assembly(params []float32, writeHeld func(io.Writer, bool, int) error) *assembly {
	key, tlsConf, chunk, timeout, applied, gen := s.a.cfg.Key, s.clientTLS, s.bulkChunk(), s.bulkTimeout(), s.applied, s.gen
	return &assembly{n: s.shard.NumParams(), applied: applied, rank: s.world.Rank, gen: gen, peers: s.world.Peers, params: params, writeHeld: writeHeld,
		fetch: func(ctx context.Context, w io.Writer, addr string, block int, buddy bool) error {
			cc, err := bulk.Dial(addr, key, tlsConf)
			if err != nil {
				return err
			}
			defer cc.Close()
			name := ""
			if buddy {
				name = "buddy"
			}
			// CRC-32C, not SHA-256: the slice only passes through this
			// node, into a state whose own transfer is checked again.
			_, err = bulk.Fetch(ctx, cc, bulk.Request{Kind: bulk.KindShard, Step: applied, Req: block, Name: name, Gen: gen, ChunkBytes: chunk, Sum: bulk.SumCRC32C}, w, timeout, "")
			return err
		}}
}

// write writes the full training state in control.EncodeState's layout, as
// WriteState does under none: the header, the parameters (every rank holds
// them whole), then each moment block assembled slice by slice in rank
// order: this node's own slice from its memory, the others' fetched on the
// bulk plane from their owners, or from their buddies when an owner does
// not answer. So a checkpoint (or a joiner's state) written under zero1 is
// the same bytes as under none and loads under either.
func (a *assembly) write(ctx context.Context, w io.Writer) error {
	if err := control.WriteStateHeader(w, a.n, 2*a.n, a.applied); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := control.WriteFloat32s(w, a.params); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	size := len(a.peers)
	for block := range 2 {
		for k := range size {
			if k == a.rank {
				if err := a.writeHeld(w, false, block); err != nil {
					return fmt.Errorf("write state: %w", err)
				}
				continue
			}
			lo, hi := allreduce.Slice(a.n, size, k)
			if err := a.fetchSlice(ctx, w, block, k, hi-lo); err != nil {
				return err
			}
		}
	}
	return nil
}

// fetchSlice streams rank k's slice of moment block (count floats) into w,
// from k itself or else from its buddy, k+1. The bytes go straight through
// (no copy of the slice); the buddy is asked only when the owner failed
// before sending anything, since w cannot take back what it got (a
// transfer that breaks midway fails the whole state, and the consumer
// discards it and asks another node).
func (a *assembly) fetchSlice(ctx context.Context, w io.Writer, block, k, count int) error {
	size := len(a.peers)
	var errs []error
	for _, src := range []struct {
		rank  int
		buddy bool
	}{{k, false}, {(k + 1) % size, true}} {
		if src.rank == a.rank {
			return a.writeHeld(w, true, block)
		}
		cw := &countWriter{w: w}
		err := a.fetch(ctx, cw, a.peers[src.rank], block, src.buddy)
		if err == nil && cw.n != int64(4*count) {
			err = fmt.Errorf("got %d bytes, want %d", cw.n, 4*count)
		}
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("rank %d (%s, buddy copy %v): %w", src.rank, a.peers[src.rank], src.buddy, err))
		if cw.n > 0 || ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("zero1: assembling the state of step %d: moment block %d of rank %d's slice: %w", a.applied, block, k, errors.Join(errs...))
}

// countWriter counts what passes through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

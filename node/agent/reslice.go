package agent

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/ringtune/ringtune/allreduce"
)

// reslicePiece is how many floats move per ring operation in Reslice: it
// bounds the extra memory of the move to 16 MiB. (A variable so that tests
// can move a small block in many pieces.)
var reslicePiece = 1 << 22

// ResliceStats says what a Reslice moved over the ring.
type ResliceStats struct {
	// ParamFloats and MomentFloats are the parameters and moments (first
	// and second together) that changed hands: the elements that some rank
	// of the new layout needs and does not hold, each counted once however
	// many ranks need it.
	ParamFloats, MomentFloats int64
	// FullFloats is what moving all of the state would be: the parameters
	// and both moments of the whole block (3 × NumParams).
	FullFloats int64
	// Kind is the ring operation that moved them: KindAllGather when each
	// rank's contribution fits in its slot of an all-gather at no more
	// wire bytes than an all-reduce of the moved floats, else
	// KindAllReduceFloat32 (nothing moved: KindAllGather).
	Kind allreduce.Kind
	// SentFloats is what each rank sends on the ring for it (an all-gather
	// pads the contributions to the largest one).
	SentFloats int64
}

// MovedFloats is ParamFloats + MomentFloats.
func (s ResliceStats) MovedFloats() int64 { return s.ParamFloats + s.MomentFloats }

// Reslice brings the zero1 state into the layout of ring, a new generation,
// from the layout the ranks held it in, and returns the committed step
// every rank now holds. It is ResliceWithStats without the statistics.
func Reslice(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, mine ShardInfo) (int, error) {
	applied, _, err := ResliceWithStats(ctx, ring, tr, mine)
	return applied, err
}

// ResliceWithStats brings the zero1 state into the layout of ring, a new
// generation, from the layout the ranks held it in, moving only what
// changed hands. Every rank of the new ring calls it with what it holds
// (mine); joiners and ranks without state pass an invalid ShardInfo.
//
// The ranks first all-gather their ShardInfo, so each computes the same
// move list (planReslice). The holders are the valid ranks of the newest
// committed step. Each new rank needs the moments of its new own and buddy
// slices and, unless it is a clean holder, the parameters; what it holds
// already (a holder's old own and buddy slices, and a clean holder's whole
// parameter block) it keeps. What some rank needs and does not hold moves,
// each element once, from a surviving holder of its old slice: the owner,
// or the buddy (the old owner's right neighbour), or split between them
// when both survived and that evens out what the ranks send. It moves by
// float32 ring operations in bounded pieces, two in flight, in which every
// element has exactly one contributor, so the values arrive bit for bit:
// an all-gather of per-rank slots, or an all-reduce where the
// non-contributors put -0 (x + -0 is x for every x, -0 included; +0 would
// turn a -0 into +0), whichever sends fewer bytes.
//
// A single loss never resets or rolls back the state, and joiners get it
// too. When an old slice has no holder (two adjacent ranks died) it drops
// the state (fresh zeroed slices) and returns a *LostError. When the ring
// fails midway, a holder still holds its old slices and returns
// mine.Applied: a clean holder is untouched (it needs no parameters, and
// nothing is written to a holder's slices), a dirty one stays dirty. A rank
// that held no slices of the newest step (a joiner, a rank of an older
// step) may hold some parameters changed: it returns -1, holding no
// committed state. When nobody holds a committed state it sets fresh
// slices and returns mine.Applied.
func ResliceWithStats(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer, mine ShardInfo) (int, ResliceStats, error) {
	n, me := ring.Size(), ring.Rank()
	np := tr.NumParams()
	stats := ResliceStats{FullFloats: 3 * int64(np), Kind: allreduce.KindAllGather}
	infos := make([]float32, shardInfoLen*n)
	mine.encode(infos[shardInfoLen*me:])
	if err := ring.AllGather(ctx, infos); err != nil {
		return mine.Applied, stats, fmt.Errorf("zero1 re-slice: exchanging what each rank holds: %w", err)
	}
	all := make([]ShardInfo, n)
	for r := range n {
		all[r] = decodeShardInfo(infos[shardInfoLen*r:])
	}
	p, err := planReslice(all, np)
	if err != nil {
		// A lost slice: every rank drops the state alike.
		if rerr := tr.Reshard(me, n); rerr != nil {
			return -1, stats, rerr
		}
		return -1, stats, err
	}
	if p.best.Applied < 0 {
		// Nobody holds a committed state: fresh slices (step 0, or a pull
		// from a checkpoint follows).
		return mine.Applied, stats, tr.Reshard(me, n)
	}
	stats = p.stats(np)
	if p.unchanged {
		return p.best.Applied, stats, nil
	}
	if err := p.run(ctx, ring, tr); err != nil {
		if !p.holder(mine) {
			// Its parameters may be partly overwritten with another
			// step's: it holds no committed state any more.
			return -1, stats, err
		}
		return mine.Applied, stats, err
	}
	return p.best.Applied, stats, nil
}

// span is the element range [lo, hi) of the flat block.
type span struct{ lo, hi int }

// spanSet is a sorted list of disjoint, non-adjacent, non-empty spans.
type spanSet []span

// spansOf normalizes s into a spanSet.
func spansOf(s ...span) spanSet {
	var out spanSet
	s = slices.DeleteFunc(slices.Clone(s), func(x span) bool { return x.hi <= x.lo })
	slices.SortFunc(s, func(a, b span) int { return a.lo - b.lo })
	for _, x := range s {
		if k := len(out) - 1; k >= 0 && x.lo <= out[k].hi {
			out[k].hi = max(out[k].hi, x.hi)
			continue
		}
		out = append(out, x)
	}
	return out
}

// union is a ∪ b.
func (a spanSet) union(b spanSet) spanSet { return spansOf(append(slices.Clone(a), b...)...) }

// minus is a \ b.
func (a spanSet) minus(b spanSet) spanSet {
	var out spanSet
	for _, x := range a {
		lo := x.lo
		for _, y := range b {
			if y.hi <= lo || y.lo >= x.hi {
				continue
			}
			if y.lo > lo {
				out = append(out, span{lo, y.lo})
			}
			lo = max(lo, y.hi)
		}
		if lo < x.hi {
			out = append(out, span{lo, x.hi})
		}
	}
	return out
}

// within is a ∩ [lo, hi).
func (a spanSet) within(lo, hi int) spanSet {
	var out spanSet
	for _, x := range a {
		if l, h := max(x.lo, lo), min(x.hi, hi); l < h {
			out = append(out, span{l, h})
		}
	}
	return out
}

// len is the number of elements in a.
func (a spanSet) len() int {
	n := 0
	for _, x := range a {
		n += x.hi - x.lo
	}
	return n
}

// slices of rank in a ring of size over np elements: own and buddy
// (the left neighbour's, none for one rank), as allreduce.Slice splits.
func ownBuddy(np, size, rank int) (own, buddy span) {
	lo, hi := allreduce.Slice(np, size, rank)
	own = span{lo, hi}
	if size > 1 {
		blo, bhi := allreduce.Slice(np, size, rank-1)
		buddy = span{blo, bhi}
	}
	return own, buddy
}

// moveSeg is one range that moves: elements [lo, hi) of state block
// (0 parameters, 1 first moments, 2 second moments), contributed by new
// rank src, at offset off of slot slot of the operation's buffer.
type moveSeg struct {
	block, lo, hi, src int
	slot, off          int
}

// reslicePlan is the move list of a re-slice, the same on every rank.
type reslicePlan struct {
	all  []ShardInfo
	best ShardInfo // the newest committed state held (Applied -1: none)
	// unchanged: every rank already holds what it needs (same layout,
	// same ranks, all clean holders): nothing moves.
	unchanged bool
	// cands[k]: the new ranks that hold old slice k, its owner first.
	cands [][]int
	// needP[r] and needM[r]: the parameters and moments new rank r needs
	// and does not hold.
	needP, needM []spanSet
	segs         []moveSeg
	// slots is 1 (an all-reduce of one packed buffer) or the ring size (an
	// all-gather, slot r for rank r's contributions); slotLen is the
	// longest slot.
	slots, slotLen int
	// depth is how many pieces are in flight at once (2; 1 moves one
	// piece at a time, as the full move of BenchmarkReslice's peer does).
	depth int
}

// holder says whether in holds the newest committed state.
func (p *reslicePlan) holder(in ShardInfo) bool {
	b := p.best
	return in.Valid && in.Applied == b.Applied && in.Gen == b.Gen && in.Size == b.Size
}

// planReslice computes the move list from every new rank's ShardInfo (all,
// indexed by new rank) for a block of np elements. It fails with a
// *LostError when an old slice has no holder.
func planReslice(all []ShardInfo, np int) (*reslicePlan, error) {
	n := len(all)
	p := &reslicePlan{all: all, best: ShardInfo{Applied: -1}, depth: 2}
	for _, in := range all {
		if in.Valid && (in.Applied > p.best.Applied || (in.Applied == p.best.Applied && in.Gen > p.best.Gen)) {
			p.best = in
		}
	}
	if p.best.Applied < 0 {
		return p, nil
	}
	p.unchanged = true
	for r, in := range all {
		p.unchanged = p.unchanged && p.holder(in) && in.Size == n && in.Rank == r && !in.Dirty
	}
	S := p.best.Size
	// The holders of old slice k: its owner if it survived, then its
	// buddy (the owner's right neighbour) if it did.
	p.cands = make([][]int, S)
	for k := range S {
		for pass, want := range []int{k, (k + 1) % S} {
			for r, in := range all {
				if p.holder(in) && in.Rank == want && (pass == 0 || S > 1) {
					p.cands[k] = append(p.cands[k], r)
				}
			}
		}
		if len(p.cands[k]) == 0 {
			return nil, &LostError{Gen: p.best.Gen, Rank: k, Size: S, Applied: p.best.Applied}
		}
	}
	if p.unchanged {
		return p, nil
	}
	whole := spansOf(span{0, np})
	var allP, allM spanSet
	p.needP, p.needM = make([]spanSet, n), make([]spanSet, n)
	for r, in := range all {
		var heldM, heldP spanSet
		if p.holder(in) {
			o, b := ownBuddy(np, S, in.Rank)
			heldM = spansOf(o, b)
			heldP = heldM
			if !in.Dirty {
				heldP = whole
			}
		}
		o, b := ownBuddy(np, n, r)
		p.needM[r] = spansOf(o, b).minus(heldM)
		p.needP[r] = whole.minus(heldP)
		allM = allM.union(p.needM[r])
		allP = allP.union(p.needP[r])
	}
	// Split by old slice, in one order: block, then old slice, then
	// element. A range whose old slice has one holder comes from it; one
	// with two (owner and buddy both survived) is split between them so
	// that their contributions come out as even as can be (the ranks'
	// largest contribution sizes an all-gather).
	type pending struct {
		block, k int
		x        span
	}
	var todo []pending
	load := make([]int, n)
	for block, need := range []spanSet{allP, allM, allM} {
		for k := range S {
			lo, hi := allreduce.Slice(np, S, k)
			for _, x := range need.within(lo, hi) {
				todo = append(todo, pending{block, k, x})
				if c := p.cands[k]; len(c) == 1 {
					load[c[0]] += x.hi - x.lo
				}
			}
		}
	}
	// Both ways, owner first or balanced, keeping the one with the
	// smaller largest contribution (the greedy balance is not always
	// better), the owner first on a tie.
	assign := func(balance bool) ([]moveSeg, int) {
		var segs []moveSeg
		load := slices.Clone(load)
		for _, t := range todo {
			c := p.cands[t.k]
			if len(c) == 1 || !balance {
				segs = append(segs, moveSeg{block: t.block, lo: t.x.lo, hi: t.x.hi, src: c[0]})
				if len(c) > 1 {
					load[c[0]] += t.x.hi - t.x.lo
				}
				continue
			}
			a, b, l := c[0], c[1], t.x.hi-t.x.lo
			na := min(max((load[b]+l-load[a])/2, 0), l)
			load[a] += na
			load[b] += l - na
			if na > 0 {
				segs = append(segs, moveSeg{block: t.block, lo: t.x.lo, hi: t.x.lo + na, src: a})
			}
			if na < l {
				segs = append(segs, moveSeg{block: t.block, lo: t.x.lo + na, hi: t.x.hi, src: b})
			}
		}
		return segs, slices.Max(load)
	}
	owner, om := assign(false)
	even, em := assign(true)
	p.segs = owner
	if em < om {
		p.segs = even
	}
	// The cheaper operation: an all-reduce sends 2(n-1)/n of the packed
	// floats per rank; an all-gather (n-1) times the largest contribution.
	contrib := make([]int, n)
	total := 0
	for _, s := range p.segs {
		contrib[s.src] += s.hi - s.lo
		total += s.hi - s.lo
	}
	p.slots, p.slotLen = 1, total
	if big := slices.Max(contrib); n*big <= 2*total {
		p.slots, p.slotLen = n, big
	}
	offs := make([]int, n)
	for i := range p.segs {
		s := &p.segs[i]
		if p.slots > 1 {
			s.slot = s.src
		}
		s.off = offs[s.slot]
		offs[s.slot] += s.hi - s.lo
	}
	return p, nil
}

// stats is what the plan moves.
func (p *reslicePlan) stats(np int) ResliceStats {
	st := ResliceStats{FullFloats: 3 * int64(np), Kind: allreduce.KindAllGather}
	for _, s := range p.segs {
		if s.block == 0 {
			st.ParamFloats += int64(s.hi - s.lo)
		} else {
			st.MomentFloats += int64(s.hi - s.lo)
		}
	}
	n := int64(len(p.all))
	if p.slotLen == 0 {
		return st
	}
	if p.slots == 1 {
		st.Kind = allreduce.KindAllReduceFloat32
		st.SentFloats = 2 * (n - 1) * int64(p.slotLen) / n
	} else {
		st.SentFloats = (n - 1) * int64(p.slotLen)
	}
	return st
}

// run carries out the plan on this rank: it packs its contributions piece
// by piece, runs the ring operation, unpacks what it needs, and installs
// the new layout.
func (p *reslicePlan) run(ctx context.Context, ring *allreduce.Ring, tr ShardTrainer) error {
	n, me := ring.Size(), ring.Rank()
	np := tr.NumParams()
	mineIn := p.all[me]
	needP, needM := p.needP[me], p.needM[me]
	var params []float32
	var err error
	contributesP := false
	for _, s := range p.segs {
		contributesP = contributesP || (s.block == 0 && s.src == me)
	}
	if contributesP || len(needP) > 0 {
		if params, err = tr.Params(); err != nil {
			return err
		}
		if len(params) != np {
			return fmt.Errorf("zero1 re-slice: the trainer's parameter block has %d elements, NumParams says %d", len(params), np)
		}
	}
	// held: this rank's old own and buddy slices with their moments (read
	// in place where the trainer allows).
	type held struct {
		r    span
		m, v []float32
	}
	var hs []held
	if p.holder(mineIn) {
		ownM, ownV, budM, budV, err := tr.HeldMoments()
		if err != nil {
			return err
		}
		own, bud := tr.Layout()
		wo, wb := ownBuddy(np, p.best.Size, mineIn.Rank)
		if (span{own[0], own[1]}) != wo || (span{bud[0], bud[1]}) != wb {
			return fmt.Errorf("zero1 re-slice: the trainer holds slices [%d,%d) and [%d,%d), but says it is rank %d of %d, whose slices are [%d,%d) and [%d,%d)",
				own[0], own[1], bud[0], bud[1], mineIn.Rank, p.best.Size, wo.lo, wo.hi, wb.lo, wb.hi)
		}
		hs = append(hs, held{wo, ownM, ownV})
		if wb.hi > wb.lo {
			hs = append(hs, held{wb, budM, budV})
		}
		for _, h := range hs {
			if len(h.m) != h.r.hi-h.r.lo || len(h.v) != len(h.m) {
				return fmt.Errorf("zero1 re-slice: the trainer's moments of [%d,%d) have %d and %d elements", h.r.lo, h.r.hi, len(h.m), len(h.v))
			}
		}
	}
	// The new slices' moments: what this rank held already, copied now;
	// the rest arrives from the ring.
	no, nb := ownBuddy(np, n, me)
	news := []span{no, nb}
	var newM, newV [2][]float32
	for i, ns := range news {
		newM[i], newV[i] = make([]float32, ns.hi-ns.lo), make([]float32, ns.hi-ns.lo)
		for _, h := range hs {
			if lo, hi := max(ns.lo, h.r.lo), min(ns.hi, h.r.hi); lo < hi {
				copy(newM[i][lo-ns.lo:hi-ns.lo], h.m[lo-h.r.lo:hi-h.r.lo])
				copy(newV[i][lo-ns.lo:hi-ns.lo], h.v[lo-h.r.lo:hi-h.r.lo])
			}
		}
	}
	// source is where this rank reads block's elements [lo, hi) that it
	// contributes.
	source := func(block, lo, hi int) ([]float32, error) {
		if block == 0 {
			return params[lo:hi], nil
		}
		for _, h := range hs {
			if h.r.lo <= lo && hi <= h.r.hi {
				if block == 1 {
					return h.m[lo-h.r.lo : hi-h.r.lo], nil
				}
				return h.v[lo-h.r.lo : hi-h.r.lo], nil
			}
		}
		return nil, fmt.Errorf("zero1 re-slice: rank %d was chosen to send moments [%d,%d), which it does not hold", me, lo, hi)
	}
	kind := allreduce.KindAllReduceFloat32
	if p.slots > 1 {
		kind = allreduce.KindAllGather
	}
	// Two pieces in flight, each half of reslicePiece: while the ring
	// moves one, this rank packs the next and unpacks the last.
	q := max(1, reslicePiece/p.depth/p.slots)
	pieces := (p.slotLen + q - 1) / q
	bufs := make([][]float32, p.depth)
	for i := range bufs {
		bufs[i] = make([]float32, p.slots*min(q, p.slotLen))
	}
	negZero := float32(math.Copysign(0, -1))
	// each calls f for each segment overlapping the piece of slot offsets
	// [base, base+qj), with its element range [lo, hi) and the position of
	// lo in the piece's buffer.
	each := func(base, qj int, f func(s moveSeg, lo, hi, at int) error) error {
		for _, s := range p.segs {
			a, b := max(s.off, base), min(s.off+s.hi-s.lo, base+qj)
			if a >= b {
				continue
			}
			if err := f(s, s.lo+a-s.off, s.lo+b-s.off, s.slot*qj+a-base); err != nil {
				return err
			}
		}
		return nil
	}
	pack := func(pc []float32, base, qj int) error {
		if p.slots == 1 {
			for i := range pc {
				pc[i] = negZero
			}
		} else {
			clear(pc[me*qj : (me+1)*qj])
		}
		return each(base, qj, func(s moveSeg, lo, hi, at int) error {
			if s.src != me {
				return nil
			}
			src, err := source(s.block, lo, hi)
			copy(pc[at:], src)
			return err
		})
	}
	unpack := func(pc []float32, base, qj int) {
		_ = each(base, qj, func(s moveSeg, lo, hi, at int) error {
			if s.block == 0 {
				for _, x := range needP.within(lo, hi) {
					copy(params[x.lo:x.hi], pc[at+x.lo-lo:])
				}
				return nil
			}
			dst := newM
			if s.block == 2 {
				dst = newV
			}
			for i, ns := range news {
				for _, x := range needM.within(max(lo, ns.lo), min(hi, ns.hi)) {
					copy(dst[i][x.lo-ns.lo:x.hi-ns.lo], pc[at+x.lo-lo:])
				}
			}
			return nil
		})
	}
	type flight struct {
		op    *allreduce.Op
		j, qj int
		pc    []float32
	}
	var queue []flight
	// land waits for the oldest piece in flight and unpacks it.
	land := func() error {
		f := queue[0]
		queue = queue[1:]
		if err := f.op.Wait(); err != nil {
			return fmt.Errorf("zero1 re-slice: moving piece %d of %d (%s): %w", f.j, pieces, kind, err)
		}
		unpack(f.pc, f.j*q, f.qj)
		return nil
	}
	// fail waits out what is still in flight (the broken ring ends it
	// soon) so that no operation outlives the call, then returns err.
	fail := func(err error) error {
		for _, f := range queue {
			_ = f.op.Wait()
		}
		return err
	}
	for j := range pieces {
		qj := min(q, p.slotLen-j*q)
		pc := bufs[j%p.depth][:p.slots*qj]
		if err := pack(pc, j*q, qj); err != nil {
			return fail(err)
		}
		op, err := ring.StartKind(ctx, kind, pc)
		if err != nil {
			return fail(fmt.Errorf("zero1 re-slice: moving piece %d of %d (%s): %w", j, pieces, kind, err))
		}
		queue = append(queue, flight{op, j, qj, pc})
		if len(queue) == p.depth {
			if err := land(); err != nil {
				return fail(err)
			}
		}
	}
	for len(queue) > 0 {
		if err := land(); err != nil {
			return fail(err)
		}
	}
	if len(needP) > 0 {
		if err := tr.ParamsGathered(); err != nil {
			return err
		}
	}
	if err := tr.Reshard(me, n); err != nil {
		return err
	}
	return tr.SetHeldMoments(newM[0], newV[0], newM[1], newV[1], int64(p.best.Applied))
}

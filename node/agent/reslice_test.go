package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
)

// fakeShard is a ShardTrainer whose state is plain Go memory: Reslice
// only moves state, so the optimizer's arithmetic (tested against PyTorch
// with the real trainer in node/) plays no part. The Trainer methods are
// left nil: Reslice must not call them.
type fakeShard struct {
	Trainer
	params                 []float32
	own, bud               [2]int
	ownM, ownV, budM, budV []float32
	step                   int64
	gathered               int    // ParamsGathered calls
	onHeld                 func() // called by HeldMoments (a fault hook)
}

func (f *fakeShard) Reshard(rank, size int) error {
	np := len(f.params)
	f.own, f.bud = [2]int{}, [2]int{}
	if size > 0 {
		f.own[0], f.own[1] = allreduce.Slice(np, size, rank)
		if size > 1 {
			f.bud[0], f.bud[1] = allreduce.Slice(np, size, rank-1)
		}
	}
	f.ownM, f.ownV = make([]float32, f.own[1]-f.own[0]), make([]float32, f.own[1]-f.own[0])
	f.budM, f.budV = make([]float32, f.bud[1]-f.bud[0]), make([]float32, f.bud[1]-f.bud[0])
	f.step = 0
	return nil
}

func (f *fakeShard) SliceSumSq(int) (float64, error) {
	return 0, errors.New("fakeShard: not a trainer")
}
func (f *fakeShard) ApplyShard(int, int, float64) error {
	return errors.New("fakeShard: not a trainer")
}
func (f *fakeShard) Params() ([]float32, error) { return f.params, nil }
func (f *fakeShard) ParamsGathered() error      { f.gathered++; return nil }
func (f *fakeShard) OptimizerBytes() int64 {
	return int64(4 * (len(f.ownM) + len(f.ownV) + len(f.budM) + len(f.budV)))
}
func (f *fakeShard) Layout() (own, buddy [2]int)          { return f.own, f.bud }
func (f *fakeShard) NumParams() int                       { return len(f.params) }
func (f *fakeShard) WriteHeld(io.Writer, bool, int) error { return errors.New("fakeShard: not used") }

func (f *fakeShard) HeldMoments() (ownM, ownV, budM, budV []float32, err error) {
	if f.onHeld != nil {
		f.onHeld()
	}
	return f.ownM, f.ownV, f.budM, f.budV, nil
}

func (f *fakeShard) SetHeldMoments(ownM, ownV, budM, budV []float32, step int64) error {
	if len(ownM) != len(f.ownM) || len(ownV) != len(f.ownV) || len(budM) != len(f.budM) || len(budV) != len(f.budV) {
		return fmt.Errorf("fakeShard: SetHeldMoments of %d/%d/%d/%d elements into slices of %d and %d", len(ownM), len(ownV), len(budM), len(budV), len(f.ownM), len(f.budM))
	}
	copy(f.ownM, ownM)
	copy(f.ownV, ownV)
	copy(f.budM, budM)
	copy(f.budV, budV)
	f.step = step
	return nil
}

// truth is element i of state block (0 parameters, 1 first moments, 2
// second moments) of the committed step: distinct values, with a -0 and
// a subnormal now and then (a move must keep their bits too).
func truth(block, i int) float32 {
	switch (i + block) % 97 {
	case 5:
		return float32(math.Copysign(0, -1))
	case 11:
		return math.Float32frombits(uint32(1 + i))
	}
	return float32(block+1)*1000 + float32(i)*0.37 - float32(i%13)
}

// garbage is what a rank that does not hold an element has there.
func garbage(i int) float32 { return float32(-7e6) - float32(i) }

// old describes one new rank: its rank in the old layout (-1: a joiner
// with nothing), whether it is dirty, and whether it holds an older step.
type old struct {
	rank         int
	dirty, stale bool
}

// newFake is a fakeShard holding what o says, of a block of np elements in
// an old layout of size ranks at committed step applied.
func newFake(np, size, applied int, o old) (*fakeShard, ShardInfo) {
	f := &fakeShard{params: make([]float32, np)}
	for i := range f.params {
		f.params[i] = garbage(i)
	}
	if o.rank < 0 {
		_ = f.Reshard(0, 0)
		return f, ShardInfo{Applied: 0}
	}
	_ = f.Reshard(o.rank, size)
	in := ShardInfo{Valid: true, Gen: 1, Rank: o.rank, Size: size, Applied: applied, Dirty: o.dirty}
	if o.stale {
		in.Applied = applied - 1
		return f, in
	}
	for i := range f.params {
		if !o.dirty || (f.own[0] <= i && i < f.own[1]) || (f.bud[0] <= i && i < f.bud[1]) {
			f.params[i] = truth(0, i)
		}
	}
	for i := range f.ownM {
		f.ownM[i], f.ownV[i] = truth(1, f.own[0]+i), truth(2, f.own[0]+i)
	}
	for i := range f.budM {
		f.budM[i], f.budV[i] = truth(1, f.bud[0]+i), truth(2, f.bud[0]+i)
	}
	f.step = int64(applied)
	return f, in
}

// testRings builds a real loopback ring of n ranks.
func testRings(t *testing.T, n int) []*allreduce.Ring {
	t.Helper()
	key, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ls := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		if ls[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		addrs[i] = ls[i].Addr().String()
	}
	rings := make([]*allreduce.Ring, n)
	for i := range rings {
		r, err := allreduce.New(allreduce.Config{Generation: 2, Rank: i, Peers: addrs, Listener: ls[i], Key: key, ChunkBytes: allreduce.MinChunkBytes, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		rings[i] = r
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, r := range rings {
			wg.Go(func() { r.Close() })
		}
		wg.Wait()
	})
	return rings
}

type resliceResult struct {
	applied int
	stats   ResliceStats
	err     error
}

// resliceAll runs ResliceWithStats on every rank of a new ring of
// len(fakes).
func resliceAll(t *testing.T, fakes []*fakeShard, infos []ShardInfo) []resliceResult {
	t.Helper()
	rings := testRings(t, len(fakes))
	out := make([]resliceResult, len(fakes))
	var wg sync.WaitGroup
	for r := range fakes {
		wg.Go(func() {
			a, st, err := ResliceWithStats(context.Background(), rings[r], fakes[r], infos[r])
			out[r] = resliceResult{a, st, err}
		})
	}
	wg.Wait()
	return out
}

// wantMoved is the move list's size worked out element by element, apart
// from planReslice: parameter i moves when some new rank needs it (it is
// not a clean holder, and it is no holder of i's old slices); moment i
// moves (twice: first and second) when some new rank has i in its new
// own or buddy slice and does not hold i.
func wantMoved(np, size, applied int, olds []old) (params, moments int64) {
	n := len(olds)
	in := func(i, sz, r int) bool { lo, hi := allreduce.Slice(np, sz, r); return lo <= i && i < hi }
	holds := func(o old, i int) bool {
		return o.rank >= 0 && !o.stale && (in(i, size, o.rank) || (size > 1 && in(i, size, o.rank-1)))
	}
	for i := range np {
		needP, needM := false, false
		for r, o := range olds {
			clean := o.rank >= 0 && !o.stale && !o.dirty
			needP = needP || (!clean && !holds(o, i))
			needM = needM || ((in(i, n, r) || (n > 1 && in(i, n, r-1))) && !holds(o, i))
		}
		if needP {
			params++
		}
		if needM {
			moments += 2
		}
	}
	return params, moments
}

// TestResliceMovesOnlyWhatChangedHands: for each layout change, every rank
// of the new ring ends with the committed step's parameters whole and the
// moments of its new slices, bit for bit (the same state as moving all of
// it), from ranks that hold only their old slices (and garbage elsewhere
// where they are dirty, stale or new); the floats moved are what an
// element-by-element count of the move list says, and fewer than the full
// move.
func TestResliceMovesOnlyWhatChangedHands(t *testing.T) {
	const np, applied = 10007, 5
	defer func(p int) { reslicePiece = p }(reslicePiece)
	reslicePiece = 1000 // many pieces
	cases := []struct {
		name  string
		size  int
		olds  []old
		zeroP bool // no parameter moves
		whole bool // everything moves (the only holder is the joiner's sole source)
	}{
		{"3to2/lost0", 3, []old{{rank: 1}, {rank: 2}}, true, false},
		{"3to2/lost1", 3, []old{{rank: 0}, {rank: 2}}, true, false},
		{"3to2/lost2", 3, []old{{rank: 0}, {rank: 1}}, true, false},
		{"2to3/joiner-last", 2, []old{{rank: 0}, {rank: 1}, {rank: -1}}, false, false},
		{"2to3/joiner-middle", 2, []old{{rank: 0}, {rank: -1}, {rank: 1}}, false, false},
		{"4to3/lost2", 4, []old{{rank: 0}, {rank: 1}, {rank: 3}}, true, false},
		{"3to3/reordered", 3, []old{{rank: 2}, {rank: 0}, {rank: 1}}, true, false},
		{"3to3/dirty1", 3, []old{{rank: 0}, {rank: 1, dirty: true}, {rank: 2}}, false, false},
		{"4to3/dirty-and-lost", 4, []old{{rank: 0, dirty: true}, {rank: 2}, {rank: 3}}, false, false},
		{"3to3/stale1", 3, []old{{rank: 0}, {rank: 1, stale: true}, {rank: 2}}, false, false},
		{"2to1", 2, []old{{rank: 1}}, true, false},
		{"1to2/joiner", 1, []old{{rank: 0}, {rank: -1}}, false, true},
		{"2to3/one-survivor-two-joiners", 2, []old{{rank: 1}, {rank: -1}, {rank: -1}}, false, true},
	}
	kinds := map[allreduce.Kind]bool{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := len(c.olds)
			fakes := make([]*fakeShard, n)
			infos := make([]ShardInfo, n)
			for r, o := range c.olds {
				fakes[r], infos[r] = newFake(np, c.size, applied, o)
			}
			res := resliceAll(t, fakes, infos)
			for r, f := range fakes {
				if res[r].err != nil || res[r].applied != applied {
					t.Fatalf("rank %d: Reslice = %d, %v; want %d", r, res[r].applied, res[r].err, applied)
				}
				if res[r].stats != res[0].stats {
					t.Fatalf("rank %d's stats %+v differ from rank 0's %+v", r, res[r].stats, res[0].stats)
				}
				checkHolds(t, r, n, f, applied)
			}
			st := res[0].stats
			wp, wm := wantMoved(np, c.size, applied, c.olds)
			t.Logf("moved %d parameters + %d moments of %d (%s, %d floats sent per rank)", st.ParamFloats, st.MomentFloats, st.FullFloats, st.Kind, st.SentFloats)
			if st.ParamFloats != wp || st.MomentFloats != wm {
				t.Fatalf("moved %d parameters and %d moments, the move list says %d and %d", st.ParamFloats, st.MomentFloats, wp, wm)
			}
			if st.FullFloats != 3*np || (st.MovedFloats() >= st.FullFloats) != c.whole {
				t.Fatalf("moved %d of %d floats; want less than the full move unless a joiner's only source has all of it", st.MovedFloats(), st.FullFloats)
			}
			if c.zeroP && st.ParamFloats != 0 {
				t.Fatalf("all ranks are clean holders, yet %d parameters moved", st.ParamFloats)
			}
			if st.MovedFloats() > 0 {
				kinds[st.Kind] = true
			}
		})
	}
	if !kinds[allreduce.KindAllGather] || !kinds[allreduce.KindAllReduceFloat32] {
		t.Fatalf("the cases moved by %v only: both the all-gather and the all-reduce must be exercised", kinds)
	}
}

// checkHolds fails unless f, rank r of a ring of n, holds the committed
// state: the parameters whole and its new slices' moments, bit for bit.
func checkHolds(t *testing.T, r, n int, f *fakeShard, applied int) {
	t.Helper()
	np := len(f.params)
	for i, v := range f.params {
		if math.Float32bits(v) != math.Float32bits(truth(0, i)) {
			t.Fatalf("rank %d: parameter %d is %v, want %v", r, i, v, truth(0, i))
		}
	}
	var own, bud [2]int
	own[0], own[1] = allreduce.Slice(np, n, r)
	if n > 1 {
		bud[0], bud[1] = allreduce.Slice(np, n, r-1)
	}
	if f.own != own || f.bud != bud {
		t.Fatalf("rank %d: layout %v %v, want %v %v", r, f.own, f.bud, own, bud)
	}
	for _, s := range []struct {
		lo   int
		m, v []float32
	}{{own[0], f.ownM, f.ownV}, {bud[0], f.budM, f.budV}} {
		for i := range s.m {
			if math.Float32bits(s.m[i]) != math.Float32bits(truth(1, s.lo+i)) || math.Float32bits(s.v[i]) != math.Float32bits(truth(2, s.lo+i)) {
				t.Fatalf("rank %d: moments of element %d are %v, %v; want %v, %v", r, s.lo+i, s.m[i], s.v[i], truth(1, s.lo+i), truth(2, s.lo+i))
			}
		}
	}
	if f.step != int64(applied) {
		t.Fatalf("rank %d: optimizer step %d, want %d", r, f.step, applied)
	}
}

// TestResliceUnchanged: the same ranks in the same layout, all clean:
// nothing moves and nothing is touched.
func TestResliceUnchanged(t *testing.T) {
	const np = 1001
	fakes := make([]*fakeShard, 3)
	infos := make([]ShardInfo, 3)
	for r := range fakes {
		fakes[r], infos[r] = newFake(np, 3, 4, old{rank: r})
	}
	for r, res := range resliceAll(t, fakes, infos) {
		if res.err != nil || res.applied != 4 || res.stats.MovedFloats() != 0 || res.stats.SentFloats != 0 {
			t.Fatalf("rank %d: %d, %+v, %v; want step 4 and nothing moved", r, res.applied, res.stats, res.err)
		}
		if fakes[r].gathered != 0 {
			t.Fatalf("rank %d: parameters rewritten", r)
		}
		checkHolds(t, r, 3, fakes[r], 4)
	}
}

// TestResliceLostSlice: ranks 1 and 2 of 4 die together (owner and buddy of
// slice 1): every survivor drops the state to fresh zeroed slices of the
// new layout and says which slice was lost.
func TestResliceLostSlice(t *testing.T) {
	const np = 1001
	fakes := make([]*fakeShard, 2)
	infos := make([]ShardInfo, 2)
	for r, o := range []old{{rank: 0}, {rank: 3}} {
		fakes[r], infos[r] = newFake(np, 4, 3, o)
	}
	for r, res := range resliceAll(t, fakes, infos) {
		var lost *LostError
		if !errors.As(res.err, &lost) || res.applied != -1 || lost.Rank != 1 {
			t.Fatalf("rank %d: %d, %v; want -1 and a LostError of slice 1", r, res.applied, res.err)
		}
		if !strings.Contains(res.err.Error(), "ranks 1 and 2") || !strings.Contains(res.err.Error(), "checkpoint") {
			t.Fatalf("rank %d: %q does not name the lost ranks and the checkpoint", r, res.err)
		}
		f := fakes[r]
		lo, hi := allreduce.Slice(np, 2, r)
		if f.own != [2]int{lo, hi} || f.step != 0 {
			t.Fatalf("rank %d: layout %v at step %d, want fresh slices [%d,%d) at step 0", r, f.own, f.step, lo, hi)
		}
		for i, v := range append(append([]float32{}, f.ownM...), f.budV...) {
			if v != 0 {
				t.Fatalf("rank %d: moment %d is %v after the loss, want fresh zeros", r, i, v)
			}
		}
	}
}

// TestResliceRingFailsMidway: the ring breaks while the state moves (a
// joiner's ring closes as a holder starts): every rank fails, the clean
// holders still hold all of the committed step (their slices and whole
// parameters), the joiner says it holds nothing, and the next generation
// re-slices with the holders still clean.
func TestResliceRingFailsMidway(t *testing.T) {
	const np = 10007
	defer func(p int) { reslicePiece = p }(reslicePiece)
	reslicePiece = 1000
	olds := []old{{rank: 0}, {rank: 1}, {rank: -1}}
	fakes := make([]*fakeShard, 3)
	infos := make([]ShardInfo, 3)
	for r, o := range olds {
		fakes[r], infos[r] = newFake(np, 2, 3, o)
	}
	rings := testRings(t, 3)
	var once sync.Once
	fakes[0].onHeld = func() { once.Do(func() { rings[2].Close() }) }
	errs := make([]error, 3)
	got := make([]int, 3)
	var wg sync.WaitGroup
	for r := range fakes {
		wg.Go(func() {
			got[r], _, errs[r] = ResliceWithStats(context.Background(), rings[r], fakes[r], infos[r])
		})
	}
	wg.Wait()
	for r, err := range errs {
		var lost *LostError
		if err == nil || errors.As(err, &lost) {
			t.Fatalf("rank %d: %v; want a ring error", r, err)
		}
		// The holders still hold step 3; the joiner holds nothing (-1
		// when it failed while moving the state, what it passed in, 0,
		// when its ring closed before the holdings were exchanged).
		if (r < 2 && got[r] != 3) || (r == 2 && got[r] > 0) {
			t.Fatalf("rank %d: the failed re-slice says step %d", r, got[r])
		}
	}
	for r := range 2 {
		f := fakes[r]
		var own [2]int
		own[0], own[1] = allreduce.Slice(np, 2, r)
		if f.own != own || f.step != 3 {
			t.Fatalf("holder %d: layout %v at step %d after the failure, want its old slice %v at step 3", r, f.own, f.step, own)
		}
		for i := range f.ownM {
			if math.Float32bits(f.ownM[i]) != math.Float32bits(truth(1, own[0]+i)) || math.Float32bits(f.budV[i%len(f.budV)]) != math.Float32bits(truth(2, f.bud[0]+i%len(f.budV))) {
				t.Fatalf("holder %d: moments changed by the failed re-slice", r)
			}
		}
		for i := range f.params {
			if math.Float32bits(f.params[i]) != math.Float32bits(truth(0, i)) {
				t.Fatalf("clean holder %d: parameter %d changed by the failed re-slice", r, i)
			}
		}
	}
	// Retried in a new generation, the holders still clean (nothing of
	// theirs was written), the joiner gets the state.
	for r, res := range resliceAll(t, fakes, infos) {
		if res.err != nil || res.applied != 3 {
			t.Fatalf("retry: rank %d: %d, %v", r, res.applied, res.err)
		}
		checkHolds(t, r, 3, fakes[r], 3)
	}
}

// TestResliceRandom: random layout changes (old sizes 1-5, new rings 1-5,
// survivors in any order, joiners, dirty and stale ranks, blocks from 1
// element to a few thousand, so also slices that are empty), each on a real
// ring: either an old slice has no surviving holder and every rank says it
// was lost, or every rank ends with the committed state bit for bit and
// the moved floats equal the element-by-element count.
func TestResliceRandom(t *testing.T) {
	defer func(p int) { reslicePiece = p }(reslicePiece)
	reslicePiece = 64
	rng := rand.New(rand.NewPCG(10, 10))
	var nLost, nMoved int
	defer func() {
		t.Logf("%d cases lost a slice, %d moved state", nLost, nMoved)
		if nLost < 5 || nMoved < 20 {
			t.Errorf("the random cases cover too little: %d lost, %d moved", nLost, nMoved)
		}
	}()
	for c := range 60 {
		size := 1 + rng.IntN(5)
		np := 1 + rng.IntN(3000)
		if c%6 == 0 {
			np = 1 + rng.IntN(6) // fewer elements than ranks
		}
		var olds []old
		for _, r := range rng.Perm(size)[:1+rng.IntN(size)] {
			olds = append(olds, old{rank: r, dirty: rng.IntN(5) == 0, stale: rng.IntN(8) == 0})
		}
		olds[0].stale = false // the newest step has a holder
		for range rng.IntN(3) {
			at := rng.IntN(len(olds) + 1)
			olds = slices.Insert(olds, at, old{rank: -1})
		}
		if len(olds) > 5 {
			olds = olds[:5]
		}
		name := fmt.Sprintf("%d/np=%d/size=%d/%v", c, np, size, olds)
		lost := -1
		for k := size - 1; k >= 0; k-- {
			held := false
			for _, o := range olds {
				held = held || (o.rank >= 0 && !o.stale && (o.rank == k || (size > 1 && o.rank == (k+1)%size)))
			}
			if !held {
				lost = k
			}
		}
		n := len(olds)
		fakes := make([]*fakeShard, n)
		infos := make([]ShardInfo, n)
		for r, o := range olds {
			fakes[r], infos[r] = newFake(np, size, 4, o)
		}
		res := resliceAll(t, fakes, infos)
		for r, f := range fakes {
			if lost >= 0 {
				var le *LostError
				if !errors.As(res[r].err, &le) || le.Rank != lost || res[r].applied != -1 {
					t.Fatalf("%s: rank %d: %d, %v; want slice %d lost", name, r, res[r].applied, res[r].err, lost)
				}
				continue
			}
			if res[r].err != nil || res[r].applied != 4 {
				t.Fatalf("%s: rank %d: %d, %v", name, r, res[r].applied, res[r].err)
			}
			checkHolds(t, r, n, f, 4)
		}
		if lost >= 0 {
			nLost++
			continue
		}
		wp, wm := wantMoved(np, size, 4, olds)
		if wp+wm > 0 {
			nMoved++
		}
		if st := res[0].stats; st.ParamFloats != wp || st.MomentFloats != wm {
			t.Fatalf("%s: moved %d parameters and %d moments, the move list says %d and %d", name, st.ParamFloats, st.MomentFloats, wp, wm)
		}
	}
}

package data

import (
	"slices"
	"testing"
)

func TestPermutationDeterministicAndEpochDependent(t *testing.T) {
	a, b := Permutation(42, 0, 1000), Permutation(42, 0, 1000)
	if !slices.Equal(a, b) {
		t.Fatal("same (seed, epoch) gave different orders")
	}
	if slices.Equal(a, Permutation(42, 1, 1000)) || slices.Equal(a, Permutation(43, 0, 1000)) {
		t.Fatal("epoch or seed does not change the order")
	}
	// Pin the order: a change of generator would silently change every run.
	if got := Permutation(42, 0, 10); !slices.Equal(got, pinned) {
		t.Fatalf("Permutation(42, 0, 10) = %v, want %v", got, pinned)
	}
	s := slices.Clone(a)
	slices.Sort(s)
	for i, v := range s {
		if v != i {
			t.Fatalf("not a permutation: sorted[%d] = %d", i, v)
		}
	}
}

var pinned = []int{3, 2, 5, 6, 4, 1, 0, 7, 9, 8}

// TestEverySampleInExactlyOneStep is the epoch invariant, over dataset
// sizes, batch sizes, world sizes 1..8, micro batches and drop_last.
func TestEverySampleInExactlyOneStep(t *testing.T) {
	for _, n := range []int{1, 7, 64, 100, 257} {
		for _, g := range []int{1, 3, 8, 32, 100} {
			for _, dropLast := range []bool{false, true} {
				e, err := NewEpoch(7, 3, n, g, dropLast)
				if dropLast && n < g {
					if err == nil {
						t.Fatalf("n=%d g=%d drop_last: no steps, yet no error", n, g)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				for world := 1; world <= 8; world++ {
					for _, micro := range []int{1, 4} {
						checkEpoch(t, e, world, micro)
					}
				}
			}
		}
	}
}

func checkEpoch(t *testing.T, e *Epoch, world, micro int) {
	t.Helper()
	count := make([]int, e.N)
	for s := 0; s < e.Steps(); s++ {
		b, err := e.Batch(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Indices) != e.GlobalBatch {
			t.Fatalf("n=%d g=%d step %d has %d samples", e.N, e.GlobalBatch, s, len(b.Indices))
		}
		if b.Padding > 0 && s != e.Steps()-1 {
			t.Fatalf("padding in step %d of %d", s, e.Steps())
		}
		// The ranks' micro-batches together are exactly the global batch.
		var union []int
		for rank := 0; rank < world; rank++ {
			share, err := Shard(b.Indices, world, rank)
			if err != nil {
				t.Fatal(err)
			}
			want := e.GlobalBatch / world
			if rank < e.GlobalBatch%world {
				want++
			}
			if len(share) != want {
				t.Fatalf("world %d rank %d got %d samples, want %d", world, rank, len(share), want)
			}
			mbs, _ := MicroBatches(share, micro)
			if len(mbs) != (len(share)+micro-1)/micro {
				t.Fatalf("%d micro-batches for %d samples of %d", len(mbs), len(share), micro)
			}
			for _, mb := range mbs {
				union = append(union, mb...)
			}
		}
		got, want := slices.Clone(union), slices.Clone(b.Indices)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("world %d step %d: ranks hold %v, batch is %v", world, s, got, want)
		}
		for _, i := range b.Fresh() {
			count[i]++
		}
	}
	dropped := 0
	for i, c := range count {
		if c > 1 {
			t.Fatalf("n=%d g=%d: sample %d in %d steps", e.N, e.GlobalBatch, i, c)
		}
		if c == 0 {
			dropped++
		}
	}
	wantDropped := 0
	if e.DropLast {
		wantDropped = e.N % e.GlobalBatch
	}
	if dropped != wantDropped {
		t.Fatalf("n=%d g=%d drop_last=%v: %d samples in no step, want %d", e.N, e.GlobalBatch, e.DropLast, dropped, wantDropped)
	}
}

func TestSamplerErrors(t *testing.T) {
	if _, err := NewEpoch(1, 0, 0, 4, false); err == nil {
		t.Error("empty dataset accepted")
	}
	if _, err := NewEpoch(1, 0, 10, 0, false); err == nil {
		t.Error("zero global batch accepted")
	}
	e, _ := NewEpoch(1, 0, 10, 4, false)
	if _, err := e.Batch(3); err == nil {
		t.Error("step past the epoch accepted")
	}
	if _, err := Shard([]int{1, 2}, 2, 2); err == nil {
		t.Error("rank outside world accepted")
	}
	if _, err := MicroBatches([]int{1}, 0); err == nil {
		t.Error("zero micro batch accepted")
	}
}

// TestLedgerExactlyOnceWithAborts simulates an epoch where every third step
// is aborted once and replayed: every sample ends committed exactly once.
func TestLedgerExactlyOnceWithAborts(t *testing.T) {
	e, err := NewEpoch(5, 0, 100, 8, false)
	if err != nil {
		t.Fatal(err)
	}
	l := NewLedger(e.N)
	for s := 0; s < e.Steps(); s++ {
		b, _ := e.Batch(s)
		if err := l.Assign(s, b.Fresh()); err != nil {
			t.Fatal(err)
		}
		if err := l.Assign(s+1000, b.Fresh()[:1]); err == nil {
			t.Fatal("a sample in flight was assigned to a second step")
		}
		if s%3 == 0 {
			back, err := l.Return(s)
			if err != nil || !slices.Equal(back, b.Fresh()) || !slices.Equal(l.Returned(), back) {
				t.Fatalf("return of step %d: %v %v", s, back, err)
			}
			if err := l.Commit(s); err == nil {
				t.Fatal("commit of a returned step accepted")
			}
			if err := l.Assign(s, l.Returned()); err != nil { // replay
				t.Fatal(err)
			}
			if len(l.Returned()) != 0 {
				t.Fatalf("returned samples still pending after reassignment: %v", l.Returned())
			}
		}
		if !slices.Equal(l.InFlight(), []int{s}) {
			t.Fatalf("in flight %v, want [%d]", l.InFlight(), s)
		}
		if err := l.Commit(s); err != nil {
			t.Fatal(err)
		}
	}
	if !l.Complete() || l.Committed() != e.N || len(l.Missing()) != 0 {
		t.Fatalf("epoch incomplete: %d committed, missing %v", l.Committed(), l.Missing())
	}
	if err := l.Assign(999, []int{0}); err == nil {
		t.Fatal("committed sample assigned again")
	}
}

func TestLedgerRejectsBadAssignments(t *testing.T) {
	l := NewLedger(4)
	for _, bad := range [][]int{{4}, {-1}, {1, 1}} {
		if err := l.Assign(0, bad); err == nil {
			t.Errorf("Assign(%v) accepted", bad)
		}
	}
	if err := l.Assign(0, []int{0, 1}); err != nil {
		t.Fatal(err)
	}
	if err := l.Assign(0, []int{2}); err == nil {
		t.Error("second assignment of an in-flight step accepted")
	}
	if _, err := l.Return(7); err == nil {
		t.Error("return of an unknown step accepted")
	}
	if l.Complete() || !slices.Equal(l.Missing(), []int{0, 1, 2, 3}) {
		t.Errorf("missing %v", l.Missing())
	}
}

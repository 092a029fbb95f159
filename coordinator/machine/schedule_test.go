package machine

import (
	"slices"
	"testing"
)

// TestScheduleAbortReplaysSameSamples checks the ledger handling of an
// abort: the step's samples go back and the replay assigns exactly them,
// and at the end every sample is committed once.
func TestScheduleAbortReplaysSameSamples(t *testing.T) {
	s := newSchedule(Config{Seed: 1, Samples: 10, GlobalBatch: 4, Epochs: 2})
	if s.total != 6 {
		t.Fatalf("total %d, want 6", s.total)
	}
	seen := map[int]int{}
	for g := 0; g < 3; g++ {
		b, err := s.begin(g)
		if err != nil {
			t.Fatal(err)
		}
		if g == 1 {
			if err := s.abort(g); err != nil {
				t.Fatal(err)
			}
			if got := s.ledger.Returned(); !slices.Equal(got, b.Fresh()) {
				t.Fatalf("returned %v, want %v", got, b.Fresh())
			}
			b2, err := s.begin(g)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(b.Indices, b2.Indices) {
				t.Fatalf("replay of step %d has samples %v, first try %v", g, b2.Indices, b.Indices)
			}
		}
		done, err := s.commit(g)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range b.Fresh() {
			seen[i]++
		}
		if done != (g == 2) {
			t.Fatalf("step %d: epochDone %v", g, done)
		}
	}
	for i := 0; i < 10; i++ {
		if seen[i] != 1 {
			t.Fatalf("sample %d committed %d times", i, seen[i])
		}
	}
	if !s.ledger.Complete() {
		t.Fatal("ledger incomplete")
	}
	// A step cannot be begun twice without an abort.
	if _, err := s.begin(3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.begin(3); err == nil {
		t.Fatal("double begin accepted")
	}
}

// TestScheduleResumeMidEpoch: resumed (or rolled back) at step 1, the
// epoch's ledger counts step 0's samples as committed.
func TestScheduleResumeMidEpoch(t *testing.T) {
	s := newSchedule(Config{Seed: 1, Samples: 10, GlobalBatch: 4, Epochs: 1})
	if _, err := s.begin(1); err != nil {
		t.Fatal(err)
	}
	if s.ledger.Committed() != 4 {
		t.Fatalf("resumed at step 1: %d samples counted committed, want 4", s.ledger.Committed())
	}
}

// TestScheduleDropLastEpochCompletes: with drop_last and a dataset that is
// not a multiple of the global batch, the samples after the last full batch
// are in no step, and the epoch still ends complete (found by TestSim: the
// run failed at the end of its first epoch). Without drop_last the short
// batch is padded and every sample is committed once.
func TestScheduleDropLastEpochCompletes(t *testing.T) {
	for _, dropLast := range []bool{true, false} {
		s := newSchedule(Config{Seed: 1, Samples: 7, GlobalBatch: 2, DropLast: dropLast, Epochs: 2})
		want := map[bool]int{true: 6, false: 8}[dropLast]
		if s.total != want {
			t.Fatalf("drop_last %v: %d steps, want %d", dropLast, s.total, want)
		}
		for g := 0; g < s.total; g++ {
			if _, err := s.begin(g); err != nil {
				t.Fatal(err)
			}
			done, err := s.commit(g)
			if err != nil {
				t.Fatalf("drop_last %v, step %d: %v", dropLast, g, err)
			}
			if done != ((g+1)%(s.total/2) == 0) {
				t.Fatalf("drop_last %v, step %d: epoch done %v", dropLast, g, done)
			}
		}
	}
}

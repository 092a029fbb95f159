package data

import "testing"

// TestLedgerFrom: a ledger started at step st of an epoch counts exactly
// the samples of steps 0..st-1 committed, and the epoch completes when the
// remaining steps commit.
func TestLedgerFrom(t *testing.T) {
	const n, gb = 50, 8 // 7 steps, the last padded
	ep, err := NewEpoch(3, 1, n, gb, false)
	if err != nil {
		t.Fatal(err)
	}
	for st := 0; st <= ep.Steps(); st++ {
		l, err := LedgerFrom(ep, n, st)
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for k := 0; k < st; k++ {
			b, _ := ep.Batch(k)
			want += len(b.Fresh())
		}
		if l.Committed() != want {
			t.Fatalf("from step %d: %d committed, want %d", st, l.Committed(), want)
		}
		for k := st; k < ep.Steps(); k++ {
			b, _ := ep.Batch(k)
			if err := l.Assign(k, b.Fresh()); err != nil {
				t.Fatal(err)
			}
			if err := l.Commit(k); err != nil {
				t.Fatal(err)
			}
		}
		if !l.Complete() {
			t.Fatalf("from step %d: epoch incomplete after the remaining steps (missing %v)", st, l.Missing())
		}
	}
	if _, err := LedgerFrom(ep, n, ep.Steps()+1); err == nil {
		t.Fatal("a ledger past the epoch's last step was accepted")
	}
}

package hf_test

import (
	"sync"
	"testing"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

// TestWatchSurvivesRopeTables: a Llama model's first forward pass builds
// its rotary tables; the gradient hooks registered before it must still
// report every parameter exactly once (the table rebuild once freed the
// hooks mid-forward, and the pass then crashed on a nil watch).
func TestWatchSurvivesRopeTables(t *testing.T) {
	dir := t.TempDir()
	oracle(t, "make", "llama", "causal_lm", dir)
	m, err := hf.Load(dir, hf.Options{Task: data.CausalLM, Dropout: zero(), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.WatchGrads(); err != nil {
		t.Fatal(err)
	}
	b := readBatch(t, dir, data.CausalLM)
	for pass := range 2 {
		var mu sync.Mutex
		seen := map[int]int{}
		if _, _, err := m.ForwardBackwardReady(b, func(i int) {
			mu.Lock()
			seen[i]++
			mu.Unlock()
		}); err != nil {
			t.Fatalf("pass %d: %v", pass, err)
		}
		if len(seen) != len(m.Params().Specs) {
			t.Fatalf("pass %d: %d of %d parameters reported", pass, len(seen), len(m.Params().Specs))
		}
		for i, n := range seen {
			if n != 1 {
				t.Fatalf("pass %d: parameter %d reported %d times", pass, i, n)
			}
		}
	}
}

package coordinator

import (
	"slices"
	"testing"

	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// TestMaskedStepsAreDeterministic: the batches of a masked-LM step depend
// only on (seed, epoch, sample), so a step re-sent after an abort or a
// resume carries the same masks, another epoch masks afresh, and the
// step's count is its number of masked tokens, split over ranks exactly.
// stepIndices is global step g's batch of s (what the machine's schedule
// sends).
func stepIndices(t *testing.T, s *Schedule, g int) []int {
	t.Helper()
	e, st, err := s.Locate(g)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := data.NewEpoch(s.Seed, e, s.N, s.GlobalBatch, s.DropLast)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ep.Batch(st)
	if err != nil {
		t.Fatal(err)
	}
	return b.Indices
}

func TestMaskedStepsAreDeterministic(t *testing.T) {
	var train []data.Encoded
	for i := range 40 {
		ids := []int{1}
		for j := range 20 + i%7 {
			ids = append(ids, 10+(i*31+j)%500)
		}
		ids = append(ids, 2)
		train = append(train, data.Encoded{IDs: ids, TypeIDs: make([]int, len(ids))})
	}
	mc := data.MaskConfig{Prob: 0.15, Seed: 42, Mask: 3, Vocab: 600, Special: []int{0, 1, 2}}
	newC := func() *Coordinator {
		return &Coordinator{task: data.MaskedLM, train: train, mask: &mc,
			sched: &Schedule{Seed: 42, N: len(train), GlobalBatch: 8, Epochs: 3}}
	}
	batches := func(c *Coordinator, g int) ([]*control.Batch, int) {
		enc, idx, err := c.stepSamples(g, stepIndices(t, c.sched, g))
		if err != nil {
			t.Fatal(err)
		}
		var all []*control.Batch
		labelled := 0
		for r := range 3 {
			bs, err := RankBatches(enc, idx, 3, r, 2, data.MaskedLM, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range bs {
				for _, l := range b.Labels {
					if l != data.IgnoreIndex {
						labelled++
					}
				}
			}
			all = append(all, bs...)
		}
		count := GlobalCount(data.MaskedLM, enc, idx)
		if count != labelled || count == 0 {
			t.Fatalf("step %d: count %d, ranks' batches hold %d masked tokens", g, count, labelled)
		}
		return all, count
	}
	a, _ := batches(newC(), 2)
	b, _ := batches(newC(), 2) // a fresh coordinator: as after a resume
	if len(a) != len(b) {
		t.Fatal("different micro-batches")
	}
	for i := range a {
		if !slices.Equal(a[i].InputIDs, b[i].InputIDs) || !slices.Equal(a[i].Labels, b[i].Labels) {
			t.Fatalf("micro-batch %d of step 2 differs between two coordinators", i)
		}
	}
	// Step 2 and step 2+5 (the next epoch, 5 steps per epoch) hold the
	// same samples in another order; their masks must differ.
	c := newC()
	idx0 := stepIndices(t, c.sched, 0)
	e0, _, _ := c.stepSamples(0, idx0)
	e1, _, _ := c.stepSamples(5, idx0)
	same := 0
	for i := range e0 {
		if slices.Equal(e0[i].Labels, e1[i].Labels) {
			same++
		}
	}
	if same == len(e0) {
		t.Error("epoch 1 masked the samples as epoch 0 did")
	}
}

func TestTokenClassificationMetricsAndCount(t *testing.T) {
	enc := []data.Encoded{{IDs: []int{1, 5, 6, 2}, Labels: []int{-100, 0, -100, -100}}, {IDs: []int{1, 7, 2}, Labels: []int{-100, 1, -100}}}
	if n := GlobalCount(data.TokenClassification, enc, []int{0, 1, 1}); n != 3 {
		t.Errorf("token-classification count %d, want 3 labelled tokens", n)
	}
	m := Metrics(data.TokenClassification, 2, control.EvalSums{Count: 4, Correct: 3, LossSum: 2, Confusion: []float64{2, 1, 0, 1}})
	if m["accuracy"] != 0.75 {
		t.Errorf("token accuracy %v, want 0.75", m["accuracy"])
	}
	if ppl := Metrics(data.MaskedLM, 0, control.EvalSums{Count: 2, LossSum: 2})["perplexity"]; ppl < 2.718 || ppl > 2.719 {
		t.Errorf("masked-LM perplexity %v, want e", ppl)
	}
}

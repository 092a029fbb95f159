package node

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/node/agent"
)

// splitGPT2 is a tied GPT-2 with two layers and dropout off (ranks in one
// process compute what ranks in many do), its vocabulary big enough that a
// step's tokens use only some rows.
const splitGPT2 = `{
  "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 300, "n_embd": 32,
  "n_layer": 2, "n_head": 4, "n_inner": null, "n_positions": 64, "activation_function": "gelu_new",
  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
  "initializer_range": 0.02, "tie_word_embeddings": true
}`

func splitTrainers(t *testing.T, n int, split bool) []*Trainer {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(splitGPT2), 0o644); err != nil {
		t.Fatal(err)
	}
	trs := make([]*Trainer, n)
	for r := range trs {
		tr := &Trainer{}
		if _, err := tr.Setup(agent.Job{ModelDir: d, Task: "causal_lm", Init: "random", Seed: 5, Device: "cpu",
			Train: control.TrainSpec{Optimizer: "adamw", LR: 1e-2, Schedule: "constant", Betas: []float64{0.9, 0.999}, Eps: 1e-8,
				WeightDecay: 0.01, MaxGradNorm: 1, Threads: 1, SparseEmbedding: split}, TotalSteps: 10}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tr.Close() })
		trs[r] = tr
	}
	return trs
}

// lmBatches makes one rank's micro-batches: rows of tokens drawn from a
// window of the vocabulary that depends on the rank, so that the ranks use
// different rows, and some rows shorter (padding).
func lmBatches(rng *rand.Rand, rank, k, rows, seq int) []*data.Batch {
	var out []*data.Batch
	for range k {
		b := &data.Batch{Size: rows, Seq: seq}
		for range rows {
			n := seq - rng.IntN(3)
			for j := range seq {
				id, m, l := int64(0), int64(0), int64(data.IgnoreIndex)
				if j < n {
					id = int64(1 + 40*rank + rng.IntN(120))
					m, l = 1, id
					b.Tokens++
				}
				b.InputIDs = append(b.InputIDs, id)
				b.AttentionMask = append(b.AttentionMask, m)
				b.Labels = append(b.Labels, l)
			}
		}
		out = append(out, b)
	}
	return out
}

// runLM trains n GPT-2 ranks for steps steps through agent.RunStep on real
// rings, with micro micro-batches per rank and step, the tied embedding
// split or not, overlap on or off. It checks that every rank holds the same
// weights and returns rank 0's parameters and the last step's results.
func runLM(t *testing.T, tr allreduce.Transport, n, steps, micro int, split, overlap bool, starters func([]*allreduce.Ring) []bucket.Starter) ([]float32, []agent.StepResult) {
	t.Helper()
	trs := splitTrainers(t, n, split)
	rings := loopbackRings(t, tr, n)
	st := make([]bucket.Starter, n)
	for r := range n {
		st[r] = rings[r]
	}
	if starters != nil {
		st = starters(rings)
	}
	plan, err := bucket.NewPlan(int(trs[0].m.NumParams()), trs[0].GradSegments(), 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(4, 2))
	results := make([]agent.StepResult, n)
	for step := range steps {
		batches := make([][]*data.Batch, n)
		count := 0
		for r := range n {
			batches[r] = lmBatches(rng, r, micro, 3, 10)
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for r := range n {
			wg.Go(func() {
				res, err := agent.RunStep(context.Background(), agent.StepSpec{Trainer: trs[r], Plan: plan, Overlap: overlap, Ring: st[r]}, batches[r])
				if err == nil {
					err = res.RingErr
				}
				results[r], errs[r] = res, err
			})
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("step %d rank %d: %v", step, r, err)
			}
			count += results[r].Reduced.Count
		}
		for r := range n {
			if err := trs[r].Apply(step, count); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, p := identicalReplicas(t, trs)
	return p, results
}

// TestSplitEmbeddingBitIdentical: real libtorch GPT-2 ranks on real
// loopback rings, both transports, N = 2 and 3, two micro-batches per step,
// the tied embedding split (allreduce.sparse_embedding): overlap on and off
// give bit-identical weights; the split's rows are one more operation per
// step; and the weights equal those of the unsplit reduction up to float
// rounding (the sums are added in another order).
func TestSplitEmbeddingBitIdentical(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		for _, n := range []int{2, 3} {
			t.Run(fmt.Sprintf("%s/n=%d", tr, n), func(t *testing.T) {
				off, roff := runLM(t, tr, n, 3, 2, true, false, nil)
				on, ron := runLM(t, tr, n, 3, 2, true, true, nil)
				if !bytesEqual(off, on) {
					t.Fatalf("split embedding: overlap on and off give different weights")
				}
				plain, rplain := runLM(t, tr, n, 3, 2, false, true, nil)
				if d := relDiff(on, plain); d > 1e-5 {
					t.Errorf("split and unsplit weights differ by %.3g (relative L2)", d)
				} else {
					t.Logf("split vs unsplit: relative L2 difference %.3g", d)
				}
				for r := range n {
					if ron[r].Reduced.Buckets != rplain[r].Reduced.Buckets+1 || roff[r].Reduced.Buckets != ron[r].Reduced.Buckets {
						t.Errorf("rank %d: %d operations split (on), %d split (off), %d unsplit", r, ron[r].Reduced.Buckets, roff[r].Reduced.Buckets, rplain[r].Reduced.Buckets)
					}
					if ron[r].Comm.Overlapped <= 0 {
						t.Errorf("rank %d: no comm during backward: %+v", r, ron[r].Comm)
					}
				}
				t.Logf("rank 0, last step: split on %+v; split off %+v; unsplit on %+v", ron[0].Comm, roff[0].Comm, rplain[0].Comm)
			})
		}
	}
}

func bytesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// TestSplitUntiedEmbedding: BERT classification's word embeddings are
// untied, so split, their matrix gets no gradient and its segment is in no
// bucket; only the rows are reduced. Overlap on and off give bit-identical
// weights (both transports, N = 3, two micro-batches), and those differ
// from the unsplit reduction's by float rounding only: every rank holds
// the same weights, which the digests check.
func TestSplitUntiedEmbedding(t *testing.T) {
	skipped := 0
	for _, sg := range overlapTrainersSplit(t, 1, true)[0].GradSegments() {
		if sg.Skip {
			skipped++
		}
	}
	if skipped != 1 {
		t.Fatalf("%d segments skipped with the split on, want the word embeddings'", skipped)
	}
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		t.Run(tr.String(), func(t *testing.T) {
			off, roff, _ := runStepsSplit(t, tr, allreduce.Float32, 3, 3, 2, 8<<10, false, true)
			on, ron, pon := runStepsSplit(t, tr, allreduce.Float32, 3, 3, 2, 8<<10, true, true)
			if !bytes.Equal(off, on) {
				t.Fatalf("split untied embedding: overlap on and off give different weights")
			}
			_, rplain, pplain := runStepsSplit(t, tr, allreduce.Float32, 3, 3, 2, 8<<10, true, false)
			if d := relDiff(pon, pplain); d > 1e-5 {
				t.Errorf("split and unsplit weights differ by %.3g (relative L2)", d)
			} else {
				t.Logf("split vs unsplit: relative L2 difference %.3g", d)
			}
			// The matrix's bucket is gone and the rows are one operation.
			if ron[0].Reduced.Buckets != roff[0].Reduced.Buckets || ron[0].Reduced.Buckets > rplain[0].Reduced.Buckets {
				t.Errorf("%d operations split (on), %d split (off), %d unsplit", ron[0].Reduced.Buckets, roff[0].Reduced.Buckets, rplain[0].Reduced.Buckets)
			}
			t.Logf("rank 0, last step: split on %+v; unsplit on %+v", ron[0].Comm, rplain[0].Comm)
		})
	}
}

// TestSplitEmbeddingPeerDiesAgreeing: a rank dies as the step starts,
// right after starting the agreement on the rows (the step's first
// operation). Every rank's step
// fails with a ring error, promptly, and the survivors discard the step and
// hold no rows.
func TestSplitEmbeddingPeerDiesAgreeing(t *testing.T) {
	trs := splitTrainers(t, 3, true)
	rings := loopbackRings(t, allreduce.TCP, 3)
	plan, err := bucket.NewPlan(int(trs[0].m.NumParams()), trs[0].GradSegments(), 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	dying := &dyingRing{Ring: rings[2]}
	starters := []bucket.Starter{rings[0], rings[1], dying}
	rng := rand.New(rand.NewPCG(3, 4))
	for step := range 2 {
		dying.armed = step == 1 // step 0 is good, so every link is up
		res := make([]agent.StepResult, 3)
		errs := make([]error, 3)
		begin := time.Now()
		var wg sync.WaitGroup
		for r := range 3 {
			b := lmBatches(rng, r, 2, 3, 10)
			wg.Go(func() {
				res[r], errs[r] = agent.RunStep(context.Background(), agent.StepSpec{Trainer: trs[r], Plan: plan, Overlap: true, Ring: starters[r]}, b)
			})
		}
		wg.Wait()
		for r := range 3 {
			if errs[r] != nil {
				t.Fatalf("step %d rank %d: local error %v", step, r, errs[r])
			}
		}
		if step == 0 {
			count := 0
			for r := range 3 {
				if res[r].RingErr != nil {
					t.Fatalf("good step, rank %d: %v", r, res[r].RingErr)
				}
				count += res[r].Reduced.Count
			}
			for r := range 3 {
				if err := trs[r].Apply(0, count); err != nil {
					t.Fatal(err)
				}
			}
			continue
		}
		for r := range 3 {
			if res[r].RingErr == nil {
				t.Errorf("rank %d: step succeeded although rank 2 died", r)
			} else {
				t.Logf("rank %d: %v", r, res[r].RingErr)
			}
		}
		if el := time.Since(begin); el > time.Minute {
			t.Errorf("the failure took %v", el)
		}
		for r := range 2 {
			if err := trs[r].Discard(); err != nil {
				t.Fatal(err)
			}
			if trs[r].m.RowGradLen() != 0 {
				t.Errorf("rank %d holds rows after Discard", r)
			}
		}
	}
}

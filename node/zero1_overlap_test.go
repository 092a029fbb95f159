package node

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/node/agent"
)

// zrun is one zero1 training run of runZero1.
type zrun struct {
	tr                          allreduce.Transport
	wire                        allreduce.Wire
	shard                       string // config.ShardZero1, or config.ShardNone for the replicated reference
	n, steps, micro, bucketSize int
	overlap                     bool
	// whole reduces the way zero1 did before buckets: every micro-batch
	// accumulated, then one reduce-scatter of the whole gradient
	// (agent.ShardedReduce).
	whole bool
	// lm trains the tied GPT-2 of rows_test.go (split: its embedding
	// split), else the two-layer BERT of overlap_test.go.
	lm, split bool
}

// zeroResult is what runZero1 returns: rank 0's digest and parameters
// (after checking every rank holds the same), every rank's held moments
// (own m, own v, buddy m, buddy v; nil under none) and the last step's
// results.
type zeroResult struct {
	digest  []byte
	params  []float32
	moments [][4][]float32
	res     []agent.StepResult
}

// runZero1 trains c.n in-process libtorch ranks on real loopback rings as
// the agent does: agent.RunStep with the zero1 reduction (StepSpec.Shard),
// then agent.ShardedApply; or, with c.whole, the whole-block reduction of
// agent.ShardedReduce; or, under none, the all-reduce and Apply.
func runZero1(t *testing.T, c zrun) zeroResult {
	t.Helper()
	trs := zeroTrainers(t, c)
	rings := loopbackRingsWire(t, c.tr, c.wire, c.n)
	return trainZero1(t, c, trs, rings)
}

// zeroTrainers makes c.n trainers of c's model and shard mode, laid out as
// the ranks of a ring of c.n.
func zeroTrainers(t *testing.T, c zrun) []*Trainer {
	t.Helper()
	cfgJSON, task := overlapBert, "classification"
	if c.lm {
		cfgJSON, task = splitGPT2, "causal_lm"
	}
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(cfgJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	n := c.n
	trs := make([]*Trainer, n)
	for r := range trs {
		tr := &Trainer{}
		if _, err := tr.Setup(agent.Job{ModelDir: d, Task: task, NumLabels: 2, Init: "random", Seed: 5, Device: "cpu",
			Train: control.TrainSpec{Optimizer: "adamw", LR: 1e-2, Schedule: "constant", Betas: []float64{0.9, 0.999}, Eps: 1e-8,
				WeightDecay: 0.01, MaxGradNorm: 1, Threads: 1, SparseEmbedding: c.split, ShardOptimizer: c.shard},
			TotalSteps: 10, Rank: r, WorldSize: n}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tr.Close() })
		trs[r] = tr
	}
	return trs
}

// trainZero1 is runZero1 on given trainers and rings.
func trainZero1(t *testing.T, c zrun, trs []*Trainer, rings []*allreduce.Ring) zeroResult {
	t.Helper()
	n := c.n
	zero1 := c.shard == config.ShardZero1
	ctx := context.Background()
	if zero1 {
		runRanks(t, n, func(r int) error {
			_, err := agent.Reslice(ctx, rings[r], trs[r], agent.ShardInfo{Applied: 0})
			return err
		})
	}
	plan, err := bucket.NewPlan(int(trs[0].m.NumParams()), trs[0].GradSegments(), c.bucketSize)
	if err != nil {
		t.Fatal(err)
	}
	if c.bucketSize > 0 && len(plan.Buckets) < 5 {
		t.Fatalf("only %d buckets of %d bytes", len(plan.Buckets), c.bucketSize)
	}
	rng := rand.New(rand.NewPCG(4, 2))
	results := make([]agent.StepResult, n)
	for step := range c.steps {
		batches := make([][]*data.Batch, n)
		for r := range n {
			if c.lm {
				batches[r] = lmBatches(rng, r, c.micro, 3, 10)
			} else {
				batches[r] = microBatches(t, rng, c.micro, 3)
			}
		}
		sumsq := make([]float64, n)
		counts := make([]int, n)
		runRanks(t, n, func(r int) error {
			if c.whole {
				for _, b := range batches[r] {
					_, k, err := trs[r].Accumulate(b)
					if err != nil {
						return err
					}
					counts[r] += k
				}
				g, err := trs[r].Gradients()
				if err != nil {
					return err
				}
				sumsq[r], err = agent.ShardedReduce(ctx, rings[r], trs[r], g)
				return err
			}
			sp := agent.StepSpec{Trainer: trs[r], Plan: plan, Overlap: c.overlap, Ring: rings[r]}
			if zero1 {
				sp.Shard = func(ctx context.Context) (err error) {
					sumsq[r], err = agent.ShardedSumSq(ctx, rings[r], trs[r])
					return err
				}
			}
			res, err := agent.RunStep(ctx, sp, batches[r])
			if err == nil {
				err = res.RingErr
			}
			results[r], counts[r] = res, res.Reduced.Count
			return err
		})
		total := 0
		for _, k := range counts {
			total += k
		}
		runRanks(t, n, func(r int) error {
			if zero1 {
				return agent.ShardedApply(ctx, rings[r], trs[r], step, total, sumsq[r])
			}
			return trs[r].Apply(step, total)
		})
	}
	out := zeroResult{res: results}
	out.digest, out.params = identicalReplicas(t, trs)
	if zero1 {
		for _, tr := range trs {
			var m [4][]float32
			for i := range 4 {
				h, err := tr.m.ShardMomentsHost(i/2, i%2)
				if err != nil {
					t.Fatal(err)
				}
				m[i] = append([]float32(nil), h...)
			}
			out.moments = append(out.moments, m)
		}
	}
	return out
}

// sameMoments fails unless a and b hold bit-identical moments on every
// rank.
func sameMoments(t *testing.T, what string, a, b zeroResult) {
	t.Helper()
	for r := range a.moments {
		for i := range 4 {
			if !bitsEqual(a.moments[r][i], b.moments[r][i]) {
				t.Fatalf("%s: rank %d's moment block %d differs", what, r, i)
			}
		}
	}
}

// TestZero1OverlapBitIdentical: zero1 with its gradient reduce-scattered
// bucket by bucket (windows of the whole block) during the last backward
// gives bit-identical parameters and moments to the same buckets reduced
// after backward and to one reduce-scatter of the whole gradient (zero1's
// path before buckets): real libtorch ranks, real loopback rings, both
// transports, N = 2 and 3, two micro-batches per step (accumulation).
// With overlap on, buckets really run during backward; off, none does.
func TestZero1OverlapBitIdentical(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		for _, n := range []int{2, 3} {
			t.Run(fmt.Sprintf("%s/n=%d", tr, n), func(t *testing.T) {
				c := zrun{tr: tr, shard: config.ShardZero1, n: n, steps: 3, micro: 2, bucketSize: 8 << 10}
				c.whole = true
				whole := runZero1(t, c)
				c.whole = false
				off := runZero1(t, c)
				c.overlap = true
				on := runZero1(t, c)
				if !bytes.Equal(off.digest, whole.digest) {
					t.Fatal("zero1 in buckets after backward differs from zero1's whole-block reduce-scatter")
				}
				if !bytes.Equal(on.digest, off.digest) {
					t.Fatal("zero1: overlap on and off give different weights")
				}
				sameMoments(t, "buckets vs whole block", off, whole)
				sameMoments(t, "overlap on vs off", on, off)
				for r := range n {
					if on.res[r].Comm.Overlapped <= 0 {
						t.Errorf("rank %d: overlap on, but no bucket was reduced during backward: %+v", r, on.res[r].Comm)
					}
					if off.res[r].Comm.Overlapped != 0 {
						t.Errorf("rank %d: overlap off, but comm before the end of backward: %+v", r, off.res[r].Comm)
					}
					if on.res[r].Reduced.Buckets < 5 || on.res[r].Reduced.Buckets != off.res[r].Reduced.Buckets {
						t.Errorf("rank %d: %d buckets on, %d off", r, on.res[r].Reduced.Buckets, off.res[r].Reduced.Buckets)
					}
					if on.res[r].Reduced.ExposedMS <= 0 || on.res[r].Reduced.OverlappedMS <= 0 {
						t.Errorf("rank %d: the step's report lacks its exposed or overlapped comm: %+v", r, on.res[r].Reduced)
					}
				}
				t.Logf("rank 0, last step: overlap on %+v; off %+v", on.res[0].Comm, off.res[0].Comm)
			})
		}
	}
}

// TestZero1OverlapBF16Wire: with the gradient in bfloat16 on the wire, the
// windows still give zero1 bit-identical weights to the whole-block
// reduce-scatter (the owner rounds its slice at the same hop).
func TestZero1OverlapBF16Wire(t *testing.T) {
	c := zrun{tr: allreduce.TCP, wire: allreduce.BFloat16, shard: config.ShardZero1, n: 3, steps: 2, micro: 2, bucketSize: 8 << 10, whole: true}
	whole := runZero1(t, c)
	c.whole, c.overlap = false, true
	on := runZero1(t, c)
	if !bytes.Equal(on.digest, whole.digest) {
		t.Fatal("zero1 with a bf16 wire: buckets overlapped and the whole block give different weights")
	}
	sameMoments(t, "bf16 wire", on, whole)
}

// TestZero1SplitEmbedding: the tied GPT-2 embedding split
// (allreduce.sparse_embedding) under zero1. The rows, all-reduced after the
// reduce-scattered buckets, land in the ranks' slices: overlap on and off
// agree bit for bit, and the weights equal replicated AdamW's with the
// same split (checked against PyTorch in model/hf) and zero1's without the
// split to float rounding. Both transports, N = 3, two micro-batches.
// At this learning rate AdamW magnifies rounding: zero1 vs replicated
// without the split, and split vs unsplit under none, already differ by
// 1.2e-6 (relative L2), so the bound is 1e-5; rows missing from a slice
// would show at 1e-3 and more.
func TestZero1SplitEmbedding(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		t.Run(tr.String(), func(t *testing.T) {
			c := zrun{tr: tr, shard: config.ShardZero1, n: 3, steps: 3, micro: 2, bucketSize: 8 << 10, lm: true, split: true}
			off := runZero1(t, c)
			c.overlap = true
			on := runZero1(t, c)
			if !bytes.Equal(on.digest, off.digest) {
				t.Fatal("zero1 split embedding: overlap on and off give different weights")
			}
			sameMoments(t, "split, overlap on vs off", on, off)
			c.split = false
			plain := runZero1(t, c)
			c.split, c.shard = true, config.ShardNone
			repl := runZero1(t, c)
			init := splitTrainers(t, 1, false)[0]
			p0 := make([]float32, init.m.NumParams())
			if err := init.m.CopyParamsTo(p0); err != nil {
				t.Fatal(err)
			}
			if moved := relDiff(p0, on.params); moved < 1e-3 {
				t.Fatalf("training moved the parameters by %.3g only: the comparison proves nothing", moved)
			}
			if d := relDiff(on.params, repl.params); d > 1e-5 {
				t.Errorf("zero1 split differs from replicated split AdamW by %.3g (relative L2), want <= 1e-5", d)
			} else {
				t.Logf("zero1 split vs replicated split: %.3g", d)
			}
			if d := relDiff(on.params, plain.params); d > 1e-5 {
				t.Errorf("zero1 split and unsplit weights differ by %.3g (relative L2)", d)
			} else {
				t.Logf("zero1 split vs unsplit: %.3g", d)
			}
			for r := range 3 {
				if on.res[r].Reduced.Buckets != plain.res[r].Reduced.Buckets+1 {
					t.Errorf("rank %d: %d operations split, %d unsplit: the rows should be one more", r, on.res[r].Reduced.Buckets, plain.res[r].Reduced.Buckets)
				}
			}
		})
	}
}

// TestZero1SplitUntiedEmbedding: BERT's untied word embeddings split under
// zero1: their segment is in no bucket (zero on every rank), the rows are
// folded into the slices; overlap on and off agree bit for bit and equal
// replicated AdamW with the same split to 1e-6.
func TestZero1SplitUntiedEmbedding(t *testing.T) {
	c := zrun{tr: allreduce.TCP, shard: config.ShardZero1, n: 3, steps: 3, micro: 2, bucketSize: 8 << 10, split: true}
	off := runZero1(t, c)
	c.overlap = true
	on := runZero1(t, c)
	if !bytes.Equal(on.digest, off.digest) {
		t.Fatal("zero1 split untied embedding: overlap on and off give different weights")
	}
	c.shard = config.ShardNone
	repl := runZero1(t, c)
	if d := relDiff(on.params, repl.params); d > 1e-6 {
		t.Errorf("zero1 split differs from replicated split AdamW by %.3g (relative L2), want <= 1e-6", d)
	} else {
		t.Logf("zero1 split vs replicated split: %.3g", d)
	}
}

// TestZero1OverlapPeerDiesMidBucket: under zero1 with overlap on, rank 2
// dies right after starting the step's first window, while the others are
// still in backward. Every rank's step fails with a ring error (not a
// local one: the node lives on), promptly, not by the ring's deadline, and
// the survivors discard the step's gradient.
func TestZero1OverlapPeerDiesMidBucket(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		t.Run(tr.String(), func(t *testing.T) {
			c := zrun{tr: tr, shard: config.ShardZero1, n: 3, lm: true}
			trs := zeroTrainers(t, c)
			rings := loopbackRings(t, tr, 3)
			ctx := context.Background()
			runRanks(t, 3, func(r int) error {
				_, err := agent.Reslice(ctx, rings[r], trs[r], agent.ShardInfo{Applied: 0})
				return err
			})
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
				sumsq := make([]float64, 3)
				begin := time.Now()
				var wg sync.WaitGroup
				for r := range 3 {
					b := lmBatches(rng, r, 2, 3, 10)
					wg.Go(func() {
						sp := agent.StepSpec{Trainer: trs[r], Plan: plan, Overlap: true, Ring: starters[r],
							Shard: func(ctx context.Context) (err error) {
								sumsq[r], err = agent.ShardedSumSq(ctx, rings[r], trs[r])
								return err
							}}
						res[r], errs[r] = agent.RunStep(ctx, sp, b)
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
					runRanks(t, 3, func(r int) error { return agent.ShardedApply(ctx, rings[r], trs[r], 0, count, sumsq[r]) })
					continue
				}
				checkPeerDeathDiscarded(t, res, trs, begin)
			}
		})
	}
}

// plainStarter hides a ring's StartWindow: a starter that can only
// all-reduce.
type plainStarter struct{ r *allreduce.Ring }

func (p plainStarter) Start(ctx context.Context, buf []float32) (*allreduce.Op, error) {
	return p.r.Start(ctx, buf)
}

// TestZero1NeedsWindows: a zero1 step on a starter that cannot reduce
// windows of the gradient is refused before any micro-batch runs, with an
// error naming the starter, and leaves the gradient untouched.
func TestZero1NeedsWindows(t *testing.T) {
	c := zrun{tr: allreduce.TCP, shard: config.ShardZero1, n: 1}
	trs := zeroTrainers(t, c)
	rings := loopbackRings(t, allreduce.TCP, 1)
	plan, err := bucket.NewPlan(int(trs[0].m.NumParams()), trs[0].GradSegments(), 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	sp := agent.StepSpec{Trainer: trs[0], Plan: plan, Overlap: true, Ring: plainStarter{rings[0]},
		Shard: func(context.Context) error { return nil }}
	_, err = agent.RunStep(context.Background(), sp, microBatches(t, rand.New(rand.NewPCG(1, 1)), 1, 3))
	if err == nil || !strings.Contains(err.Error(), "cannot reduce windows") || !strings.Contains(err.Error(), "plainStarter") {
		t.Fatalf("got %v, want a refusal naming the starter", err)
	}
	for _, g := range trs[0].GradBuffer() {
		if g != 0 {
			t.Fatal("the refused step touched the gradient")
		}
	}
}

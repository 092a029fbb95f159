package node

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/node/agent"
)

// overlapBert has two layers, so that backward has blocks to overlap with,
// and dropout off, so that ranks in one process compute the same thing as
// ranks in many.
const overlapBert = `{
  "architectures": ["BertForSequenceClassification"], "model_type": "bert",
  "vocab_size": 200, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
  "intermediate_size": 64, "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
  "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 32, "type_vocab_size": 2,
  "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0
}`

func overlapTrainers(t *testing.T, n int) []*Trainer {
	t.Helper()
	return overlapTrainersSplit(t, n, false)
}

// overlapTrainersSplit is overlapTrainers with the (untied) word embedding
// split or not (allreduce.sparse_embedding).
func overlapTrainersSplit(t *testing.T, n int, split bool) []*Trainer {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(overlapBert), 0o644); err != nil {
		t.Fatal(err)
	}
	trs := make([]*Trainer, n)
	for r := range trs {
		tr := &Trainer{}
		if _, err := tr.Setup(agent.Job{ModelDir: d, Task: "classification", NumLabels: 2, Init: "random", Seed: 5, Device: "cpu",
			Train: control.TrainSpec{Optimizer: "adamw", LR: 1e-2, Schedule: "constant", Betas: []float64{0.9, 0.999}, Eps: 1e-8,
				WeightDecay: 0.01, MaxGradNorm: 1, Threads: 1, SparseEmbedding: split}, TotalSteps: 10}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tr.Close() })
		trs[r] = tr
	}
	return trs
}

var ringKey = func() auth.Key {
	k, err := auth.GenerateKey()
	if err != nil {
		panic(err)
	}
	return k
}()

func loopbackRings(t *testing.T, tr allreduce.Transport, n int) []*allreduce.Ring {
	return loopbackRingsWire(t, tr, allreduce.Float32, n)
}

func loopbackRingsWire(t *testing.T, tr allreduce.Transport, wire allreduce.Wire, n int) []*allreduce.Ring {
	t.Helper()
	ls := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i], addrs[i] = l, l.Addr().String()
	}
	rings := make([]*allreduce.Ring, n)
	for i := range rings {
		r, err := allreduce.New(allreduce.Config{Generation: 1, Rank: i, Peers: addrs, Listener: ls[i], Key: ringKey,
			Timeout: 2 * time.Minute, Transport: tr, ChunkBytes: 8 << 10, Wire: wire})
		if err != nil {
			t.Fatal(err)
		}
		rings[i] = r
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, r := range rings {
			wg.Go(func() { _ = r.Close() })
		}
		wg.Wait()
	})
	return rings
}

// microBatches makes rank r's micro-batches of one step: rows of random
// tokens with a label that depends on them.
func microBatches(t *testing.T, rng *rand.Rand, k, rows int) []*data.Batch {
	t.Helper()
	var out []*data.Batch
	for range k {
		var enc []data.Encoded
		for range rows {
			n := 3 + rng.IntN(10)
			ids := []int{2}
			label := 0
			for range n {
				id := 5 + rng.IntN(190)
				if id == 7 {
					label = 1
				}
				ids = append(ids, id)
			}
			ids = append(ids, 3)
			enc = append(enc, data.Encoded{IDs: ids, TypeIDs: make([]int, len(ids)), Label: label})
		}
		b, err := data.Collate(enc, data.Classification, 0)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// runSteps trains n in-process libtorch ranks for steps steps on real rings
// of transport tr, through agent.RunStep (the code the node runs per step),
// with micro micro-batches per rank per step, buckets of bucketBytes and
// overlap on or off. It returns rank 0's digest, after checking that all
// ranks agree, and the last step's figures per rank.
func runSteps(t *testing.T, tr allreduce.Transport, n, steps, micro, bucketBytes int, overlap bool) ([]byte, []agent.StepResult) {
	return runStepsWire(t, tr, allreduce.Float32, n, steps, micro, bucketBytes, overlap)
}

func runStepsWire(t *testing.T, tr allreduce.Transport, wire allreduce.Wire, n, steps, micro, bucketBytes int, overlap bool) ([]byte, []agent.StepResult) {
	t.Helper()
	d, res, _ := runStepsSplit(t, tr, wire, n, steps, micro, bucketBytes, overlap, false)
	return d, res
}

// runStepsSplit is runStepsWire with the word embedding split or not; it
// also returns rank 0's parameters.
func runStepsSplit(t *testing.T, tr allreduce.Transport, wire allreduce.Wire, n, steps, micro, bucketBytes int, overlap, split bool) ([]byte, []agent.StepResult, []float32) {
	t.Helper()
	trs := overlapTrainersSplit(t, n, split)
	rings := loopbackRingsWire(t, tr, wire, n)
	plan, err := bucket.NewPlan(int(trs[0].m.NumParams()), trs[0].GradSegments(), bucketBytes)
	if err != nil {
		t.Fatal(err)
	}
	if bucketBytes > 0 && len(plan.Buckets) < 5 {
		t.Fatalf("only %d buckets of %d bytes", len(plan.Buckets), bucketBytes)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	results := make([]agent.StepResult, n)
	for step := range steps {
		batches := make([][]*data.Batch, n)
		count := 0
		for r := range n {
			batches[r] = microBatches(t, rng, micro, 3)
			count += 3 * micro
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for r := range n {
			wg.Go(func() {
				res, err := agent.RunStep(context.Background(), agent.StepSpec{Trainer: trs[r], Plan: plan, Overlap: overlap, Ring: rings[r]}, batches[r])
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
		}
		for r := range n {
			if err := trs[r].Apply(step, count); err != nil {
				t.Fatal(err)
			}
		}
	}
	d0, p := identicalReplicas(t, trs)
	return d0, results, p
}

// TestOverlapBitIdentical: real libtorch ranks on real loopback rings, with
// gradient accumulation (2 micro-batches per rank per step) on both
// transports at N = 2 and 3: all-reducing the buckets during the last
// backward gives bit-identical weights to all-reducing the same buckets
// after backward. With overlap on, buckets really start during backward
// (comm time before the end of backward); off, none does.
// identicalReplicas checks that every trainer holds rank 0's weights and
// returns their digest and values.
func identicalReplicas(t *testing.T, trs []*Trainer) ([]byte, []float32) {
	t.Helper()
	d0, err := trs[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	for r := 1; r < len(trs); r++ {
		d, err := trs[r].Digest()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(d, d0) {
			t.Fatalf("rank %d's weights differ from rank 0's", r)
		}
	}
	p := make([]float32, trs[0].m.NumParams())
	if err := trs[0].m.CopyParamsTo(p); err != nil {
		t.Fatal(err)
	}
	return d0, p
}

func TestOverlapBitIdentical(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		for _, n := range []int{2, 3} {
			t.Run(fmt.Sprintf("%s/n=%d", tr, n), func(t *testing.T) {
				off, roff := runSteps(t, tr, n, 3, 2, 8<<10, false)
				on, ron := runSteps(t, tr, n, 3, 2, 8<<10, true)
				if !bytes.Equal(off, on) {
					t.Fatalf("overlap on and off give different weights")
				}
				for r := range n {
					if ron[r].Comm.Overlapped <= 0 {
						t.Errorf("rank %d: overlap on, but no bucket was reduced during backward: %+v", r, ron[r].Comm)
					}
					if roff[r].Comm.Overlapped != 0 {
						t.Errorf("rank %d: overlap off, but comm before the end of backward: %+v", r, roff[r].Comm)
					}
					if ron[r].Reduced.Buckets != roff[r].Reduced.Buckets || ron[r].Reduced.Buckets < 5 {
						t.Errorf("rank %d: %d buckets on, %d off", r, ron[r].Reduced.Buckets, roff[r].Reduced.Buckets)
					}
				}
				t.Logf("rank 0, last step: overlap on %+v; off %+v", ron[0].Comm, roff[0].Comm)
			})
		}
	}
}

// TestOverlapOneMicroBatch: without accumulation (the hooks armed on the
// only backward) and with one bucket per parameter group's worth, the
// result is still the same as without overlap.
func TestOverlapOneMicroBatch(t *testing.T) {
	off, _ := runSteps(t, allreduce.TCP, 2, 2, 1, 16<<10, false)
	on, _ := runSteps(t, allreduce.TCP, 2, 2, 1, 16<<10, true)
	if !bytes.Equal(off, on) {
		t.Fatalf("overlap on and off give different weights")
	}
}

// TestOverlapBF16Wire: with gradients on the wire in bfloat16
// (allreduce.wire: bf16), overlap on and off still agree bit for bit.
func TestOverlapBF16Wire(t *testing.T) {
	off, _ := runStepsWire(t, allreduce.TCP, allreduce.BFloat16, 3, 2, 2, 8<<10, false)
	on, _ := runStepsWire(t, allreduce.TCP, allreduce.BFloat16, 3, 2, 2, 8<<10, true)
	if !bytes.Equal(off, on) {
		t.Fatalf("overlap on and off give different weights with a bf16 wire")
	}
	f32, _ := runSteps(t, allreduce.TCP, 3, 2, 2, 8<<10, true)
	if bytes.Equal(f32, on) {
		t.Fatalf("the bf16 wire changed nothing: the test does not exercise it")
	}
}

// dyingRing is rank 2's ring, which dies right after starting its first
// bucket of the step: mid-bucket, mid-backward. A later bucket's start
// waits until the ring is closed, so that the step fails however late the
// closing goroutine runs on a loaded machine (it once ran after the whole
// step had succeeded).
type dyingRing struct {
	*allreduce.Ring
	armed  bool
	once   sync.Once
	closed chan struct{} // closed once the ring is; set by the first start
}

func (d *dyingRing) Start(ctx context.Context, buf []float32) (*allreduce.Op, error) {
	return d.dying(func() (*allreduce.Op, error) { return d.Ring.Start(ctx, buf) })
}

// StartWindow is Start for zero1's windows (bucket.WindowStarter).
func (d *dyingRing) StartWindow(ctx context.Context, k allreduce.Kind, buf []float32, off, total int) (*allreduce.Op, error) {
	return d.dying(func() (*allreduce.Op, error) { return d.Ring.StartWindow(ctx, k, buf, off, total) })
}

func (d *dyingRing) dying(start func() (*allreduce.Op, error)) (*allreduce.Op, error) {
	if d.armed && d.closed != nil {
		<-d.closed
	}
	op, err := start()
	if d.armed {
		d.once.Do(func() {
			d.closed = make(chan struct{})
			go func() {
				_ = d.Ring.Close()
				close(d.closed)
			}()
		})
	}
	return op, err
}

// TestOverlapPeerDiesMidBucket: a rank dies while its first bucket is in
// flight and the others are still in backward. Every rank's step fails with
// a ring error (not a local one: the node lives on), promptly, without
// waiting for the ring's two-minute deadline, and the survivors discard the
// step's gradients and stay usable.
func TestOverlapPeerDiesMidBucket(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		t.Run(tr.String(), func(t *testing.T) {
			trs := overlapTrainers(t, 3)
			rings := loopbackRings(t, tr, 3)
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
					b := microBatches(t, rng, 2, 3)
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
					for r := range 3 {
						if res[r].RingErr != nil {
							t.Fatalf("good step, rank %d: %v", r, res[r].RingErr)
						}
						if err := trs[r].Apply(0, 18); err != nil {
							t.Fatal(err)
						}
					}
					continue
				}
				checkPeerDeathDiscarded(t, res, trs, begin)
			}
		})
	}
}

// checkPeerDeathDiscarded checks a step in which rank 2 of 3 died: every
// rank's step failed with a ring error, within a minute of begin, and the
// survivors (ranks 0 and 1) discard it, leaving a zero gradient.
func checkPeerDeathDiscarded(t *testing.T, res []agent.StepResult, trs []*Trainer, begin time.Time) {
	t.Helper()
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
		for _, g := range trs[r].GradBuffer() {
			if g != 0 {
				t.Fatalf("rank %d: gradient not zero after Discard", r)
			}
		}
	}
}

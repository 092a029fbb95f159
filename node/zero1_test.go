package node

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/node/agent"
)

// newShardTrainer is newTrainer with the optimizer sharding, clipping and
// the ring layout chosen.
func newShardTrainer(t *testing.T, shard string, maxNorm float64, rank, size int) *Trainer {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(tinyBert), 0o644); err != nil {
		t.Fatal(err)
	}
	tr := &Trainer{}
	if _, err := tr.Setup(agent.Job{ModelDir: d, Task: "classification", NumLabels: 2, Init: "random", Seed: 7, Device: "cpu",
		Train: control.TrainSpec{Optimizer: "adamw", LR: 1e-3, Schedule: "linear", WarmupSteps: 1, WeightDecay: 0.01,
			Betas: []float64{0.9, 0.999}, Eps: 1e-8, Threads: 1, MaxGradNorm: maxNorm, ShardOptimizer: shard},
		TotalSteps: 20, Rank: rank, WorldSize: size}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// loopRings builds a real loopback ring of n ranks.
func loopRings(t *testing.T, n int, wire allreduce.Wire) []*allreduce.Ring {
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
		r, err := allreduce.New(allreduce.Config{Generation: 1, Rank: i, Peers: addrs, Listener: ls[i], Key: key, Wire: wire, Timeout: time.Minute})
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

// stepBatches is rank's micro-batch of global step k: three short random
// sentences, different per rank and step, the same in every run.
func stepBatches(t *testing.T, k, rank int) *data.Batch {
	rng := rand.New(rand.NewPCG(uint64(k), uint64(rank)))
	var ex []data.Encoded
	for range 3 {
		n := 3 + rng.IntN(8)
		ids := []int{2}
		for range n {
			ids = append(ids, 4+rng.IntN(90))
		}
		ids = append(ids, 3)
		ex = append(ex, data.Encoded{IDs: ids, TypeIDs: make([]int, len(ids)), Label: rng.IntN(2)})
	}
	b, err := data.Collate(ex, data.Classification, 0)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runRanks runs f for every rank concurrently and fails on any error.
func runRanks(t *testing.T, n int, f func(r int) error) {
	t.Helper()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Go(func() { errs[r] = f(r) })
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
}

// trainRing trains n real libtorch trainers over a real loopback ring for
// steps steps, as the agent does: replicated (all-reduce, Apply) under
// none, sharded (reduce-scatter with buddy, ShardedApply) under zero1. It
// returns every rank's parameters.
func trainRing(t *testing.T, shard string, maxNorm float64, n, steps int) [][]float32 {
	rings := loopRings(t, n, allreduce.Float32)
	trs := make([]*Trainer, n)
	for r := range n {
		trs[r] = newShardTrainer(t, shard, maxNorm, r, n)
	}
	ctx := context.Background()
	for k := range steps {
		counts := make([]int, n)
		runRanks(t, n, func(r int) error {
			_, c, err := trs[r].Accumulate(stepBatches(t, k, r))
			counts[r] = c
			if err != nil {
				return err
			}
			g, err := trs[r].Gradients()
			if err != nil {
				return err
			}
			if shard == config.ShardZero1 {
				return agent.ShardedReduce(ctx, rings[r], g)
			}
			return rings[r].AllReduce(ctx, g)
		})
		total := 0
		for _, c := range counts {
			total += c
		}
		runRanks(t, n, func(r int) error {
			if shard == config.ShardZero1 {
				return agent.ShardedApply(ctx, rings[r], trs[r], k, total)
			}
			return trs[r].Apply(k, total)
		})
	}
	out := make([][]float32, n)
	for r, tr := range trs {
		out[r] = make([]float32, tr.m.NumParams())
		if err := tr.m.CopyParamsTo(out[r]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestZero1MatchesReplicatedAdamW: at N = 2, 3 and 4, with clipping on (a
// norm small enough that every step clips) and off, K steps of the sharded
// optimizer over a real ring give every rank bit-identical parameters, and
// those equal replicated AdamW's (the DDP path, itself checked against
// PyTorch in model/hf) to 1e-6 relative.
func TestZero1MatchesReplicatedAdamW(t *testing.T) {
	const steps = 6
	for _, n := range []int{2, 3, 4} {
		var unclipped []float32
		for _, maxNorm := range []float64{0, 0.05} {
			t.Run(fmt.Sprintf("n=%d/clip=%g", n, maxNorm), func(t *testing.T) {
				ref := trainRing(t, config.ShardNone, maxNorm, n, steps)
				if maxNorm == 0 {
					unclipped = ref[0]
				} else if bitsEqual(unclipped, ref[0]) {
					t.Fatal("max_grad_norm 0.05 never clipped: the clipped case proves nothing")
				}
				got := trainRing(t, config.ShardZero1, maxNorm, n, steps)
				for r := 1; r < n; r++ {
					if !bitsEqual(got[r], got[0]) {
						t.Fatalf("zero1 rank %d's parameters differ from rank 0's", r)
					}
				}
				init := newShardTrainer(t, config.ShardNone, 0, 0, 1)
				p0 := make([]float32, init.m.NumParams())
				if err := init.m.CopyParamsTo(p0); err != nil {
					t.Fatal(err)
				}
				var diff, norm, moved float64
				for i := range ref[0] {
					d := float64(got[0][i]) - float64(ref[0][i])
					diff += d * d
					norm += float64(ref[0][i]) * float64(ref[0][i])
					m := float64(ref[0][i]) - float64(p0[i])
					moved += m * m
				}
				rel := math.Sqrt(diff / norm)
				t.Logf("relative L2 difference %.3g (parameters moved %.3g relative)", rel, math.Sqrt(moved/norm))
				if rel > 1e-6 {
					t.Fatalf("zero1 differs from replicated AdamW by %.3g relative (L2), want <= 1e-6", rel)
				}
				if math.Sqrt(moved/norm) < 1e-3 {
					t.Fatal("training hardly moved the parameters: the comparison proves nothing")
				}
			})
		}
	}
}

func bitsEqual(a, b []float32) bool {
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

// TestZero1State: a full state written under none loads into a zero1 rank
// (its slices of the moments are kept), the next step there equals the
// replicated one, and a zero1 rank refuses to write a state it holds only
// slices of, saying why.
func TestZero1State(t *testing.T) {
	full := newShardTrainer(t, config.ShardNone, 1, 0, 1)
	for k := range 2 {
		if _, _, err := full.Accumulate(stepBatches(t, k, 0)); err != nil {
			t.Fatal(err)
		}
		if err := full.Apply(k, 3); err != nil {
			t.Fatal(err)
		}
	}
	var st bytes.Buffer
	if err := full.WriteState(&st); err != nil {
		t.Fatal(err)
	}
	// One rank of one: the sharded optimizer holds every moment, so the
	// next step must be the same bits as the replicated one.
	z := newShardTrainer(t, config.ShardZero1, 1, 0, 1)
	if err := z.ReadState(bytes.NewReader(st.Bytes())); err != nil {
		t.Fatal(err)
	}
	rings := loopRings(t, 1, allreduce.Float32)
	for _, tr := range []*Trainer{full, z} {
		if _, _, err := tr.Accumulate(stepBatches(t, 2, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := full.Apply(2, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := z.Gradients(); err != nil {
		t.Fatal(err)
	}
	if err := agent.ShardedApply(context.Background(), rings[0], z, 2, 3); err != nil {
		t.Fatal(err)
	}
	a, _ := full.Digest()
	b, _ := z.Digest()
	if !bytes.Equal(a, b) {
		t.Fatal("a zero1 rank loaded from a full state does not take the same step as the replicated optimizer")
	}
	err := z.WriteState(&bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "zero1") {
		t.Fatalf("zero1 WriteState: %v, want an error naming zero1", err)
	}
	if z.OptimizerBytes() != full.OptimizerBytes() {
		t.Fatalf("one rank: zero1 holds %d optimizer bytes, replicated %d", z.OptimizerBytes(), full.OptimizerBytes())
	}
}

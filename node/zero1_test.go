package node

import (
	"bytes"
	"context"
	"errors"
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

// trainSteps runs global steps [k0, k1) on trainers trs over rings, as
// the agent does: replicated (all-reduce, Apply) under none, sharded
// (ShardedReduce, ShardedApply) under zero1. Rank r of step k trains on
// stepBatches(k, r).
func trainSteps(t *testing.T, shard string, trs []*Trainer, rings []*allreduce.Ring, k0, k1 int) {
	t.Helper()
	n := len(trs)
	ctx := context.Background()
	for k := k0; k < k1; k++ {
		counts := make([]int, n)
		sumsq := make([]float64, n)
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
				sumsq[r], err = agent.ShardedReduce(ctx, rings[r], trs[r], g)
				return err
			}
			return rings[r].AllReduce(ctx, g)
		})
		total := 0
		for _, c := range counts {
			total += c
		}
		runRanks(t, n, func(r int) error {
			if shard == config.ShardZero1 {
				return agent.ShardedApply(ctx, rings[r], trs[r], k, total, sumsq[r])
			}
			return trs[r].Apply(k, total)
		})
	}
}

// paramsOf copies every trainer's parameters out.
func paramsOf(t *testing.T, trs []*Trainer) [][]float32 {
	out := make([][]float32, len(trs))
	for r, tr := range trs {
		out[r] = make([]float32, tr.m.NumParams())
		if err := tr.m.CopyParamsTo(out[r]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// newRanks makes n trainers in shard mode laid out for a ring of n (zero1
// slices set by a re-slice of nothing, as the agent's first generation
// does).
func newRanks(t *testing.T, shard string, maxNorm float64, rings []*allreduce.Ring) []*Trainer {
	n := len(rings)
	trs := make([]*Trainer, n)
	for r := range n {
		trs[r] = newShardTrainer(t, shard, maxNorm, r, n)
	}
	if shard == config.ShardZero1 {
		runRanks(t, n, func(r int) error {
			_, err := agent.Reslice(context.Background(), rings[r], trs[r], agent.ShardInfo{Applied: 0})
			return err
		})
	}
	return trs
}

// trainRing trains n real libtorch trainers over a real loopback ring for
// steps steps and returns every rank's parameters.
func trainRing(t *testing.T, shard string, maxNorm float64, n, steps int) [][]float32 {
	rings := loopRings(t, n, allreduce.Float32)
	trs := newRanks(t, shard, maxNorm, rings)
	trainSteps(t, shard, trs, rings, 0, steps)
	return paramsOf(t, trs)
}

// relDiff is the relative L2 difference of got from want.
func relDiff(got, want []float32) float64 {
	var diff, norm float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		diff += d * d
		norm += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(diff / norm)
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
				p0 := paramsOf(t, []*Trainer{init})[0]
				rel, moved := relDiff(got[0], ref[0]), relDiff(p0, ref[0])
				t.Logf("relative L2 difference %.3g (parameters moved %.3g relative)", rel, moved)
				if rel > 1e-6 {
					t.Fatalf("zero1 differs from replicated AdamW by %.3g relative (L2), want <= 1e-6", rel)
				}
				if moved < 1e-3 {
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
	g, err := z.Gradients()
	if err != nil {
		t.Fatal(err)
	}
	sumsq, err := agent.ShardedReduce(context.Background(), rings[0], z, g)
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.ShardedApply(context.Background(), rings[0], z, 2, 3, sumsq); err != nil {
		t.Fatal(err)
	}
	a, _ := full.Digest()
	b, _ := z.Digest()
	if !bytes.Equal(a, b) {
		t.Fatal("a zero1 rank loaded from a full state does not take the same step as the replicated optimizer")
	}
	err = z.WriteState(&bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "zero1") {
		t.Fatalf("zero1 WriteState: %v, want an error naming zero1", err)
	}
	if z.OptimizerBytes() != full.OptimizerBytes() {
		t.Fatalf("one rank: zero1 holds %d optimizer bytes, replicated %d", z.OptimizerBytes(), full.OptimizerBytes())
	}
}

// TestZero1ResliceAfterLoss: a zero1 ring of 4 trains K steps, rank 2 dies
// (it is simply left out), the 3 survivors form a new ring, re-slice from
// owners and buddies, and train M more steps. The result equals the
// replicated run over the same rings and batches to 1e-6: the loss neither
// reset nor rolled back the optimizer state. A fresh node then joins (5th
// generation member, no state): after the re-slice it holds the state too,
// and all ranks stay bit-identical.
func TestZero1ResliceAfterLoss(t *testing.T) {
	const k1, k2, k3 = 3, 5, 7
	run := func(shard string) [][]float32 {
		rings := loopRings(t, 4, allreduce.Float32)
		trs := newRanks(t, shard, 0.05, rings)
		trainSteps(t, shard, trs, rings, 0, k1)
		// Generation 2: ranks 0, 1, 3 survive, in that order.
		surv := []*Trainer{trs[0], trs[1], trs[3]}
		old := []int{0, 1, 3}
		rings2 := loopRings(t, 3, allreduce.Float32)
		if shard == config.ShardZero1 {
			runRanks(t, 3, func(r int) error {
				got, st, err := agent.ResliceWithStats(context.Background(), rings2[r], surv[r],
					agent.ShardInfo{Valid: true, Gen: 1, Rank: old[r], Size: 4, Applied: k1})
				if err == nil && got != k1 {
					err = fmt.Errorf("re-slice says step %d, want %d", got, k1)
				}
				// Clean survivors hold every parameter: only moments move.
				if err == nil && (st.ParamFloats != 0 || st.MomentFloats == 0 || st.MovedFloats() >= st.FullFloats) {
					err = fmt.Errorf("re-slice moved %d parameters and %d moments of %d floats; want no parameters and fewer floats than the full state", st.ParamFloats, st.MomentFloats, st.FullFloats)
				}
				return err
			})
		}
		trainSteps(t, shard, surv, rings2, k1, k2)
		// Generation 3: a fresh node joins as rank 1.
		fresh := newShardTrainer(t, shard, 0.05, 0, 0)
		rings3 := loopRings(t, 4, allreduce.Float32)
		g3 := []*Trainer{surv[0], fresh, surv[1], surv[2]}
		prev := []int{0, -1, 1, 2}
		if shard == config.ShardZero1 {
			runRanks(t, 4, func(r int) error {
				in := agent.ShardInfo{Valid: prev[r] >= 0, Gen: 2, Rank: prev[r], Size: 3, Applied: k2}
				if prev[r] < 0 {
					in = agent.ShardInfo{Applied: 0}
				}
				got, err := agent.Reslice(context.Background(), rings3[r], g3[r], in)
				if err == nil && got != k2 {
					err = fmt.Errorf("re-slice says step %d, want %d", got, k2)
				}
				return err
			})
		} else {
			// Replicated: the joiner pulls the whole state from a replica.
			var st bytes.Buffer
			if err := surv[0].WriteState(&st); err != nil {
				t.Fatal(err)
			}
			if err := fresh.ReadState(&st); err != nil {
				t.Fatal(err)
			}
		}
		trainSteps(t, shard, g3, rings3, k2, k3)
		return paramsOf(t, g3)
	}
	ref := run(config.ShardNone)
	got := run(config.ShardZero1)
	for r := 1; r < len(got); r++ {
		if !bitsEqual(got[r], got[0]) {
			t.Fatalf("after the re-slices, zero1 rank %d differs from rank 0", r)
		}
	}
	rel := relDiff(got[0], ref[0])
	t.Logf("relative L2 difference from the replicated run: %.3g", rel)
	if rel > 1e-6 {
		t.Fatalf("zero1 across a loss and a join differs from replicated AdamW by %.3g, want <= 1e-6", rel)
	}
}

// TestZero1AdjacentLoss: ranks 1 and 2 of 4 die together; slice 1 had its
// owner (1) and its buddy (2) among them, so the survivors must not go on
// with zeroed moments: Reslice drops the state on both and says which
// slice was lost and that the run reloads from the newest checkpoint.
func TestZero1AdjacentLoss(t *testing.T) {
	rings := loopRings(t, 4, allreduce.Float32)
	trs := newRanks(t, config.ShardZero1, 0, rings)
	trainSteps(t, config.ShardZero1, trs, rings, 0, 2)
	surv := []*Trainer{trs[0], trs[3]}
	old := []int{0, 3}
	rings2 := loopRings(t, 2, allreduce.Float32)
	errs := make([]error, 2)
	got := make([]int, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			got[r], errs[r] = agent.Reslice(context.Background(), rings2[r], surv[r], agent.ShardInfo{Valid: true, Gen: 1, Rank: old[r], Size: 4, Applied: 2})
		})
	}
	wg.Wait()
	for r, err := range errs {
		var lost *agent.LostError
		if !errors.As(err, &lost) || got[r] != -1 {
			t.Fatalf("rank %d: Reslice = %d, %v; want -1 and a LostError", r, got[r], err)
		}
		if !strings.Contains(err.Error(), "ranks 1 and 2") || !strings.Contains(err.Error(), "checkpoint") {
			t.Fatalf("rank %d: the message %q does not name the lost ranks and the checkpoint", r, err)
		}
	}
}

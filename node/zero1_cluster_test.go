package node_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringtune/ringtune/internal/clustertest"
)

// zero1Train is the training section of the zero1 cluster test: 96
// sentences, 8 per step, 2 epochs (24 steps), a checkpoint every 4 steps,
// clipping on, a digest after every step.
const zero1Train = `  epochs: 2
  global_batch: 8
  micro_batch: 4
  optimizer: adamw
  lr: 1.0e-3
  schedule: linear
  warmup_steps: 1
  max_grad_norm: 1.0
  seed: 11
  threads: 1
  digest_every: 1
  shard_optimizer: %s
`

// zero1Run runs one real cluster (coordinator and libtorch node processes)
// with n nodes and shard mode shard; during(c) runs while it trains. It
// returns the exported weights and the fixture.
func zero1Run(t *testing.T, ctx context.Context, bins []string, label string, n int, shard string, ckptDir string, during func(c *clustertest.Cluster), coordArgs ...string) (map[string][]float32, *clustertest.Cluster) {
	t.Helper()
	f := clustertest.NewFixture(t, clustertest.Options{
		Label: fmt.Sprintf("%s-%d", label, os.Getpid()), MinNodes: n, MaxNodes: n,
		ModelConfig: bertConfig, TrainLines: 96, EvalLines: 8,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: fmt.Sprintf(zero1Train, shard),
	})
	f.YAML = strings.Replace(f.YAML, "  every: 10\n", "  every: 4\n  keep: 10\n", 1)
	f.YAML = strings.Replace(f.YAML, "  min_nodes:", "  wait_timeout: 20s\n  min_nodes:", 1)
	// Small buckets, so that zero1's reduce-scatter runs bucket by bucket
	// during backward (overlap is on by default), next to the split
	// embedding's rows (sparse_embedding, on by default).
	f.YAML = strings.Replace(f.YAML, "allreduce:\n  timeout: 5s\n", "allreduce:\n  timeout: 5s\n  bucket_bytes: 65536\n", 1)
	if !strings.Contains(f.YAML, "bucket_bytes: 65536") {
		t.Fatal("the fixture's allreduce section changed: cannot set bucket_bytes")
	}
	if ckptDir != "" {
		f.YAML = strings.Replace(f.YAML, "  dir: ckpt\n", "  dir: "+ckptDir+"\n", 1)
	}
	f.Write(t, f.YAML)
	c := clustertest.RunCluster(t, ctx, f, bins[0], bins[1], n, nil, coordArgs...)
	if during != nil {
		during(c)
	}
	if code := c.Coord.Wait(t, 4*time.Minute); code != 0 {
		t.Fatalf("%s: coordinator exit %d", label, code)
	}
	return readAll(t, filepath.Join(f.Dir, "out")), c
}

func maxRelDiff(t *testing.T, a, b map[string][]float32) float64 {
	t.Helper()
	var diff, scale float64
	for name, x := range a {
		y, ok := b[name]
		if !ok || len(x) != len(y) {
			t.Fatalf("tensor %s missing or resized", name)
		}
		for i := range x {
			diff = math.Max(diff, math.Abs(float64(x[i])-float64(y[i])))
			scale = math.Max(scale, math.Abs(float64(x[i])))
		}
	}
	return diff / scale
}

// TestZero1Cluster: real node processes under train.shard_optimizer zero1.
//   - 3 nodes, one killed with SIGKILL mid-run: the survivors re-slice the
//     optimizer state from owners and buddies (no reload, no rollback) and
//     finish; the export equals a 1-node replicated run's to 1e-5 (the
//     aborted step is redone with the same samples).
//   - The checkpoints the zero1 run wrote hold the assembled state: resumed
//     from its step-4 checkpoint under shard_optimizer none on 1 node, the
//     run ends where the uninterrupted one does; and a checkpoint written
//     under none resumes under zero1 on 2 nodes, likewise.
func TestZero1Cluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	bins := clustertest.Build(t, "./cmd/coordinator", "./cmd/node")
	ckRef := t.TempDir()
	ref, _ := zero1Run(t, ctx, bins, "z1ref", 1, "none", ckRef, nil)

	ckZ := t.TempDir()
	got, c := zero1Run(t, ctx, bins, "z1kill", 3, "zero1", ckZ, func(c *clustertest.Cluster) {
		c.Coord.WaitFor(t, `replicas identical" applied=6 `, 2*time.Minute)
		if err := c.Nodes[1].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	})
	out := c.Coord.Text()
	for _, want := range []string{`generation formed" gen=2 size=2`, `replicas identical" applied=24`, `checkpoint written" path=`} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	for _, i := range []int{0, 2} {
		if code := c.Nodes[i].Wait(t, 30*time.Second); code != 0 {
			t.Errorf("surviving node %d exit %d", i, code)
		}
		log := c.Nodes[i].Text()
		// Each survivor held two of the three slices: only the third's
		// moments (and, were they dirty, parameters) changed hands.
		mv := regexp.MustCompile(`zero1 optimizer slices" node=\S+ gen=2 .* moved_bytes=(\d+) full_bytes=(\d+) `).FindStringSubmatch(log)
		if mv == nil || len(mv[1]) > len(mv[2]) || (len(mv[1]) == len(mv[2]) && mv[1] >= mv[2]) || mv[1] == "0" {
			t.Errorf("surviving node %d: the generation 2 re-slice moved %v bytes; want more than 0 and less than the full state", i, mv)
		} else {
			t.Logf("surviving node %d: the generation 2 re-slice moved %s of %s bytes", i, mv[1], mv[2])
		}
		m := regexp.MustCompile(`zero1 optimizer slices" node=\S+ gen=2 rank=\d size=2 applied=(\d+) was_applied=(\d+) `).FindStringSubmatch(log)
		if m == nil || m[1] != m[2] || m[1] == "0" || strings.Contains(log, "optimizer state lost") {
			t.Errorf("surviving node %d did not re-slice its optimizer state in generation 2", i)
		}
		if b := regexp.MustCompile(`gradient buckets" node=\S+ buckets=(\d+) bucket_bytes=65536 overlap=true`).FindStringSubmatch(log); b == nil || b[1] == "1" {
			t.Errorf("surviving node %d did not reduce in several buckets with overlap: %v", i, b)
		}
	}
	// The checkpoints ran in the background (checkpoint.background, the
	// default): a node assembled the state off its loop, its peers'
	// slices streamed off theirs, and the held commit waited at most.
	assembled := 0
	for _, i := range []int{0, 2} {
		assembled += strings.Count(c.Nodes[i].Text(), `assembled zero1 state served" node=`)
		if n := strings.Count(c.Nodes[i].Text(), `assembled zero1 state served"`); n > 0 && !strings.Contains(c.Nodes[i].Text(), `off_loop=true`) {
			t.Errorf("surviving node %d assembled %d states on its loop, want off it", i, n)
		}
	}
	if assembled == 0 {
		t.Error("no survivor assembled a zero1 state for a checkpoint")
	}
	if strings.Contains(out, "node pulls state") {
		t.Error("a survivor pulled the state after the loss: the re-slice should have kept it")
	}
	if d := maxRelDiff(t, ref, got); d > 1e-5 {
		t.Fatalf("zero1 with a node killed differs from the 1-node replicated run by %.3g (max, relative to max |w|), want <= 1e-5", d)
	}

	// Resume each run's step-4 checkpoint under the other shard mode.
	for _, tc := range []struct {
		name, dir, shard string
		n                int
	}{{"z1to-none", ckZ, "none", 1}, {"none-to-z1", ckRef, "zero1", 2}} {
		keepOnly(t, tc.dir, "step-000000004.ckpt")
		res, c := zero1Run(t, ctx, bins, tc.name, tc.n, tc.shard, tc.dir, nil, "--resume")
		if !strings.Contains(c.Coord.Text(), `msg=resuming checkpoint=`) || !strings.Contains(c.Coord.Text(), `applied=4`) {
			t.Fatalf("%s: the coordinator did not resume from the step-4 checkpoint", tc.name)
		}
		if d := maxRelDiff(t, ref, res); d > 1e-5 {
			t.Fatalf("%s: resumed run differs from the uninterrupted one by %.3g, want <= 1e-5", tc.name, d)
		}
	}
}

// keepOnly removes every checkpoint in dir but name.
func keepOnly(t *testing.T, dir, name string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range ents {
		if e.Name() == name {
			found = true
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("no checkpoint %s in %s", name, dir)
	}
}

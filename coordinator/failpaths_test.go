package coordinator_test

// Failure paths with real processes: a node asked to leave by SIGTERM,
// replicas that diverge, and the node's model file cache.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMLeavesAtStepBoundary checks the promise of `node join`: SIGTERM
// makes a node ask the coordinator to release it; the coordinator forms the
// next generation without it between two steps, so no step is aborted, the
// node exits 0, and no sample of either epoch is lost (issue 11, defect 9).
func TestSIGTERMLeavesAtStepBoundary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("term-%d", os.Getpid()), 3, 3, "")
	// Slow steps so that the signal lands mid-run, not after the last step.
	c := runCluster(t, ctx, f, 3, []string{"GONODE_STEP_DELAY=15ms"})
	c.Coord.WaitFor(t, `replicas identical" applied=4 `, 60*time.Second)
	leaver := c.Nodes[1]
	if err := leaver.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The node must exit by itself; Wait fails the test on a hang, and
	// the cleanup's kill comes only after this.
	if code := leaver.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("node %s exit %d after SIGTERM, want 0 (a requested leave is not a failure)", f.Label+"-n1", code)
	}
	for _, want := range []string{"asked the coordinator to release this node at a step boundary", `reason="left on request"`} {
		if !strings.Contains(leaver.Text(), want) {
			t.Errorf("node %s log lacks %q", f.Label+"-n1", want)
		}
	}
	if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("coordinator exit %d after a node left on SIGTERM", code)
	}
	out := c.Coord.Text()
	for _, want := range []string{
		`generation formed" gen=2 size=2`,
		`epoch complete" epoch=0 committed=96 missing=0 samples=96`,
		`epoch complete" epoch=1 committed=96 missing=0 samples=96`,
		`replicas identical" applied=24`,
		`shrinking the world at a step boundary: a node leaves`,
		`node left" node=` + f.Label + `-n1`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	if strings.Contains(out, "step aborted") {
		t.Errorf("a requested leave aborted a step:\n%s", out)
	}
	// Generation 2 must not hold the node that left.
	if m := regexp.MustCompile(`generation formed" gen=2 [^\n]*`).FindString(out); strings.Contains(m, f.Label+"-n1") {
		t.Errorf("generation 2 still holds the node that left: %s", m)
	}
	for i, p := range c.Nodes {
		if i == 1 {
			continue
		}
		if code := p.Wait(t, 10*time.Second); code != 0 {
			t.Errorf("surviving node %s-n%d exit %d", f.Label, i, code)
		}
	}
}

// TestDivergedReplicasStopTheRun gives one of two nodes a fault that
// changes one of its parameters after step 5: the digest check after that
// step must stop the run with exit code 3 and an error that names the step
// and the diverging rank and node, and both nodes must end (no hang).
func TestDivergedReplicasStopTheRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("div-%d", os.Getpid()), 2, 2, "")
	_, nodeBin := build(t)
	c := runCluster(t, ctx, f, 1, nil)
	// Start the faulty node only after the healthy one has joined, so that
	// the healthy one takes rank 0 and the faulty one rank 1.
	c.Coord.WaitFor(t, `node connected" node=`+f.Label+`-n0`, 30*time.Second)
	bad := f.Label + "-n1"
	c.StartNode(t, ctx, f, nodeBin, bad, []string{"GONODE_PERTURB_AT_STEP=5"})
	if code := c.Coord.Wait(t, 90*time.Second); code != 3 {
		t.Fatalf("coordinator exit %d with diverged replicas, want 3", code)
	}
	out := c.Coord.Text()
	// digest_every is 1: steps 0..4 agree, and the check after the faulty
	// step (6 committed steps) is the one that fails.
	if !strings.Contains(out, `replicas identical" applied=5 `) {
		t.Errorf("no agreeing digest before the fault: the test did not exercise a divergence mid-run")
	}
	if strings.Contains(out, `replicas identical" applied=6 `) {
		t.Errorf("the digests after the faulty step were reported identical")
	}
	for _, want := range []string{
		"replicas diverged after 6 committed steps",
		"rank 0 (" + f.Label + "-n0)",
		"rank 1 (" + bad + ")",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator error lacks %q", want)
		}
	}
	if !strings.Contains(c.Nodes[1].Text(), "fault injected") {
		t.Errorf("node %s did not inject its fault", bad)
	}
	// The nodes must end too, not wait for steps that never come, and
	// with a failure status: their run did not succeed.
	for i, p := range c.Nodes {
		if code := p.Wait(t, 30*time.Second); code == 0 {
			t.Errorf("node %s-n%d exit 0 after the run failed", f.Label, i)
		}
		if !strings.Contains(p.Text(), "replicas diverged") {
			t.Errorf("node %s-n%d does not say why the run stopped", f.Label, i)
		}
	}
}

// TestModelCache runs one node three times with the same --cache-dir: the
// first run fetches the model files, the second takes them all from the
// cache and receives nothing, and the third, after one cached file was
// overwritten with wrong content, detects the corruption, fetches that file
// again and repairs the cache instead of training on the bad copy.
func TestModelCache(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("cache-%d", os.Getpid()), 1, 1, "")
	node := f.Label + "-n0"
	// RunCluster gives the node the same cache directory on every run.
	cacheDir := filepath.Join(f.Dir, "cache-"+node)
	cfg, err := os.ReadFile(filepath.Join(f.Dir, "model", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(cfg)
	cfgBlob := filepath.Join(cacheDir, hex.EncodeToString(sum[:]))

	run := func(name string) string {
		t.Helper()
		for _, d := range []string{"out", "ckpt"} {
			if err := os.RemoveAll(filepath.Join(f.Dir, d)); err != nil {
				t.Fatal(err)
			}
		}
		c := runCluster(t, ctx, f, 1, nil)
		// The node first: one that fails on its cache leaves the
		// coordinator waiting for nodes, and its exit says more.
		if code := c.Nodes[0].Wait(t, 60*time.Second); code != 0 {
			t.Fatalf("%s run: node %s exit %d", name, node, code)
		}
		if code := c.Coord.Wait(t, 30*time.Second); code != 0 {
			t.Fatalf("%s run: coordinator exit %d", name, code)
		}
		return c.Nodes[0].Text()
	}
	fetched := func(name, out string) int {
		t.Helper()
		m := regexp.MustCompile(`model files ready" node=\S+ fetched_bytes=(\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s run: node %s does not log the bytes it fetched", name, node)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}

	out := run("first")
	if !strings.Contains(out, `job received" node=`+node+` files=2 cached=0 missing=2`) {
		t.Errorf("first run: node %s did not ask for both model files", node)
	}
	if n := fetched("first", out); n < len(cfg) {
		t.Errorf("first run: node %s fetched %d bytes, want at least config.json's %d", node, n, len(cfg))
	}

	out = run("second")
	if !strings.Contains(out, `job received" node=`+node+` files=2 cached=2 missing=0`) {
		t.Errorf("second run: node %s did not take both model files from its cache", node)
	}
	if n := fetched("second", out); n != 0 {
		t.Errorf("second run: node %s fetched %d bytes of model files it had cached", node, n)
	}

	// Same length, other content: only the hash can tell.
	bad := []byte(strings.Repeat("x", len(cfg)))
	if err := os.WriteFile(cfgBlob, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	out = run("third")
	if !strings.Contains(out, "cached model file is corrupt; fetching it again") || !strings.Contains(out, "file=config.json") {
		t.Errorf("third run: node %s did not report the corrupt cached config.json", node)
	}
	if !strings.Contains(out, `job received" node=`+node+` files=2 cached=1 missing=1`) {
		t.Errorf("third run: node %s did not ask again for exactly the corrupt file", node)
	}
	if n := fetched("third", out); n != len(cfg) {
		t.Errorf("third run: node %s fetched %d bytes, want config.json's %d", node, n, len(cfg))
	}
	if got, err := os.ReadFile(cfgBlob); err != nil || string(got) != string(cfg) {
		t.Errorf("the cache still holds a bad config.json after the third run (%v)", err)
	}
}

package coordinator_test

// Failure paths with real processes: a node asked to leave by SIGTERM,
// replicas that diverge, and the node's model file cache.

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMLeavesAtStepBoundary checks the promise of `node join`: SIGTERM
// makes a node finish the step it has reported reduced and leave on its own
// with exit 0; the coordinator goes on with the survivors and no sample of
// either epoch is lost.
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
	if !strings.Contains(leaver.Text(), "leaving at a step boundary") {
		t.Errorf("node %s did not leave at a step boundary", f.Label+"-n1")
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
	} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
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

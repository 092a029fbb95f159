package coordinator_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWholeWorldLostReloadsCheckpoint: the only node dies after the run
// trained past its checkpoint of step 10; a new node comes. Before, the run
// ended with exit 4 ("no node holds the state of step …"). Now it rolls
// back to the checkpoint, the new node loads it, the undone steps are
// trained again with the same samples, and the final model equals an
// uninterrupted run's (issue 11, defect 11).
func TestWholeWorldLostReloadsCheckpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFixture(t, fmt.Sprintf("rb-%d", os.Getpid()), 1, 1, "")
	wantW, wantB := uninterrupted(t, ctx, f, 1)

	c := runCluster(t, ctx, f, 1, []string{"GONODE_STEP_DELAY=40ms"}, "--cluster.wait_timeout", "60s")
	c.Coord.WaitFor(t, `checkpoint written" path=\S+ applied=10 `, 60*time.Second)
	c.Coord.WaitFor(t, `replicas identical" applied=13 `, 60*time.Second)
	if err := c.Nodes[0].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Nodes[0].Wait(t, 10*time.Second)
	_, nodeBin := build(t)
	c.StartNode(t, ctx, f, nodeBin, f.Label+"-fresh", nil)
	if code := c.Coord.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("run after losing its whole world: exit %d", code)
	}
	out := c.Coord.Text()
	for _, want := range []string{`rolling back to the newest checkpoint" checkpoint=ckpt/step-000000010.ckpt applied=10`, `node pulls state" node=` + f.Label + `-fresh applied=10 from=`} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	gotW, gotB := readModel(t, filepath.Join(f.Dir, "out"))
	got, want := append(gotW, gotB...), append(wantW, wantB...)
	for i := range want {
		if d := math.Abs(float64(got[i] - want[i])); d > 1e-6 {
			t.Fatalf("run after the rollback differs from the uninterrupted one at parameter %d by %g", i, d)
		}
	}
}

package coordinator_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringtune/ringtune/internal/clustertest"
)

// TestCoordinatorRestartUnderLiveNodes (issue 11): the coordinator is
// killed mid-run, past its last checkpoint, and restarted with --resume on
// the same addresses; the three node processes are never restarted. They
// rejoin, keep their trainer (same run), load the checkpoint's state since
// theirs is newer, and the run ends with the weights of an uninterrupted
// run.
func TestCoordinatorRestartUnderLiveNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := adamFixture(t, fmt.Sprintf("crestart-%d", os.Getpid()), 3, 3)
	wantW, wantB := uninterrupted(t, ctx, f, 3, smallPlane...)

	c := runCluster(t, ctx, f, 3, []string{"GONODE_STEP_DELAY=40ms"}, smallPlane...)
	c.Coord.WaitFor(t, `checkpoint written" path=\S+ applied=10 `, 90*time.Second)
	// Past the checkpoint: the nodes' state is newer than what the
	// restarted coordinator resumes from, so they must load the
	// checkpoint's state rather than keep theirs.
	c.Coord.WaitFor(t, `replicas identical" applied=13 `, 90*time.Second)
	if err := c.Coord.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	c.Coord.Wait(t, 10*time.Second)
	coordBin, _ := build(t)
	args := append([]string{"--config", "cluster.yaml", "--resume", "--cluster.bind", c.Gossip, "--cluster.grpc", c.GRPC}, smallPlane...)
	co := clustertest.Start(t, ctx, f.Dir, nil, coordBin, args...)
	if code := co.Wait(t, 120*time.Second); code != 0 {
		t.Fatalf("restarted coordinator: exit %d", code)
	}
	out := co.Text()
	if !strings.Contains(out, "msg=resuming checkpoint=ckpt/step-000000010.ckpt applied=10") {
		t.Error("the restarted coordinator did not resume from step 10")
	}
	if n := len(regexp.MustCompile(`node connected" node=`).FindAllString(out, -1)); n != 3 {
		t.Errorf("%d sessions on the restarted coordinator, want the 3 original nodes", n)
	}
	if n := len(regexp.MustCompile(`node pulls state" node=\S+ applied=10 from=\S+ kind=checkpoint`).FindAllString(out, -1)); n != 3 {
		t.Errorf("%d nodes loaded the checkpoint's state, want all 3 (they had trained past it)", n)
	}
	for i, p := range c.Nodes {
		if code := p.Wait(t, 20*time.Second); code != 0 {
			t.Errorf("node %d exit %d", i, code)
		}
		text := p.Text()
		for _, want := range []string{"reconnected to the coordinator", "job of the same run: keeping the trainer state"} {
			if !strings.Contains(text, want) {
				t.Errorf("node %d log lacks %q", i, want)
			}
		}
	}
	gotW, gotB := readModel(t, filepath.Join(f.Dir, "out"))
	weightsClose(t, "run with a coordinator restart under live nodes", append(gotW, gotB...), append(wantW, wantB...))
}

// TestFalselySuspectedNodeRejoins (issue 11, defect 7): a node frozen long
// enough for gossip to declare it dead (SIGSTOP) is dropped; when it
// resumes (SIGCONT) it does not exit but joins again and re-enters the
// world, keeping its process; no sample is lost.
func TestFalselySuspectedNodeRejoins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f := adamFixture(t, fmt.Sprintf("suspect-%d", os.Getpid()), 2, 3)
	c := runCluster(t, ctx, f, 3, []string{"GONODE_STEP_DELAY=400ms"}, smallPlane...)
	c.Coord.WaitFor(t, `replicas identical" applied=3 `, 60*time.Second)
	victim := c.Nodes[2]
	name := f.Label + "-n2"
	if err := victim.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	c.Coord.WaitFor(t, `gossip reports node dead" node=`+name, 60*time.Second)
	if err := victim.Cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	victim.WaitFor(t, `reconnected to the coordinator`, 60*time.Second)
	c.Coord.WaitFor(t, `generation formed" gen=\d+ size=3 `, 90*time.Second)
	if code := c.Coord.Wait(t, 120*time.Second); code != 0 {
		t.Fatalf("coordinator exit %d", code)
	}
	out := c.Coord.Text()
	for _, want := range []string{`epoch complete" epoch=0 committed=96 missing=0`, `epoch complete" epoch=1 committed=96 missing=0`} {
		if !strings.Contains(out, want) {
			t.Errorf("coordinator log lacks %q", want)
		}
	}
	for i, p := range c.Nodes {
		if code := p.Wait(t, 20*time.Second); code != 0 {
			t.Errorf("node %d exit %d", i, code)
		}
	}
}

package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/internal/clustertest"
)

// TestJobCarriesStepTimeout: the job tells nodes the coordinator's step
// deadline, from which a node's commit wait is derived (issue 11, defect
// 14: survivors of a silent rank must not give up before the coordinator
// aborts the step).
func TestJobCarriesStepTimeout(t *testing.T) {
	f := clustertest.NewFixture(t, clustertest.Options{
		Label: fmt.Sprintf("timeouts-%d", os.Getpid()), MinNodes: 1, MaxNodes: 1,
		ModelConfig: `{"model_type":"bert","vocab_size":30522,"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"max_position_embeddings":64}`,
		TrainLines:  16, EvalLines: 8,
		Model: "  task: classification\n  num_labels: 2\n  init: random\n",
		Train: "  epochs: 1\n  global_batch: 8\n  micro_batch: 4\n",
	})
	cfg, err := config.Load(filepath.Join(f.Dir, "cluster.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.AllReduce.Timeout = 45 * time.Second
	c, err := New(Options{Config: cfg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, want := time.Duration(c.job.StepTimeoutMS)*time.Millisecond, 2*45*time.Second+30*time.Second; got != want {
		t.Errorf("job step timeout %s, want %s (the coordinator's stepTimeout)", got, want)
	}
}

// TestNewGenerationDropsPendingDigests: digests awaited from a broken
// generation are dropped when the next one forms (issue 11, defect 3),
// so the end of the run does not wait for them.
func TestNewGenerationDropsPendingDigests(t *testing.T) {
	c, _, _ := fuzzCoordinator(t, phaseStep)
	c.digests[4] = map[string]string{"n0": "aa"}
	c.cfg.Cluster.MinNodes = 1
	c.cfg.Cluster.Settle = 0
	c.opts.MaxAborts = 1
	// With ready sessions and no settle time, formWorld freezes generation
	// 3 at once; the cancelled context then stops it while it waits for
	// the ranks' answers.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.formWorld(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("formWorld: %v, want it stopped by the cancelled context", err)
	}
	if c.gen != 3 {
		t.Fatalf("generation %d after formWorld, want 3", c.gen)
	}
	if len(c.digests) != 0 {
		t.Errorf("digests of generation 2 kept after generation 3 formed: %v", c.digests)
	}
}

// TestEarlierInstanceDeathKeepsRestartedSession: a node restarted under the
// same name has a session with a new ring address; the gossip death of its
// earlier instance, reported later, must not drop it (issue 11, defect 13).
// The death of the current instance still does.
func TestEarlierInstanceDeathKeepsRestartedSession(t *testing.T) {
	c, ss, _ := fuzzCoordinator(t, phaseWaiting)
	c.handle(event{dead: "n0", deadRing: "n0:9"})
	if ss[0].gone {
		t.Fatal("the death of an earlier instance (ring n0:9) dropped the session on n0:1")
	}
	c.handle(event{dead: "n0", deadRing: ss[0].ring})
	if !ss[0].gone {
		t.Fatal("the death of the current instance did not drop its session")
	}
	c.handle(event{dead: "n1"}) // no metadata: taken as the current instance
	if !ss[1].gone {
		t.Fatal("a death without metadata did not drop the session")
	}
}

// TestLostRankAbortsStepAtOnce: a rank lost while a step is in flight makes
// the coordinator tell the other ranks to abort right away (once), so that
// they cancel their all-reduce rather than wait for the ring's deadline
// (issue 11, defect 12).
func TestLostRankAbortsStepAtOnce(t *testing.T) {
	c, ss, _ := fuzzCoordinator(t, phaseStep)
	drain := func(s *session) (aborts int) {
		for len(s.out) > 0 {
			if m := <-s.out; m.Type == control.TypeAbort && m.Gen == 2 && m.Step == 5 {
				aborts++
			}
		}
		return aborts
	}
	for _, s := range ss {
		drain(s)
	}
	c.lose(ss[2])
	for _, s := range ss[:2] {
		if n := drain(s); n != 1 {
			t.Errorf("%s got %d aborts of step 5, want 1 at once", s.id, n)
		}
	}
	if !c.round.AbortSent {
		t.Error("round does not record that the abort went out")
	}
	c.lose(ss[1])
	if n := drain(ss[0]); n != 0 {
		t.Errorf("a second loss sent %d more aborts", n)
	}
	// A spare's loss aborts nothing.
	c2, ss2, _ := fuzzCoordinator(t, phaseStep)
	for _, s := range ss2 {
		drain(s)
	}
	c2.lose(ss2[3])
	if n := drain(ss2[0]); n != 0 || c2.round.AbortSent {
		t.Errorf("losing spare x sent %d aborts", n)
	}
}

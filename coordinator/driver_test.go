package coordinator

// Tests of the driver (driver*.go) without a network: sessions are relays
// whose outgoing queue the test reads, and the test feeds the driver the
// events serveSession and gossip would. The machine behind it is the
// real one.

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/coordinator/machine"
	"github.com/ringtune/ringtune/data"
)

// testDriver is a driver of a 2-step classification run (8 samples, global
// batch 4, digests after every step) for min nodes, with a settle time of
// one tick.
func testDriver(t *testing.T, min int) (*driver, *syncBuf) {
	t.Helper()
	cfg := config.Default()
	cfg.Cluster.MinNodes, cfg.Cluster.MaxNodes = min, 0
	cfg.Cluster.Settle = tick
	cfg.Cluster.WaitTimeout = time.Minute
	cfg.Train.GlobalBatch, cfg.Train.MicroBatch, cfg.Train.Epochs, cfg.Train.DigestEvery = 4, 2, 1, 1
	cfg.Checkpoint.Every = 0
	var train []data.Encoded
	for i := range 8 {
		train = append(train, data.Encoded{IDs: []int{101, 7 + i, 102}, TypeIDs: []int{0, 0, 0}, Label: i % 2})
	}
	var log syncBuf
	c := &Coordinator{cfg: cfg, opts: Options{MaxAborts: 10}, log: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		task: data.Classification, train: train, job: &control.Job{RunID: "test"}, sessions: map[string]*session{}, events: make(chan event, 16),
		sched: &Schedule{Seed: 1, N: len(train), GlobalBatch: 4, Epochs: 1}}
	d, err := newDriver(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.stopTransfers)
	return d, &log
}

// open opens a session of node id (ring address ring) on d and returns its
// relay, whose queue holds what the driver sent it.
func open(t *testing.T, d *driver, id, ring string) *session {
	t.Helper()
	s := &session{id: id, ring: ring, out: make(chan *control.Msg, 64), applied: -1}
	s.cancel = func() { s.gone = true }
	d.handle(event{s: s, open: true})
	return s
}

// next returns the next message the driver sent s, failing unless it is of
// type typ.
func next(t *testing.T, s *session, typ string) *control.Msg {
	t.Helper()
	select {
	case m := <-s.out:
		if m.Type != typ {
			t.Fatalf("%s got %s (gen %d step %d), want %s", s.id, m.Type, m.Gen, m.Step, typ)
		}
		return m
	default:
		t.Fatalf("%s got nothing, want %s", s.id, typ)
		return nil
	}
}

// ticks advances the machine's clock by n ticks.
func (d *driver) ticksFor(n int) {
	for range n {
		d.step(machine.Event{Kind: machine.Tick})
	}
}

// TestDriverFillsRequestIDs: today's agent sends ready, reduced and digest
// without the request id. The driver fills it in from the request it sent
// on that session, so that a 2-node run goes through its generation, steps,
// commits and digest checks; a reply that names another request is not
// rewritten and does not count.
func TestDriverFillsRequestIDs(t *testing.T) {
	d, log := testDriver(t, 2)
	a, b := open(t, d, "a", "a:1"), open(t, d, "b", "b:1")
	for _, s := range []*session{a, b} {
		next(t, s, control.TypeJob)
		d.handle(event{s: s, m: &control.Msg{Type: control.TypeReady, Ready: &control.Ready{Applied: 0}}})
	}
	d.ticksFor(2)
	for _, s := range []*session{a, b} {
		g := next(t, s, control.TypeGen)
		if g.Req == 0 || g.World == nil || len(g.World.Peers) != 2 {
			t.Fatalf("gen message %+v", g)
		}
		// The agent answers without the request id, and a digest of the
		// initial state (the first generation asks for one).
		d.handle(event{s: s, m: &control.Msg{Type: control.TypeReady, Gen: g.Gen, Ready: &control.Ready{Applied: 0}}})
		d.handle(event{s: s, m: &control.Msg{Type: control.TypeDigest, Gen: g.Gen, Step: 0, Sum: "0000"}})
	}
	if !strings.Contains(log.String(), `replicas identical" applied=0`) {
		t.Fatalf("the initial digests were not matched to the generation:\n%s", log.String())
	}
	if !strings.Contains(log.String(), `generation formed" gen=1 size=2`) {
		t.Fatalf("no generation formed:\n%s", log.String())
	}
	for step := range 2 {
		var st [2]*control.Msg
		for i, s := range []*session{a, b} {
			st[i] = next(t, s, control.TypeStep)
			if st[i].Step != step || len(st[i].Batches) == 0 {
				t.Fatalf("step message %+v, want step %d with batches", st[i], step)
			}
		}
		// A reply to another request is not rewritten: it does not count.
		d.handle(event{s: a, m: &control.Msg{Type: control.TypeReduced, Gen: 1, Step: step, Req: st[0].Req + 5, Reduced: &control.Reduced{Count: 2}}})
		d.handle(event{s: b, m: &control.Msg{Type: control.TypeReduced, Gen: 1, Step: step, Reduced: &control.Reduced{Count: 2}}})
		if len(a.out) != 0 {
			t.Fatalf("step %d committed with a reply to another request", step)
		}
		d.handle(event{s: a, m: &control.Msg{Type: control.TypeReduced, Gen: 1, Step: step, Reduced: &control.Reduced{Count: 2}}})
		for _, s := range []*session{a, b} {
			cm := next(t, s, control.TypeCommit)
			if cm.Step != step || !cm.Digest {
				t.Fatalf("commit %+v, want step %d with a digest request", cm, step)
			}
		}
		for _, s := range []*session{a, b} {
			d.handle(event{s: s, m: &control.Msg{Type: control.TypeDigest, Gen: 1, Step: step + 1, Sum: "abcd"}})
		}
		if want := `replicas identical" applied=` + string(rune('1'+step)); !strings.Contains(log.String(), want) {
			t.Fatalf("log lacks %q: the digests were not matched to the commit:\n%s", want, log.String())
		}
	}
	if !strings.Contains(log.String(), `bad message from node" node=a type=reduced`) {
		t.Errorf("the reply to another request was not logged as dropped:\n%s", log.String())
	}
	if !strings.Contains(log.String(), `epoch complete" epoch=0 committed=8 missing=0 samples=8`) {
		t.Errorf("log lacks the epoch's end:\n%s", log.String())
	}
	// With checkpoint.background (the default) the final checkpoint runs
	// beside the export.
	if p := d.m.Phase(); p != machine.Evaluating && p != machine.Checkpointing && p != machine.Exporting {
		t.Errorf("phase %s after the last step, want the final evaluation, checkpoint or export", p)
	}
}

// TestDriverEarlierInstanceDeath: the gossip death of an earlier instance
// of a node (another ring address), reported after the restarted node
// opened its session, leaves the session open (issue 11, defect 13); the
// death of the live instance, or one without metadata, ends it.
func TestDriverEarlierInstanceDeath(t *testing.T) {
	d, _ := testDriver(t, 3)
	a, b := open(t, d, "a", "a:2"), open(t, d, "b", "b:1")
	d.handle(event{dead: "a", deadRing: "a:1"})
	if a.gone || d.live["a"] == nil {
		t.Fatal("the death of the earlier instance a:1 ended the session of a:2")
	}
	d.handle(event{dead: "a", deadRing: "a:2"})
	if !a.gone || d.live["a"] != nil {
		t.Fatal("the death of the live instance did not end its session")
	}
	d.handle(event{dead: "b"})
	if !b.gone || d.live["b"] != nil {
		t.Fatal("a death without metadata did not end the session")
	}
	// The machine forgot both: a new session under a's name is no duplicate.
	a2 := open(t, d, "a", "a:3")
	next(t, a2, control.TypeJob)
}

// TestDriverDuplicateSessionRefused: a second session under a live node's
// id is refused and closed; the first stays.
func TestDriverDuplicateSessionRefused(t *testing.T) {
	d, log := testDriver(t, 2)
	a := open(t, d, "a", "a:1")
	dup := open(t, d, "a", "a:9")
	if !dup.gone || a.gone || d.live["a"].s != a {
		t.Fatalf("duplicate: gone=%v, first: gone=%v", dup.gone, a.gone)
	}
	if !strings.Contains(log.String(), `duplicate node id refused" node=a`) {
		t.Errorf("log lacks the refusal:\n%s", log.String())
	}
	// The refused session's end changes nothing.
	d.handle(event{s: dup, err: context.Canceled})
	if d.live["a"] == nil || a.gone {
		t.Fatal("the refused session's end ended the live one")
	}
}

// TestDriverLeaveBeforeWorld: a node that leaves before it is a rank is
// stopped with the reason the agent logs and released.
func TestDriverLeaveBeforeWorld(t *testing.T) {
	d, log := testDriver(t, 2)
	a := open(t, d, "a", "a:1")
	next(t, a, control.TypeJob)
	d.handle(event{s: a, m: &control.Msg{Type: control.TypeLeave}})
	if m := next(t, a, control.TypeStop); m.Reason != "left on request" || m.Error != "" {
		t.Fatalf("stop %+v, want a clean release", m)
	}
	if d.live["a"] != nil || !strings.Contains(log.String(), `node left" node=a`) {
		t.Fatalf("a not released:\n%s", log.String())
	}
}

// TestDriverWaitTimeoutMessage: the machine's wait deadline ends the run
// with exit 4 and the event loop's advice (the setting that ran out).
func TestDriverWaitTimeoutMessage(t *testing.T) {
	d, _ := testDriver(t, 2)
	d.c.cfg.Cluster.WaitTimeout = time.Minute
	d.ticksFor(int(ticks(time.Minute)) + 1)
	if d.m.Phase() != machine.Done {
		t.Fatalf("phase %s after the wait timeout", d.m.Phase())
	}
	err := d.outcome()
	if ExitCode(err) != ExitNoNodes || !strings.Contains(err.Error(), "waited cluster.wait_timeout (1m0s) for 2 ready node(s), have 0") ||
		!strings.Contains(err.Error(), "no checkpoint was written") {
		t.Fatalf("outcome %v (exit %d)", err, ExitCode(err))
	}
}

// TestDriverRefusesBadExportNames: an exported answer naming a file outside
// the output directory is refused before the machine asks for a transfer.
func TestDriverRefusesBadExportNames(t *testing.T) {
	d, log := testDriver(t, 1)
	a := open(t, d, "a", "a:1")
	d.handle(event{s: a, m: &control.Msg{Type: control.TypeExported, Gen: 1, Req: 1, Files: []control.FileInfo{{Name: "../escape"}}}})
	if len(d.xfer) != 0 || !strings.Contains(log.String(), `bad message from node" node=a type=exported`) {
		t.Fatalf("bad export name not refused:\n%s", log.String())
	}
}

// wireTypes are the message types a fuzzed node sends, valid and not.
var wireTypes = []string{
	control.TypeHello, control.TypeAuth, control.TypeReady, control.TypeReduced, control.TypeFailed,
	control.TypeDigest, control.TypeEval, control.TypeLoaded, control.TypeExported, control.TypeLeave,
	control.TypeJob, control.TypeGen, control.TypeStep, control.TypeCommit, control.TypeAbort, control.TypeStop, "nope",
}

// TestDriverRandomMessages sends random messages (every type, payloads
// present or not, generations, steps and request ids near the current
// ones) from the ranks and a spare of a training run, with ticks and
// gossip deaths between them. The driver must not panic, and every
// message it sends a node must be well-formed (control.Msg.Validate),
// whatever the machine made of the input.
func TestDriverRandomMessages(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		randomMessages(t, seed)
	}
}

// FuzzDriverMessages: go test -run '^$' -fuzz FuzzDriverMessages ./coordinator/
// explores TestDriverRandomMessages' runs by seed.
func FuzzDriverMessages(f *testing.F) {
	f.Add(uint64(1))
	f.Fuzz(func(t *testing.T, seed uint64) { randomMessages(t, seed) })
}

// randomMessages is one run of TestDriverRandomMessages.
func randomMessages(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	d, _ := testDriver(t, 2)
	defer d.stopTransfers()
	ss := []*session{open(t, d, "a", "a:1"), open(t, d, "b", "b:1"), open(t, d, "x", "x:1")}
	for _, s := range ss {
		next(t, s, control.TypeJob)
		d.handle(event{s: s, m: &control.Msg{Type: control.TypeReady, Ready: &control.Ready{Applied: 0}}})
	}
	d.ticksFor(2)
	// Half the runs start from a training world, the others from the
	// forming one.
	if seed%2 == 0 {
		for _, s := range ss {
			g := next(t, s, control.TypeGen)
			d.handle(event{s: s, m: &control.Msg{Type: control.TypeReady, Gen: g.Gen, Ready: &control.Ready{Applied: 0}}})
			d.handle(event{s: s, m: &control.Msg{Type: control.TypeDigest, Gen: g.Gen, Sum: "aa"}})
		}
		if d.m.Phase() != machine.Training {
			t.Fatalf("seed %d: phase %s after every rank joined, want training", seed, d.m.Phase())
		}
	}
	for i := 0; i < 400 && d.m.Phase() != machine.Done; i++ {
		s := ss[r.IntN(len(ss))]
		switch r.IntN(20) {
		case 0:
			d.ticksFor(r.IntN(50))
		case 1:
			d.handle(event{dead: s.id, deadRing: []string{"", s.ring, "old:1"}[r.IntN(3)]})
		default:
			m := &control.Msg{Type: wireTypes[r.IntN(len(wireTypes))], Gen: uint64(r.IntN(4)), Step: r.IntN(4) - 1, Req: r.IntN(12)}
			if r.IntN(4) > 0 {
				m.Ready = &control.Ready{Applied: r.IntN(4) - 1}
				m.Reduced = &control.Reduced{Count: r.IntN(3)}
				m.Eval = &control.EvalSums{Count: float64(r.IntN(3))}
				m.Sum = []string{"aa", "bb"}[r.IntN(2)]
				m.Files = []control.FileInfo{{Name: []string{"model.safetensors", "../x", ""}[r.IntN(3)]}}
			}
			if r.IntN(5) == 0 {
				m.Error = "boom"
			}
			d.handle(event{s: s, m: m})
		}
		for _, s := range ss {
			for len(s.out) > 0 {
				if err := (<-s.out).Validate(); err != nil {
					t.Fatalf("seed %d: the driver sent %s a malformed message: %v", seed, s.id, err)
				}
			}
		}
	}
}

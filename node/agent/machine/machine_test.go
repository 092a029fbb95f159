package machine

import (
	"fmt"
	"strings"
	"testing"
)

// h drives one machine and records its output as text, one line per
// reply ("send …"), work ("work …") and note ("note …").
type h struct {
	t *testing.T
	m *Machine
}

func newH(t *testing.T, cfg Config) *h {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &h{t: t, m: m}
}

func (x *h) step(ev Event) Ready {
	x.t.Helper()
	x.m.Step(ev)
	rd := x.m.Ready()
	x.m.Advance()
	return rd
}

func (x *h) msg(m Msg) Ready { x.t.Helper(); return x.step(Event{Kind: Message, Msg: &m}) }

// done answers the busy work of rd (the only busy one).
func (x *h) done(rd Ready, ev Event) Ready {
	x.t.Helper()
	for _, w := range rd.Work {
		if w.ID > 0 {
			ev.Kind, ev.ID = WorkDone, w.ID
			return x.step(ev)
		}
	}
	x.t.Fatalf("no busy work in %v", rd)
	return Ready{}
}

func render(rd Ready) string {
	var b strings.Builder
	for _, r := range rd.Replies {
		fmt.Fprintf(&b, "send %s\n", r)
	}
	for _, w := range rd.Work {
		fmt.Fprintf(&b, "work %s\n", w)
	}
	for _, n := range rd.Notes {
		fmt.Fprintf(&b, "note %s\n", n)
	}
	return b.String()
}

// want checks that every line of want appears in rd's rendering, in order.
func (x *h) want(rd Ready, want ...string) {
	x.t.Helper()
	got := render(rd)
	rest := got
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			x.t.Fatalf("output lacks %q (in order); got:\n%s", w, got)
		}
		rest = rest[i+len(w):]
	}
}

func (x *h) phase(p Phase) {
	x.t.Helper()
	if x.m.Phase() != p {
		x.t.Fatalf("phase %s, want %s", x.m.Phase(), p)
	}
}

var cfg = Config{CommitTicks: 10, RejoinTicks: 20}

// rank0 brings a machine to Idle as rank 0 of generation 1 of 2 ranks,
// holding 0 committed steps.
func rank0(t *testing.T) *h {
	x := newH(t, cfg)
	x.step(Event{Kind: Open})
	rd := x.msg(Msg{Kind: Job})
	x.want(rd, "work setup id=1")
	x.want(x.done(rd, Event{Applied: 0}), "send setup applied=0")
	x.phase(Spare)
	rd = x.msg(Msg{Kind: Gen, Gen: 1, Req: 1, Rank: 0, World: 2})
	x.want(x.done(rd, Event{Applied: 0}), "send joined gen=1 req=1 applied=0")
	x.phase(Idle)
	return x
}

// TestStepCommitEchoesRequest: the life of one step; every reply echoes
// the generation and request id of the request it answers, and a digest
// asked with the commit echoes the commit's.
func TestStepCommitEchoesRequest(t *testing.T) {
	x := rank0(t)
	rd := x.msg(Msg{Kind: Step, Gen: 1, Req: 7, Step: 0, World: 2, Count: 4})
	x.want(rd, "work step id=3 gen=1 step=0")
	x.phase(Computing)
	x.want(x.done(rd, Event{Payload: "report"}), "send reduced gen=1 req=7 step=0")
	x.phase(AwaitCommit)
	if dl, ok := x.m.Deadline(); !ok || dl != x.m.Now()+cfg.CommitTicks {
		t.Fatalf("commit deadline %d %v", dl, ok)
	}
	rd = x.msg(Msg{Kind: Commit, Gen: 1, Req: 7, Step: 0, Count: 4, Digest: true})
	x.want(rd, "work apply id=4 gen=1 step=0")
	rd = x.done(rd, Event{})
	x.want(rd, "work digest id=5")
	x.want(x.done(rd, Event{Sum: "abc"}), "send digest gen=1 req=7 step=1 sum=abc")
	x.phase(Idle)
	if x.m.Held() != 1 {
		t.Fatalf("held %d", x.m.Held())
	}
	// Evaluation and export echo theirs too.
	rd = x.msg(Msg{Kind: Eval, Gen: 1, Req: 8, Rank: 0, World: 2})
	x.want(x.done(rd, Event{Payload: "sums"}), "send evalres gen=1 req=8")
	rd = x.msg(Msg{Kind: Export, Gen: 1, Req: 9})
	x.want(x.done(rd, Event{Payload: "files"}), "send exported gen=1 req=9 step=1")
	x.want(x.msg(Msg{Kind: Stop}), "note run finished")
	if o, _ := x.m.Outcome(); o != Finished {
		t.Fatalf("outcome %v", o)
	}
}

// TestRejectsStaleAndUnknown: requests of another generation, for another
// step or with another request id are dropped untouched (a step of
// another generation is answered with failed, so the coordinator learns
// of it).
func TestRejectsStaleAndUnknown(t *testing.T) {
	x := rank0(t)
	x.want(x.msg(Msg{Kind: Step, Gen: 2, Req: 3, Step: 0, World: 2, Count: 4}),
		`send failed gen=2 req=3 step=0 error="stale message from coordinator: generation 2, current generation is 1"`)
	x.phase(Idle)
	x.want(x.msg(Msg{Kind: Gen, Gen: 1, Req: 4, World: 2}), "dropped: stale generation 1, current generation is 1")
	x.want(x.msg(Msg{Kind: Commit, Gen: 1, Req: 3, Step: 0, Count: 4}), "dropped: commit of step 0, but no such step is pending")
	x.want(x.msg(Msg{Kind: Eval, Gen: 0, Req: 3}), "dropped: stale message from coordinator: generation 0, current generation is 1")
	x.want(x.msg(Msg{Kind: Job}), "dropped: a second job on one session")
	x.want(x.msg(Msg{Kind: Reduced, Gen: 1}), `dropped: a node does not take "reduced" messages`)
	rd := x.msg(Msg{Kind: Step, Gen: 1, Req: 5, Step: 0, World: 2, Count: 4})
	x.done(rd, Event{Payload: "r"})
	x.want(x.msg(Msg{Kind: Commit, Gen: 1, Req: 6, Step: 0, Count: 4}), "dropped: commit of step 0 answers request 6, the step in flight is request 5")
	x.want(x.msg(Msg{Kind: Abort, Gen: 1, Req: 4, Step: 0}), "dropped: abort of step 0 answers request 4, the step in flight is request 5")
	x.want(x.msg(Msg{Kind: Step, Gen: 1, Req: 9, Step: 0, World: 2, Count: 4}), "dropped: step 0 while step 0 awaits its commit")
	x.want(x.msg(Msg{Kind: Pull, Gen: 1, Req: 9, PullStep: 0}), "dropped: pull of step 0 while step 0 awaits its commit")
	x.phase(AwaitCommit)
	x.want(x.msg(Msg{Kind: Abort, Gen: 1, Req: 5, Step: 0}), "work discard gen=1 step=0")
	x.phase(Idle)
	// A result of no busy work is dropped.
	x.want(x.step(Event{Kind: WorkDone, ID: 99}), "result of work 99 dropped")
}

// TestBeforeSetUp: nothing but the job is taken before the trainer is set
// up, and a failed set-up tells the coordinator (generation 0, the job's
// request id) and ends the node.
func TestBeforeSetUp(t *testing.T) {
	x := newH(t, cfg)
	x.want(x.msg(Msg{Kind: Job}), "no session is open")
	x.step(Event{Kind: Open})
	x.want(x.msg(Msg{Kind: Gen, Gen: 1, World: 1}), "dropped: the trainer is not set up yet")
	x.want(x.msg(Msg{Kind: Step, Gen: 1, World: 1, Count: 1}), "dropped: the trainer is not set up yet")
	rd := x.msg(Msg{Kind: Job})
	x.want(x.done(rd, Event{Error: "agent: set up the model: boom", Fatal: true}), `send failed step=0 error="agent: set up the model: boom"`, "note node fails")
	if o, why := x.m.Outcome(); o != Failure || !strings.Contains(why, "boom") {
		t.Fatalf("outcome %v %q", o, why)
	}
	if _, ok := x.m.Deadline(); ok {
		t.Fatal("deadline after done")
	}
}

// TestQueuedWhileBusyAbortCancels: requests that arrive while a step runs
// wait for it, in order, but an abort of that step cancels its ring
// operation at once (defect 12).
func TestQueuedWhileBusyAbortCancels(t *testing.T) {
	x := rank0(t)
	st := x.msg(Msg{Kind: Step, Gen: 1, Req: 5, Step: 0, World: 2, Count: 4})
	x.want(x.msg(Msg{Kind: Abort, Gen: 1, Req: 5, Step: 0}), "work cancel gen=1 step=0")
	rd := x.msg(Msg{Kind: Gen, Gen: 2, Req: 6, Rank: 0, World: 1})
	if !rd.Empty() {
		t.Fatalf("a generation handled while the step runs: %s", render(rd))
	}
	// The cancelled ring reports its failure; then the abort and the
	// generation are handled, in order.
	rd = x.done(st, Event{Error: "context canceled"})
	x.want(rd, `send failed gen=1 req=5 step=0 error="context canceled"`, "work discard gen=1 step=0", "work join id=4 gen=2 rank=0/1")
	x.phase(Joining)
}

// TestStepOfWrongStateFails: a step that does not start from the state the
// node holds ends the node (it would train the wrong replica).
func TestStepOfWrongStateFails(t *testing.T) {
	x := rank0(t)
	x.want(x.msg(Msg{Kind: Step, Gen: 1, Req: 5, Step: 3, World: 2, Count: 4}), `send failed gen=1 req=5 step=3 error="agent: step 3 requested but the trainer holds 0 committed steps"`)
	x.phase(Done)
}

// TestCommitTimeoutRejoins: no commit within CommitTicks counts as a lost
// session: the step's gradients are dropped, and the node joins again
// with its state; a job on the new session is taken; past RejoinTicks
// without a session the node fails, naming the first loss.
func TestCommitTimeoutRejoins(t *testing.T) {
	x := rank0(t)
	rd := x.msg(Msg{Kind: Step, Gen: 1, Req: 5, Step: 0, World: 2, Count: 4})
	x.done(rd, Event{Payload: "r"})
	for i := int64(1); i < cfg.CommitTicks; i++ {
		if rd := x.step(Event{Kind: Tick}); len(rd.Work) > 0 {
			t.Fatalf("tick %d: %s", i, render(rd))
		}
	}
	x.want(x.step(Event{Kind: Tick}), "work endsession", "work discard gen=1 step=0", "work connect applied=0", "no commit or abort of step 0")
	x.phase(Rejoining)
	x.want(x.step(Event{Kind: ConnectFailed, Error: "refused"}), "work connect applied=0")
	x.step(Event{Kind: Open})
	x.phase(AwaitJob)
	rd = x.msg(Msg{Kind: Job})
	x.want(x.done(rd, Event{Applied: 0}), "send setup applied=0")
	// Lost again, and this time nobody answers.
	x.want(x.step(Event{Kind: Lost, Error: "EOF"}), "work endsession", "work connect")
	for i := int64(0); i < cfg.RejoinTicks; i++ {
		x.step(Event{Kind: Tick})
	}
	x.phase(Done)
	if o, why := x.m.Outcome(); o != Failure || !strings.Contains(why, "EOF") || !strings.Contains(why, "could not rejoin within 20 ticks") {
		t.Fatalf("outcome %v %q", o, why)
	}
}

// TestNoRejoin: with RejoinTicks < 0 a lost session ends the node, and the
// first session failing to open does too.
func TestNoRejoin(t *testing.T) {
	x := newH(t, Config{CommitTicks: 5, RejoinTicks: -1})
	x.step(Event{Kind: Open})
	x.step(Event{Kind: Lost, Error: "EOF"})
	if o, why := x.m.Outcome(); o != SessionLost || why != "EOF" {
		t.Fatalf("outcome %v %q", o, why)
	}
	x = newH(t, cfg)
	x.step(Event{Kind: ConnectFailed, Error: "no coordinator at x:1"})
	if o, why := x.m.Outcome(); o != Failure || why != "no coordinator at x:1" {
		t.Fatalf("outcome %v %q", o, why)
	}
}

// TestTermLeavesAtBoundary: SIGTERM on a rank sends leave and keeps
// training (no step aborted, defect 9); the stop that releases it ends the
// node as left. Not released within LeaveTicks, it leaves at the next
// step boundary on its own, never with a step awaiting its commit.
func TestTermLeavesAtBoundary(t *testing.T) {
	x := rank0(t)
	st := x.msg(Msg{Kind: Step, Gen: 1, Req: 5, Step: 0, World: 2, Count: 4})
	x.want(x.step(Event{Kind: Term}), "send leave gen=1")
	x.want(x.done(st, Event{Payload: "r"}), "send reduced gen=1 req=5 step=0")
	rd := x.msg(Msg{Kind: Commit, Gen: 1, Req: 5, Step: 0, Count: 4})
	x.done(rd, Event{})
	x.phase(Idle)
	x.msg(Msg{Kind: Stop})
	if o, _ := x.m.Outcome(); o != Left {
		t.Fatalf("outcome %v", o)
	}

	x = rank0(t)
	x.step(Event{Kind: Term})
	for range 3 {
		x.step(Event{Kind: Tick})
	}
	st = x.msg(Msg{Kind: Step, Gen: 1, Req: 5, Step: 0, World: 2, Count: 10})
	x.done(st, Event{Payload: "r"})
	for i := int64(0); i < cfg.CommitTicks-1; i++ {
		x.step(Event{Kind: Tick})
	}
	x.phase(AwaitCommit) // the leave deadline passed, but a step awaits its commit
	rd = x.msg(Msg{Kind: Commit, Gen: 1, Req: 5, Step: 0, Count: 4})
	x.want(x.done(rd, Event{}), "note leaving at a step boundary")
	if o, _ := x.m.Outcome(); o != Left {
		t.Fatalf("outcome %v", o)
	}

	// A spare leaves at once.
	x = newH(t, cfg)
	x.step(Event{Kind: Open})
	x.done(x.msg(Msg{Kind: Job}), Event{Applied: -1})
	x.step(Event{Kind: Term})
	if o, _ := x.m.Outcome(); o != Left {
		t.Fatalf("spare: outcome %v", o)
	}
}

// TestStopWithError: a run the coordinator failed fails the node too.
func TestStopWithError(t *testing.T) {
	x := rank0(t)
	x.msg(Msg{Kind: Stop, Error: "replicas diverged"})
	if o, why := x.m.Outcome(); o != Failure || !strings.Contains(why, "replicas diverged") {
		t.Fatalf("outcome %v %q", o, why)
	}
}

// TestPull: a pull loads the state; a failed pull leaves the node without
// committed state and says so in loaded.
func TestPull(t *testing.T) {
	x := rank0(t)
	rd := x.msg(Msg{Kind: Pull, Gen: 1, Req: 4, PullStep: 3, Digest: true})
	rd = x.done(rd, Event{})
	x.want(rd, "send loaded gen=1 req=4 step=3", "work digest")
	x.want(x.done(rd, Event{Sum: "d"}), "send digest gen=1 req=4 step=3 sum=d")
	rd = x.msg(Msg{Kind: Pull, Gen: 1, Req: 5, PullStep: 4})
	x.want(x.done(rd, Event{Error: "source gone"}), `send loaded gen=1 req=5 step=4 error="source gone"`)
	if x.m.Held() != -1 {
		t.Fatalf("held %d after a failed pull", x.m.Held())
	}
}

// TestConfigValidated: every setting that needs a deadline has one.
func TestConfigValidated(t *testing.T) {
	for _, c := range []Config{{}, {CommitTicks: 1}, {CommitTicks: 1, RejoinTicks: 1, LeaveTicks: -1}} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// snapshot is the machine's whole state but its output and clock.
func snapshot(m *Machine) string {
	return fmt.Sprintf("%s est=%v held=%d setUp=%v job=%v gen=%d/%d/%d/%d step=%v/%d/%d/%d/%v/%v work=%d/%s inbox=%d leave=%v/%d/%v out=%d/%s",
		m.phase, m.established, m.held, m.setUp, m.jobSeen, m.gen, m.rank, m.world, m.genFrom, m.inStep, m.stepGen, m.stepReq, m.step,
		m.stepFailed, m.cancelled, m.work, m.workKind, len(m.inbox), m.leaving, m.leaveBy, m.leaveSent, m.outcome, m.err)
}

// TestRandomMessagesRejectedUntouched: in every phase a node reaches, a
// request that Check refuses changes nothing when it arrives, and no
// sequence of requests panics or leaves a busy phase without its work.
func TestRandomMessagesRejectedUntouched(t *testing.T) {
	kinds := []Kind{Job, Gen, Pull, Step, Commit, Abort, Eval, Export, SetUp, Reduced, Digest}
	for seed := range 300 {
		x := rank0(t)
		r := seed
		next := func(n int) int { r = (r*1103515245 + 12345) & 0x7fffffff; return r % n }
		var busy Ready
		for range 40 {
			if x.m.Phase() == Done {
				break
			}
			if x.m.Phase().busy() {
				// Finish the busy work (a step sometimes with a ring error).
				ev := Event{Applied: x.m.Held(), Payload: "p", Sum: "s"}
				if next(4) == 0 {
					ev.Error = "ring broke"
				}
				busy = x.done(busy, ev)
				continue
			}
			msg := Msg{Kind: kinds[next(len(kinds))], Gen: uint64(next(4)), Req: uint64(next(4)), Step: next(3) - 1,
				Rank: next(2), World: 1 + next(2), Count: 4, PullStep: next(3) - 1, Digest: next(2) == 0}
			err := x.m.Check(msg)
			before := snapshot(x.m)
			rd := x.msg(msg)
			if err != nil {
				if after := snapshot(x.m); after != before || len(rd.Replies) > 0 || len(rd.Work) > 0 {
					t.Fatalf("seed %d: refused %s (%v) changed the machine:\n%s\n%s\n%s", seed, msg, err, before, after, render(rd))
				}
				continue
			}
			busy = rd
			if x.m.Phase().busy() {
				found := false
				for _, w := range rd.Work {
					found = found || w.ID > 0
				}
				if !found {
					t.Fatalf("seed %d: busy in %s after %s with no work: %s", seed, x.m.Phase(), msg, render(rd))
				}
			}
		}
	}
}

// TestTicksEqualSingleTicks: a Tick of k units leaves the machine exactly
// as k single Ticks do, whether a deadline falls inside the k ticks (a
// commit that never comes, a rejoin that times out) or nothing is timed.
func TestTicksEqualSingleTicks(t *testing.T) {
	cfg := Config{CommitTicks: 5, RejoinTicks: 7}
	// setups drive a fresh machine into a phase: idle after the job,
	// awaiting a commit, or rejoining.
	open := func(m *Machine) { m.Step(Event{Kind: Open}) }
	lost := func(m *Machine) { m.Step(Event{Kind: Open}); m.Step(Event{Kind: Lost, Error: "broken"}) }
	term := func(m *Machine) { m.Step(Event{Kind: Open}); m.Step(Event{Kind: Term}) }
	for name, setup := range map[string]func(*Machine){"open": open, "lost": lost, "term": term} {
		for _, k := range []int64{1, 2, 6, 7, 8, 30} {
			one, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			many, _ := New(cfg)
			setup(one)
			setup(many)
			one.Advance()
			many.Advance()
			var notes []string
			for range k {
				one.Step(Event{Kind: Tick})
				notes = append(notes, one.Ready().Notes...)
				one.Advance()
			}
			many.Step(Event{Kind: Tick, Ticks: k})
			if one.Now() != many.Now() || one.Phase() != many.Phase() || fmt.Sprint(notes) != fmt.Sprint(many.Ready().Notes) {
				t.Errorf("%s, %d ticks: single ticks reach tick %d phase %s notes %q; one Tick of %d reaches tick %d phase %s notes %q",
					name, k, one.Now(), one.Phase(), notes, k, many.Now(), many.Phase(), many.Ready().Notes)
			}
			o1, w1 := one.Outcome()
			o2, w2 := many.Outcome()
			if o1 != o2 || w1 != w2 {
				t.Errorf("%s, %d ticks: outcome %d %q, one Tick of %d: %d %q", name, k, o1, w1, k, o2, w2)
			}
		}
	}
}

// TestRecycleKeepsReplies: recycled arrays carry the next Ready's replies
// and work, and recycling while some are queued loses none of them.
func TestRecycleKeepsReplies(t *testing.T) {
	m, err := New(Config{CommitTicks: 5, RejoinTicks: 7})
	if err != nil {
		t.Fatal(err)
	}
	replies, work := make([]Msg, 1, 8), make([]Work, 1, 8)
	m.Recycle(replies, work)
	if &m.out.Replies[:1][0] != &replies[0] || &m.out.Work[:1][0] != &work[0] {
		t.Fatal("the recycled arrays were not kept")
	}
	m.Step(Event{Kind: Open})
	m.Step(Event{Kind: Message, Msg: &Msg{Kind: Job}})
	rd := m.Ready()
	m.Recycle(make([]Msg, 0, 64), make([]Work, 0, 64)) // work is queued: ignored
	if got := m.Ready(); len(got.Work) != len(rd.Work) || len(rd.Work) == 0 || got.Work[0].Kind != SetUpTrainer {
		t.Fatalf("after a job, work %v; after recycling while it was queued, %v", rd.Work, got.Work)
	}
}

package machine

import (
	"fmt"
)

// Machine is the agent's protocol state for the node's whole life, across
// sessions (a lost session's trainer is kept for the next one). It is not
// safe for concurrent use: one driver goroutine owns it.
type Machine struct {
	cfg         Config
	commitTicks int64
	now         int64
	phase       Phase

	established bool  // a session was opened once
	rejoinBy    int64 // Rejoining's deadline
	lostWhy     string

	held    int  // committed steps the trainer holds, -1 for none
	setUp   bool // the trainer is set up on this session
	jobSeen bool

	gen     uint64
	rank    int
	world   int
	genFrom int // committed steps the generation starts from

	// the step in flight (computing, or reported and awaiting its commit)
	inStep     bool
	stepGen    uint64
	stepReq    uint64
	step       int
	stepFailed bool // its all-reduce failed: only an abort may follow
	cancelled  bool // its ring operation was cancelled
	commitBy   int64

	work     uint64 // the busy work's id, 0 when none
	workKind WorkKind
	cur      Msg   // the request the busy work answers
	inbox    []Msg // requests that arrived while work was busy
	ids      uint64

	leaving   bool  // SIGTERM: leave at a step boundary
	leaveBy   int64 // >0: wait for the release until this tick
	leaveSent bool

	out     Ready
	outcome Outcome
	err     string
}

// New returns a machine in phase Connecting: the driver opens the first
// session and steps Open (or ConnectFailed).
func New(cfg Config) (*Machine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Machine{cfg: cfg, commitTicks: cfg.CommitTicks, held: -1, step: -1}, nil
}

// Phase is the current phase.
func (m *Machine) Phase() Phase { return m.phase }

// Now is the current tick.
func (m *Machine) Now() int64 { return m.now }

// Held is the committed step count the trainer holds (-1: none); what a
// session's hello announces.
func (m *Machine) Held() int { return m.held }

// Generation is the generation the node is a rank of (0: none) and its rank.
func (m *Machine) Generation() (uint64, int) { return m.gen, m.rank }

// InStep reports the step in flight (computing or awaiting its commit).
func (m *Machine) InStep() (step int, ok bool) { return m.step, m.inStep }

// Leaving reports whether the node was asked to leave (SIGTERM).
func (m *Machine) Leaving() bool { return m.leaving }

// CommitTicks is the commit deadline in force (Config.CommitTicks, or the
// job's raise of it).
func (m *Machine) CommitTicks() int64 { return m.commitTicks }

// Deadline is the tick of the nearest deadline: the commit or abort of the
// step reported (AwaitCommit), the end of the rejoin (Rejoining), the
// release after SIGTERM. ok is false when nothing is timed: busy work is
// bounded by the driver's own timeouts (ring, bulk), and a spare or idle
// rank waits for the coordinator, whose session's end is the signal.
func (m *Machine) Deadline() (tick int64, ok bool) {
	// No slice of candidates: a simulator asks this of every node it
	// steps, so it must not allocate.
	switch m.phase {
	case Done:
		return 0, false
	case AwaitCommit:
		tick, ok = m.commitBy, true
	case Rejoining:
		tick, ok = m.rejoinBy, true
	}
	if m.leaving && m.leaveBy > 0 && (!ok || m.leaveBy < tick) {
		tick, ok = m.leaveBy, true
	}
	return tick, ok
}

// Outcome is how the run ended (Running until Done) and why (Failure).
func (m *Machine) Outcome() (Outcome, string) { return m.outcome, m.err }

// Ready returns what the machine decided since the last Advance.
func (m *Machine) Ready() Ready { return m.out }

// Advance acknowledges the last Ready: the driver sent its replies and
// started its work.
func (m *Machine) Advance() { m.out = Ready{} }

// Recycle hands back the Replies and Work of an acknowledged Ready that
// the driver has finished with, for the machine to queue its next ones
// in, so that a simulator stepping many machines does not allocate them
// again for every event. The driver must not read them after Recycle. It
// does nothing to a slice while the machine has queued into its own.
func (m *Machine) Recycle(replies []Msg, work []Work) {
	if len(m.out.Replies) == 0 && cap(replies) > cap(m.out.Replies) {
		clear(replies) // drop what the sent replies point to
		m.out.Replies = replies[:0]
	}
	if len(m.out.Work) == 0 && cap(work) > cap(m.out.Work) {
		clear(work)
		m.out.Work = work[:0]
	}
}

func (m *Machine) reply(msg Msg) { m.out.Replies = append(m.out.Replies, msg) }

func (m *Machine) note(format string, args ...any) {
	m.out.Notes = append(m.out.Notes, fmt.Sprintf(format, args...))
}

// instant queues work the driver does at once and does not answer.
func (m *Machine) instant(w Work) { m.out.Work = append(m.out.Work, w) }

// start queues busy work answering req, and enters phase p until its
// WorkDone.
func (m *Machine) start(p Phase, req Msg, w Work) {
	m.ids++
	w.ID = m.ids
	m.work, m.workKind, m.cur = w.ID, w.Kind, req
	m.phase = p
	m.out.Work = append(m.out.Work, w)
}

// finish ends the process's run.
func (m *Machine) finish(o Outcome, why string) {
	if m.phase == Done {
		return
	}
	m.phase, m.outcome, m.err = Done, o, why
	m.work, m.inbox = 0, nil
	switch o {
	case Finished:
		m.note("run finished")
	case Left:
		m.note("leaving at a step boundary")
	default:
		m.note("node fails: %s", why)
	}
}

// Step applies one event.
func (m *Machine) Step(ev Event) {
	if m.phase == Done {
		return
	}
	switch ev.Kind {
	case Open:
		m.onOpen()
	case ConnectFailed:
		m.onConnectFailed(ev.Error)
	case Lost:
		m.onLost(ev.Error)
	case Message:
		if ev.Msg == nil {
			m.note("message event without a message dropped")
			break
		}
		m.onMsg(*ev.Msg)
	case WorkDone:
		m.onWorkDone(ev)
	case Fail:
		m.failNode(ev.Error)
	case Term:
		m.onTerm()
	case Tick:
		m.onTicks(max(ev.Ticks, 1))
	default:
		m.note("unknown event kind %d dropped", ev.Kind)
	}
	m.drain()
	m.maybeLeave()
}

// rest enters the phase the node waits in when no work runs.
func (m *Machine) rest() {
	switch {
	case !m.jobSeen:
		m.phase = AwaitJob
	case m.inStep:
		m.phase = AwaitCommit
	case m.gen == 0:
		m.phase = Spare
	default:
		m.phase = Idle
	}
}

// drain handles the requests that queued while work was busy, in order.
func (m *Machine) drain() {
	for len(m.inbox) > 0 && m.phase != Done && !m.phase.busy() && m.phase != Connecting && m.phase != Rejoining {
		msg := m.inbox[0]
		m.inbox = m.inbox[1:]
		m.handle(msg)
	}
	if len(m.inbox) == 0 {
		m.inbox = nil // let a long run's queue be collected
	}
}

// maybeLeave ends the run of a node asked to leave once it is at a step
// boundary: no work running, no step awaiting its commit, and the wait for
// the coordinator's release over.
func (m *Machine) maybeLeave() {
	if !m.leaving || m.phase == Done || m.phase.busy() || m.inStep {
		return
	}
	if m.leaveBy > 0 && m.now < m.leaveBy {
		return
	}
	m.finish(Left, "")
}

func (m *Machine) onOpen() {
	if m.phase != Connecting && m.phase != Rejoining {
		m.note("session opened in phase %s ignored", m.phase)
		return
	}
	if m.established {
		m.note("session opened again after %d ticks, holding %d committed steps", m.now-(m.rejoinBy-m.cfg.RejoinTicks), m.held)
	}
	m.established = true
	m.jobSeen, m.setUp, m.gen, m.rank, m.world = false, false, 0, -1, 0
	m.phase = AwaitJob
}

func (m *Machine) onConnectFailed(why string) {
	switch {
	case m.phase == Connecting && !m.established:
		m.finish(Failure, why)
	case m.phase == Rejoining:
		if m.now >= m.rejoinBy {
			m.giveUpRejoin(why)
			return
		}
		m.instant(Work{Kind: Connect, Applied: m.held})
	default:
		m.note("connect failure in phase %s ignored: %s", m.phase, why)
	}
}

func (m *Machine) giveUpRejoin(why string) {
	m.finish(Failure, fmt.Sprintf("lost the session with the coordinator (%s) and could not rejoin within %d ticks: %s", m.lostWhy, m.cfg.RejoinTicks, why))
}

// onLost ends the session. A node that was established, is not leaving and
// may rejoin keeps its trainer (without the gradients of a step in flight,
// which the next generation redoes) and joins again.
func (m *Machine) onLost(why string) {
	if m.phase == Connecting || m.phase == Rejoining {
		m.note("session loss in phase %s ignored: %s", m.phase, why)
		return
	}
	m.instant(Work{Kind: EndSession})
	if m.inStep {
		m.instant(Work{Kind: Discard, Gen: m.stepGen, Step: m.step})
	}
	m.inStep, m.stepFailed, m.cancelled, m.step = false, false, false, -1
	m.work, m.inbox = 0, nil
	m.jobSeen, m.setUp, m.gen, m.rank, m.world = false, false, 0, -1, 0
	if m.leaving || m.cfg.RejoinTicks < 0 {
		m.finish(SessionLost, why)
		return
	}
	m.lostWhy = why
	m.rejoinBy = m.now + m.cfg.RejoinTicks
	m.phase = Rejoining
	m.note("session with the coordinator lost (%s); joining again within %d ticks, keeping %d committed steps", why, m.cfg.RejoinTicks, m.held)
	m.instant(Work{Kind: Connect, Applied: m.held, Why: why})
}

// failNode tells the coordinator that the request in hand failed on this
// node, and ends the run.
func (m *Machine) failNode(why string) {
	r := m.cur
	step := r.Step
	if m.inStep {
		step = m.step
	}
	m.reply(Msg{Kind: Failed, Gen: m.gen, Req: r.Req, Step: step, Error: why})
	m.finish(Failure, why)
}

func (m *Machine) onTerm() {
	if m.leaving {
		return
	}
	m.leaving = true
	switch {
	case m.phase == Connecting || m.phase == Rejoining:
		m.finish(Left, "")
	case m.gen > 0:
		// A rank asks to be released between two steps and trains on
		// meanwhile: the leave aborts no step (issue 11, defect 9).
		m.reply(Msg{Kind: Leave, Gen: m.gen})
		m.leaveSent = true
		m.leaveBy = m.now + m.leaveTicks()
		m.note("asked the coordinator to release this node at a step boundary (gen %d, %d committed steps)", m.gen, m.held)
	}
}

// leaveTicks is how long a leaving rank waits for its release.
func (m *Machine) leaveTicks() int64 {
	if m.cfg.LeaveTicks > 0 {
		return m.cfg.LeaveTicks
	}
	return m.commitTicks
}

// onTicks is k single ticks: each one's deadlines, queued requests and
// leave, as k Tick events would do them. Once nothing is timed (no
// Deadline) a tick only moves the clock: the requests queued stay
// blocked by the same phase and no leave waits on the clock, so the rest
// is added at once.
func (m *Machine) onTicks(k int64) {
	for ; k > 0 && m.phase != Done; k-- {
		if _, timed := m.Deadline(); !timed {
			m.now += k
			return
		}
		m.onTick()
		if k > 1 {
			m.drain()
			m.maybeLeave()
		}
	}
}

func (m *Machine) onTick() {
	m.now++
	switch {
	case m.phase == AwaitCommit && m.now >= m.commitBy:
		m.onLost(fmt.Sprintf("no commit or abort of step %d from the coordinator within %d ticks", m.step, m.commitTicks))
	case m.phase == Rejoining && m.now >= m.rejoinBy:
		m.giveUpRejoin("the deadline passed")
	}
	if m.leaving && m.leaveBy > 0 && m.now >= m.leaveBy && m.phase != Done {
		m.note("the coordinator did not release this node within %d ticks; leaving at a step boundary", m.leaveTicks())
		m.leaveBy = 0
	}
}

// onMsg takes a coordinator message: handled now, or queued behind the
// busy work. The abort of the step being computed also cancels its ring
// operation at once, so the node does not wait out the ring's timeout
// for a peer the coordinator has already given up (defect 12).
func (m *Machine) onMsg(msg Msg) {
	switch {
	case m.phase == Connecting || m.phase == Rejoining:
		m.note("%s dropped: no session is open", msg)
	case m.phase.busy():
		if msg.Kind == Abort && m.phase == Computing && !m.cancelled && msg.Gen == m.stepGen && msg.Step == m.step && msg.Req == m.stepReq {
			m.cancelled = true
			m.instant(Work{Kind: CancelStep, Gen: msg.Gen, Step: msg.Step})
		}
		m.inbox = append(m.inbox, msg)
	default:
		m.handle(msg)
	}
}

// handle acts on one request that the node can take now; anything else is
// dropped with a note, untouched.
func (m *Machine) handle(msg Msg) {
	if err := m.expect(msg); err != nil {
		m.note("%s dropped: %v", msg, err)
		return
	}
	switch msg.Kind {
	case Job:
		m.jobSeen = true
		m.start(SettingUp, msg, Work{Kind: SetUpTrainer, Req: msg.Req, Payload: msg.Payload})
	case Gen:
		if m.inStep {
			// The step of the old generation is dropped: the new one
			// redoes it.
			m.instant(Work{Kind: Discard, Gen: m.stepGen, Step: m.step})
			m.inStep, m.stepFailed, m.step = false, false, -1
		}
		m.start(Joining, msg, Work{Kind: JoinGen, Gen: msg.Gen, Req: msg.Req, Rank: msg.Rank, World: msg.World, Step: msg.Applied, Payload: msg.Payload})
	case Pull:
		m.start(Pulling, msg, Work{Kind: LoadState, Gen: msg.Gen, Req: msg.Req, PullStep: msg.PullStep, Payload: msg.Payload})
	case Step:
		if msg.Gen != m.gen {
			// Not fatal: the coordinator learns of it and forms a
			// current world.
			m.reply(Msg{Kind: Failed, Gen: msg.Gen, Req: msg.Req, Step: msg.Step,
				Error: fmt.Sprintf("stale message from coordinator: generation %d, current generation is %d", msg.Gen, m.gen)})
			return
		}
		if m.held != msg.Step {
			m.cur = msg
			m.failNode(fmt.Sprintf("agent: step %d requested but the trainer holds %d committed steps", msg.Step, m.held))
			return
		}
		m.inStep, m.stepGen, m.stepReq, m.step, m.stepFailed, m.cancelled = true, msg.Gen, msg.Req, msg.Step, false, false
		m.start(Computing, msg, Work{Kind: RunStep, Gen: msg.Gen, Req: msg.Req, Step: msg.Step, Rank: msg.Rank, World: msg.World, Count: msg.Count, Payload: msg.Payload})
	case Commit:
		m.inStep = false
		m.start(Applying, msg, Work{Kind: Apply, Gen: msg.Gen, Req: msg.Req, Step: msg.Step, Count: msg.Count, Payload: msg.Payload})
	case Abort:
		m.inStep, m.stepFailed, m.step = false, false, -1
		m.instant(Work{Kind: Discard, Gen: msg.Gen, Step: msg.Step})
		m.rest()
	case Eval:
		m.start(Evaluating, msg, Work{Kind: Evaluate, Gen: msg.Gen, Req: msg.Req, Rank: msg.Rank, World: msg.World, Payload: msg.Payload})
	case Export:
		m.start(Exporting, msg, Work{Kind: WriteExport, Gen: msg.Gen, Req: msg.Req, Payload: msg.Payload})
	case Stop:
		switch {
		case msg.Error != "":
			// The run failed on the coordinator: the node's exit status
			// says so too.
			m.finish(Failure, "agent: the coordinator stopped the run: "+msg.Error)
		case m.leaving:
			m.finish(Left, "")
		default:
			m.finish(Finished, "")
		}
	}
}

// Check reports whether the node would take msg now, and why not; it
// changes nothing. (While work is busy a message is queued, and checked
// when its turn comes.)
func (m *Machine) Check(msg Msg) error { return m.expect(msg) }

// expect checks, before anything changes, that msg is what the node can
// take now: its kind against the phase, its generation against the current
// one, and a commit's or abort's step and request id against the step in
// flight. The error says why not.
func (m *Machine) expect(msg Msg) error {
	setUp := func() error {
		if !m.setUp {
			return fmt.Errorf("the trainer is not set up yet")
		}
		return nil
	}
	inGen := func() error {
		if err := setUp(); err != nil {
			return err
		}
		if m.gen == 0 {
			return fmt.Errorf("no generation yet")
		}
		if msg.Gen != m.gen {
			return fmt.Errorf("stale message from coordinator: generation %d, current generation is %d", msg.Gen, m.gen)
		}
		return nil
	}
	switch msg.Kind {
	case Job:
		if m.jobSeen {
			return fmt.Errorf("a second job on one session")
		}
		return nil
	case Gen:
		if err := setUp(); err != nil {
			return err
		}
		if msg.Gen <= m.gen {
			return fmt.Errorf("stale generation %d, current generation is %d", msg.Gen, m.gen)
		}
		if msg.World <= 0 || msg.Rank < 0 || msg.Rank >= msg.World {
			return fmt.Errorf("rank %d of a world of %d", msg.Rank, msg.World)
		}
		return nil
	case Pull:
		if err := inGen(); err != nil {
			return err
		}
		if msg.PullStep < 0 {
			return fmt.Errorf("pull of the state of step %d", msg.PullStep)
		}
		if m.inStep {
			return fmt.Errorf("pull of step %d while step %d awaits its commit", msg.PullStep, m.step)
		}
		return nil
	case Step:
		// A step of another generation is answered with failed (handle),
		// so the coordinator learns of it; only its phase is checked here.
		if err := setUp(); err != nil {
			return err
		}
		if m.gen == 0 {
			return fmt.Errorf("step before any generation")
		}
		if m.inStep {
			return fmt.Errorf("step %d while step %d awaits its commit", msg.Step, m.step)
		}
		return nil
	case Commit:
		if err := inGen(); err != nil {
			return err
		}
		if !m.inStep || msg.Step != m.step {
			return fmt.Errorf("commit of step %d, but no such step is pending", msg.Step)
		}
		if msg.Req != m.stepReq {
			return fmt.Errorf("commit of step %d answers request %d, the step in flight is request %d", msg.Step, msg.Req, m.stepReq)
		}
		if m.stepFailed {
			return fmt.Errorf("commit of step %d, whose all-reduce failed on this node", msg.Step)
		}
		return nil
	case Abort:
		// An abort may name an older generation: the coordinator aborts a
		// step and then forms a new one.
		if !m.inStep || msg.Step != m.step || msg.Gen > m.gen || msg.Gen != m.stepGen {
			return fmt.Errorf("abort of step %d (generation %d), but no such step is pending", msg.Step, msg.Gen)
		}
		if msg.Req != m.stepReq {
			return fmt.Errorf("abort of step %d answers request %d, the step in flight is request %d", msg.Step, msg.Req, m.stepReq)
		}
		return nil
	case Eval, Export:
		return inGen()
	case Stop:
		return nil
	}
	return fmt.Errorf("a node does not take %q messages", msg.Kind)
}

// onWorkDone takes the result of the busy work and answers its request.
func (m *Machine) onWorkDone(ev Event) {
	if ev.ID == 0 || ev.ID != m.work {
		m.note("result of work %d dropped: the busy work is %d", ev.ID, m.work)
		return
	}
	kind, req := m.workKind, m.cur
	m.work, m.workKind = 0, 0
	if ev.Error != "" && ev.Fatal {
		m.failNode(ev.Error)
		return
	}
	switch kind {
	case SetUpTrainer:
		m.setUp, m.held = true, ev.Applied
		if ev.CommitTicks > 0 {
			m.commitTicks = max(m.cfg.CommitTicks, ev.CommitTicks)
		}
		m.reply(Msg{Kind: SetUp, Req: req.Req, Applied: m.held})
	case JoinGen:
		m.gen, m.rank, m.world, m.genFrom, m.held = req.Gen, req.Rank, req.World, req.Applied, ev.Applied
		m.reply(Msg{Kind: Joined, Gen: req.Gen, Req: req.Req, Applied: m.held})
		if req.Digest && m.held == req.Applied {
			m.digest(req)
			return
		}
	case RunStep:
		m.commitBy = m.now + m.commitTicks
		if ev.Error != "" {
			// The ring is broken for good; the coordinator aborts the
			// step and forms a new generation.
			m.stepFailed = true
			m.note("all-reduce of step %d failed: %s", req.Step, ev.Error)
			m.reply(Msg{Kind: Failed, Gen: req.Gen, Req: req.Req, Step: req.Step, Error: ev.Error})
		} else {
			m.reply(Msg{Kind: Reduced, Gen: req.Gen, Req: req.Req, Step: req.Step, Payload: ev.Payload})
		}
	case Apply:
		m.held = req.Step + 1
		if ev.Error != "" {
			// Applied, but the digest cannot be taken now (zero1: the
			// parameters were not gathered; the next generation
			// re-slices them).
			m.note("step %d applied without its digest: %s", req.Step, ev.Error)
		} else if req.Digest {
			m.digest(req)
			return
		}
	case LoadState:
		if ev.Error != "" {
			m.held = -1
			m.reply(Msg{Kind: Loaded, Gen: req.Gen, Req: req.Req, Step: req.PullStep, Error: ev.Error})
			break
		}
		m.held = req.PullStep
		m.reply(Msg{Kind: Loaded, Gen: req.Gen, Req: req.Req, Step: req.PullStep})
		if req.Digest {
			m.digest(req)
			return
		}
	case Evaluate:
		m.reply(Msg{Kind: EvalRes, Gen: req.Gen, Req: req.Req, Payload: ev.Payload})
	case WriteExport:
		m.reply(Msg{Kind: Exported, Gen: req.Gen, Req: req.Req, Step: m.held, Payload: ev.Payload})
	case ComputeDigest:
		m.reply(Msg{Kind: Digest, Gen: req.Gen, Req: req.Req, Step: m.held, Sum: ev.Sum})
	}
	m.rest()
}

// digest computes the parameter digest that req asked for; its reply
// echoes req's generation and request id.
func (m *Machine) digest(req Msg) {
	m.start(Digesting, req, Work{Kind: ComputeDigest, Gen: req.Gen, Req: req.Req, Step: m.held})
}

package machine

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ringtune/ringtune/data"
)

// node is the machine's view of one node's session.
type node struct {
	id      string
	session uint64
	ring    string
	ready   bool // trainer set up
	applied int  // committed steps it holds, -1 for none
	rank    int  // in the current world, -1 outside
	leaving bool
}

// Machine is the coordinator's protocol state. It is not safe for
// concurrent use: one driver goroutine owns it.
type Machine struct {
	cfg   Config
	sched *schedule
	now   int64

	phase    Phase
	deadline int64

	nodes   map[string]*node
	changed int64 // tick of the last membership change

	gen    uint64
	world  []*node
	ids    []string // world ids in rank order
	broken bool     // a rank of the world was lost or failed

	applied int // committed steps
	req     uint64
	round   *round
	batch   data.StepBatch // the step in flight
	count   int
	pending map[int]*digests // by committed step count
	drain   bool             // waiting for the last digests

	ckpt     int            // committed steps of the newest checkpoint, -1: none
	ckptReqs map[uint64]int // checkpoint actions not yet done: request → step
	lastEval int            // committed steps at the last evaluation, -1: none
	evalDue  bool           // an evaluation is due at this boundary
	ckptDue  bool           // a checkpoint is due at this boundary
	ckptAt   int            // committed steps at the last checkpoint attempt, -1: none
	ckptTry  int            // the next rank to try for the checkpoint in progress
	action   uint64         // the outstanding driver action's request id, 0: none
	actNode  string         // the node the outstanding action reads from
	fails    int            // consecutive failed attempts

	setupFailed map[string]string

	out  Ready
	code int
	err  error
}

// New returns a machine in phase Waiting at tick 0.
func New(cfg Config) (*Machine, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, sched: newSchedule(cfg), nodes: map[string]*node{}, pending: map[int]*digests{},
		ckpt: -1, ckptAt: -1, lastEval: -1, setupFailed: map[string]string{}, ckptReqs: map[uint64]int{}}
	if cfg.Resumed >= 0 {
		if cfg.Resumed > m.sched.total {
			return nil, fmt.Errorf("machine: resumed checkpoint holds %d steps, the run has %d", cfg.Resumed, m.sched.total)
		}
		m.applied, m.ckpt, m.ckptAt = cfg.Resumed, cfg.Resumed, cfg.Resumed
	}
	m.enterWaiting()
	return m, nil
}

// Phase is the current phase.
func (m *Machine) Phase() Phase { return m.phase }

// Now is the current tick.
func (m *Machine) Now() int64 { return m.now }

// Deadline is the tick at which the current wait gives up; ok is false
// only when the run is over.
func (m *Machine) Deadline() (tick int64, ok bool) { return m.deadline, m.phase != Done }

// Applied is the number of committed steps.
func (m *Machine) Applied() int { return m.applied }

// Total is the number of steps of the run.
func (m *Machine) Total() int { return m.sched.total }

// Generation is the current generation and its ranks' ids in rank order.
func (m *Machine) Generation() (uint64, []string) { return m.gen, slices.Clone(m.ids) }

// Checkpoint is the committed step count of the newest checkpoint, -1 for none.
func (m *Machine) Checkpoint() int { return m.ckpt }

// Outcome is the run's exit code and error once the phase is Done.
func (m *Machine) Outcome() (code int, err error) { return m.code, m.err }

// Ready returns what the machine decided since the last Advance.
func (m *Machine) Ready() Ready { return m.out }

// Advance acknowledges the last Ready: the driver has sent its messages
// and started its actions.
func (m *Machine) Advance() { m.out = Ready{} }

func (m *Machine) send(msg Msg) {
	if n := m.nodes[msg.Node]; n != nil {
		msg.Session = n.session
	}
	m.out.Msgs = append(m.out.Msgs, msg)
}

// reserve makes room for n more messages, so that a burst to every rank
// grows no slice.
func (m *Machine) reserve(n int) { m.out.Msgs = slices.Grow(m.out.Msgs, n) }

func (m *Machine) act(a Action) { m.out.Actions = append(m.out.Actions, a) }

func (m *Machine) note(format string, args ...any) {
	m.out.Notes = append(m.out.Notes, fmt.Sprintf(format, args...))
}

func (m *Machine) nextReq() uint64 { m.req++; return m.req }

// Step applies one event.
func (m *Machine) Step(ev Event) {
	if m.phase == Done {
		return
	}
	switch ev.Kind {
	case Join:
		m.onJoin(ev)
	case Lost:
		m.onLost(ev)
	case Leave:
		m.onLeave(ev)
	case Message:
		if ev.Msg == nil {
			m.note("message event without a message dropped")
			break
		}
		m.onMsg(ev.Msg)
	case Tick:
		m.now++
		if m.now >= m.deadline {
			m.onDeadline()
		}
	case ActionDone:
		m.onActionDone(ev)
	default:
		m.note("unknown event kind %d dropped", ev.Kind)
	}
	if m.phase == Waiting {
		m.tryForm()
	}
}

func (m *Machine) setPhase(p Phase, ticks int64) {
	m.phase = p
	m.deadline = m.now + ticks
}

// finish ends the run and tells every node why.
func (m *Machine) finish(code int, err error) {
	if m.phase == Done {
		return
	}
	m.phase, m.code, m.err, m.round = Done, code, err, nil
	why := ""
	if err != nil {
		why = err.Error()
		m.note("run failed: %v", err)
	} else {
		m.note("run done after %d steps", m.applied)
	}
	for _, id := range m.nodeIDs() {
		m.send(Msg{Kind: Stop, Node: id, Error: why})
	}
}

func (m *Machine) fail(code int, format string, args ...any) {
	m.finish(code, fmt.Errorf(format, args...))
}

// nodeIDs lists the live nodes' ids, sorted (deterministic output).
func (m *Machine) nodeIDs() []string {
	ids := make([]string, 0, len(m.nodes))
	for id := range m.nodes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (m *Machine) rankOf(id string) int {
	if n := m.nodes[id]; n != nil {
		return n.rank
	}
	return -1
}

func (m *Machine) onJoin(ev Event) {
	if old := m.nodes[ev.Node]; old != nil {
		m.note("duplicate node id %s refused: session %d is live", ev.Node, old.session)
		m.act(Action{Kind: Drop, Node: ev.Node, Session: ev.Session})
		return
	}
	m.nodes[ev.Node] = &node{id: ev.Node, session: ev.Session, ring: ev.Ring, applied: ev.Applied, rank: -1}
	m.changed = m.now
	m.send(Msg{Kind: Job, Node: ev.Node})
}

func (m *Machine) onLost(ev Event) {
	n := m.nodes[ev.Node]
	switch {
	case n == nil:
		return
	case ev.Session != 0 && ev.Session != n.session:
		m.note("end of %s's session %d ignored: its live session is %d", ev.Node, ev.Session, n.session)
		return
	case ev.Session == 0 && ev.Ring != "" && ev.Ring != n.ring:
		// The gossip death of an earlier instance under the same name,
		// reported after the restarted node opened its session.
		m.note("gossip death of an earlier instance of %s ignored", ev.Node)
		return
	}
	m.note("node %s lost", ev.Node)
	m.lose(n, true)
}

// lose forgets n; when react, a phase that needed n fails now.
func (m *Machine) lose(n *node, react bool) {
	delete(m.nodes, n.id)
	m.changed = m.now
	delete(m.setupFailed, n.id)
	if n.rank < 0 {
		if m.gen == 0 {
			m.checkSetupFailures()
		}
		return
	}
	k := n.rank
	n.rank = -1
	m.broken = true
	if m.round != nil {
		m.round.failRank(k, "lost")
	}
	if !react {
		return
	}
	switch m.phase {
	case Training:
		if m.round != nil {
			m.abortStep(fmt.Sprintf("rank %d (%s) lost", k, n.id))
			return
		}
		// Waiting for the last digests: they can no longer complete.
		m.next()
	case Forming, Syncing, Evaluating:
		m.phaseFailed(fmt.Sprintf("rank %d (%s) lost", k, n.id))
	case Checkpointing:
		if n.id == m.actNode {
			m.note("checkpoint source %s lost; trying another replica", n.id)
			m.tryCheckpoint()
		}
	case Exporting:
		if n.id == m.actNode {
			m.phaseFailed(fmt.Sprintf("rank %d (%s), the source of the export, lost", k, n.id))
		}
	}
}

func (m *Machine) onLeave(ev Event) {
	n := m.nodes[ev.Node]
	if n == nil || (ev.Session != 0 && ev.Session != n.session) {
		return
	}
	if n.rank < 0 || m.phase == Waiting {
		m.note("node %s left", n.id)
		m.send(Msg{Kind: Stop, Node: n.id})
		m.lose(n, false)
		return
	}
	// A rank leaves at the next step boundary: the step in flight
	// finishes with it, so leaving costs no aborted step (defect 9).
	n.leaving = true
	m.note("rank %d (%s) leaves at the next step boundary", n.rank, n.id)
}

// candidates lists the set-up nodes that may enter a world, the holders of
// the committed state first, then by id.
func (m *Machine) candidates() []*node {
	var out []*node
	for _, n := range m.nodes {
		if n.ready && !n.leaving {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		hi, hj := out[i].applied == m.applied, out[j].applied == m.applied
		if hi != hj {
			return hi
		}
		return out[i].id < out[j].id
	})
	return out
}

func (m *Machine) enterWaiting() {
	for _, n := range m.world {
		n.rank = -1
	}
	m.world, m.ids, m.broken, m.round, m.action, m.actNode, m.drain = nil, nil, false, nil, 0, "", false
	// Digests still owed by the dissolved generation can never complete.
	clear(m.pending)
	for _, id := range m.nodeIDs() {
		if n := m.nodes[id]; n.leaving {
			m.note("node %s left", id)
			m.send(Msg{Kind: Stop, Node: id})
			m.lose(n, false)
		}
	}
	m.setPhase(Waiting, m.cfg.WaitTicks)
}

// tryForm forms a generation once enough nodes are set up and membership
// has been quiet for SettleTicks.
func (m *Machine) tryForm() {
	need := m.cfg.MinNodes
	if m.gen > 0 {
		need = 1 // survivors carry on; min_nodes gates only the first world
	}
	if m.now-m.changed < m.cfg.SettleTicks {
		return
	}
	// Count before sorting: this runs on every event while waiting.
	n := 0
	for _, nd := range m.nodes {
		if nd.ready && !nd.leaving {
			n++
		}
	}
	if n < need {
		return
	}
	c := m.candidates()
	if max := m.cfg.MaxNodes; max > 0 && len(c) > max {
		c = c[:max]
	}
	sort.Slice(c, func(i, j int) bool { return c[i].id < c[j].id })
	m.form(c)
}

func (m *Machine) form(members []*node) {
	m.gen++
	m.world = members
	m.ids = make([]string, len(members))
	rings := make([]string, len(members))
	for k, n := range members {
		n.rank = k
		m.ids[k], rings[k] = n.id, n.ring
	}
	req := m.nextReq()
	first := m.applied == 0 && m.gen == 1 && m.cfg.DigestEvery > 0
	if first {
		m.pending[0] = &digests{gen: m.gen, req: req, sums: make([]string, len(members))}
	}
	m.note("generation %d forms: %s (applied %d)", m.gen, strings.Join(m.ids, ","), m.applied)
	m.reserve(len(members))
	for k, n := range members {
		m.send(Msg{Kind: Gen, Node: n.id, Gen: m.gen, Req: req, Rank: k, IDs: m.ids, Rings: rings, Applied: m.applied, Digest: first})
	}
	m.round = newRound(Joined, m.gen, req, 0, len(members), nil)
	m.setPhase(Forming, m.cfg.FormTicks)
}

// phaseFailed gives up the current attempt: the world dissolves and a new
// generation forms, up to MaxAborts attempts in a row.
func (m *Machine) phaseFailed(why string) {
	m.fails++
	m.note("%s failed in generation %d: %s", m.phase, m.gen, why)
	if m.fails >= m.cfg.MaxAborts {
		m.fail(ExitFailure, "gave up after %d failed attempts in a row, last: %s failed: %s", m.fails, m.phase, why)
		return
	}
	m.enterWaiting()
}

// needReform reports whether the world must change at this boundary: it
// lost a rank, a rank is leaving, or a ready node could enter it.
func (m *Machine) needReform() bool {
	if m.gen == 0 || m.broken || len(m.world) == 0 {
		return true
	}
	for _, n := range m.world {
		if n.leaving {
			return true
		}
	}
	if max := m.cfg.MaxNodes; max > 0 && len(m.world) >= max {
		return false
	}
	if m.now-m.changed < m.cfg.SettleTicks {
		return false
	}
	for _, n := range m.nodes {
		if n.ready && !n.leaving && n.rank < 0 {
			return true // a late joiner enters at the step boundary
		}
	}
	return false
}

// next decides what to do at a boundary: between steps, or after a
// generation formed, an evaluation or a checkpoint.
func (m *Machine) next() {
	if m.phase == Done {
		return
	}
	m.round, m.action, m.actNode = nil, 0, ""
	switch {
	case m.needReform():
		m.enterWaiting()
	case m.evalDue:
		m.startEval()
	case m.ckptDue:
		m.startCheckpoint()
	case m.applied < m.sched.total:
		m.startStep()
	case len(m.pending) > 0:
		// Wait (with a deadline) for the digests of the last steps, so
		// that a divergence there is not missed.
		if !m.drain {
			m.drain = true
			m.setPhase(Training, m.cfg.DrainTicks)
		}
	case m.cfg.HasEval && m.lastEval != m.applied:
		m.startEval()
	case m.ckptAt != m.applied:
		m.startCheckpoint()
	default:
		m.startExport()
	}
}

func (m *Machine) onDeadline() {
	switch m.phase {
	case Waiting:
		need := m.cfg.MinNodes
		if m.gen > 0 {
			need = 1
		}
		m.fail(ExitNoNodes, "waited %d ticks for %d set-up node(s), have %d", m.cfg.WaitTicks, need, len(m.candidates()))
	case Training:
		if m.round == nil { // draining digests: the rest are moot
			m.note("digests of steps %v not all received before the deadline", m.pendingSteps())
			clear(m.pending)
			m.drain = false
			m.next()
			return
		}
		why := m.dropSilent()
		m.abortStep("silent past the deadline: " + why)
	case Forming, Syncing, Evaluating:
		why := m.dropSilent()
		m.phaseFailed("silent past the deadline: " + why)
	case Exporting:
		if m.round != nil {
			m.phaseFailed("silent past the deadline: " + m.dropSilent())
			return
		}
		m.phaseFailed("the export transfer did not finish before the deadline")
	case Checkpointing:
		m.note("checkpoint transfer from %s did not finish before the deadline; trying another replica", m.actNode)
		m.tryCheckpoint()
	}
}

// dropSilent drops the ranks that owe the current round an answer and
// names them.
func (m *Machine) dropSilent() string {
	var names []string
	for _, k := range m.round.silent() {
		n := m.world[k]
		names = append(names, fmt.Sprintf("rank %d (%s)", k, n.id))
		m.act(Action{Kind: Drop, Node: n.id, Session: n.session})
		m.lose(n, false)
	}
	return strings.Join(names, ", ")
}

func (m *Machine) pendingSteps() []int {
	var s []int
	for k := range m.pending {
		s = append(s, k)
	}
	sort.Ints(s)
	return s
}

func (m *Machine) onMsg(msg *Msg) {
	n := m.nodes[msg.Node]
	if n == nil || n.session != msg.Session {
		m.note("%s from %s (session %d) dropped: no such live session", msg.Kind, msg.Node, msg.Session)
		return
	}
	if err := m.apply(n, msg); err != nil {
		m.note("%s from %s dropped: %v", msg.Kind, msg.Node, err)
	}
}

// apply checks msg against the phase, the outstanding request, the sender
// and the generation before it touches any state.
func (m *Machine) apply(n *node, msg *Msg) error {
	switch msg.Kind {
	case SetUp:
		if n.ready {
			return errors.New("a second set-up message on one session")
		}
		n.ready, n.applied = true, msg.Applied
		m.changed = m.now
		return nil
	case Failed:
		if msg.Gen == 0 && msg.Req == 0 {
			m.setupFailed[n.id] = msg.Error
			m.checkSetupFailures()
			return nil
		}
		return m.onReply(n, msg)
	case Joined, Loaded, Reduced, EvalRes, Exported:
		return m.onReply(n, msg)
	case Digest:
		return m.onDigest(n, msg)
	}
	return fmt.Errorf("unexpected message kind %s", msg.Kind)
}

// onReply matches a reply to the outstanding round.
func (m *Machine) onReply(n *node, msg *Msg) error {
	r := m.round
	if r == nil {
		return fmt.Errorf("no request outstanding in phase %s", m.phase)
	}
	if msg.Kind != r.reply && msg.Kind != Failed {
		return fmt.Errorf("%s while the outstanding request %d expects %s", msg.Kind, r.req, r.reply)
	}
	k := n.rank
	if err := r.check(k, msg); err != nil {
		return err
	}
	if msg.Kind == Failed {
		why := msg.Error
		if why == "" {
			why = "failed (no reason given)" // an empty reason must not read as success
		}
		r.failRank(k, why)
		if m.phase == Training {
			m.abortStep(fmt.Sprintf("rank %d (%s): %s", k, n.id, why))
		} else {
			m.phaseFailed(fmt.Sprintf("rank %d (%s): %s", k, n.id, why))
		}
		return nil
	}
	switch msg.Kind {
	case Joined:
		n.applied = msg.Applied
	case Loaded:
		if msg.Error != "" {
			n.applied = -1
			r.failRank(k, msg.Error)
			m.phaseFailed(fmt.Sprintf("rank %d (%s) could not load the state: %s", k, n.id, msg.Error))
			return nil
		}
		if msg.Step != m.applied {
			return fmt.Errorf("loaded the state of step %d, the committed step is %d", msg.Step, m.applied)
		}
		n.applied = m.applied
	case Reduced:
		if msg.Reduced == nil {
			return errors.New("reduced without its report")
		}
		r.reduced[k] = msg.Reduced
	case EvalRes:
		if msg.Eval == nil {
			return errors.New("evaluation result without sums")
		}
		r.eval.Add(*msg.Eval)
	case Exported:
		r.succeed(k)
		m.round = nil
		m.action, m.actNode = r.req, n.id
		m.act(Action{Kind: WriteExport, Req: r.req, Step: m.applied, Node: n.id, Session: n.session, Ring: n.ring, Files: msg.Files})
		m.setPhase(Exporting, m.cfg.ExportTicks)
		return nil
	}
	r.succeed(k)
	if !r.complete() {
		return nil
	}
	switch r.reply {
	case Joined:
		m.sync()
	case Loaded:
		m.next()
	case Reduced:
		m.commit()
	case EvalRes:
		m.fails = 0
		m.lastEval, m.evalDue = m.applied, false
		sums := r.eval
		m.act(Action{Kind: Evaluated, Step: m.applied, Req: r.req, Eval: &sums})
		m.next()
	}
	return nil
}

// sync brings the world's stale ranks to the committed state. The source
// is a rank that holds it; else the newest checkpoint when it holds exactly
// the committed step (a checkpoint of an older step is never sent as the
// current one: defect 1); else, when no node holds the state any more, the
// run rolls back to the newest checkpoint (defect 11).
func (m *Machine) sync() {
	var stale []int
	src := -1
	for k, n := range m.world {
		if n.applied == m.applied {
			if src < 0 {
				src = k
			}
		} else {
			stale = append(stale, k)
		}
	}
	if len(stale) == 0 {
		m.next()
		return
	}
	var from PullFrom
	switch {
	case src >= 0:
		s := m.world[src]
		from = PullFrom{Kind: PullState, Node: s.id, Ring: s.ring, Step: m.applied}
	case m.ckpt == m.applied:
		from = PullFrom{Kind: PullCheckpoint, Step: m.applied}
	case m.rollbackTo() >= 0:
		to := m.rollbackTo()
		if to == m.ckpt {
			m.note("no node holds the state of step %d: rolling back to the checkpoint of step %d", m.applied, to)
		} else {
			m.note("no node holds the state of step %d: rolling back to step %d, which a rank holds", m.applied, to)
		}
		m.act(Action{Kind: Rollback, Step: to})
		m.applied = to
		m.sched.reset()
		m.evalDue, m.ckptDue, m.ckptAt = false, false, -1
		clear(m.pending)
		m.sync()
		return
	default:
		m.fail(ExitNoNodes, "no node holds the state of step %d (every node that did is gone) and no checkpoint of it was written; restart the run with --resume from the newest checkpoint", m.applied)
		return
	}
	req := m.nextReq()
	isStale := make([]bool, len(m.world))
	for _, k := range stale {
		isStale[k] = true
		p := from
		m.send(Msg{Kind: Pull, Node: m.world[k].id, Gen: m.gen, Req: req, Step: m.applied, Pull: &p})
	}
	m.round = newRound(Loaded, m.gen, req, m.applied, len(m.world), func(k int) bool { return isStale[k] })
	m.setPhase(Syncing, m.cfg.SyncTicks)
}

// rollbackTo is the step count the run can roll back to when no rank holds
// the committed state: the newest of the newest checkpoint and the states
// the ranks hold (each a state of this run's committed steps: a rank that
// missed the last commits, or a fresh node's initial state, which is a
// function of the job). -1: none.
func (m *Machine) rollbackTo() int {
	best := -1
	if m.ckpt < m.applied {
		best = m.ckpt
	}
	for _, n := range m.world {
		if n.applied >= 0 && n.applied < m.applied && n.applied > best {
			best = n.applied
		}
	}
	return best
}

func (m *Machine) startStep() {
	g := m.applied
	b, err := m.sched.begin(g)
	if err != nil {
		m.fail(ExitFailure, "step %d: %v", g, err)
		return
	}
	m.batch, m.count = b, m.cfg.CountOf(g, b.Indices)
	req := m.nextReq()
	m.reserve(len(m.world))
	for k, n := range m.world {
		m.send(Msg{Kind: Step, Node: n.id, Gen: m.gen, Req: req, Step: g, Rank: k, World: len(m.world), Indices: b.Indices, Count: m.count})
	}
	m.round = newRound(Reduced, m.gen, req, g, len(m.world), nil)
	m.setPhase(Training, m.cfg.StepTicks)
}

// abortStep drops the step in flight: its samples go back to the schedule,
// the live ranks are told at once (so that they cancel their all-reduce),
// and a new generation forms.
func (m *Machine) abortStep(why string) {
	r := m.round
	m.round = nil
	if err := m.sched.abort(r.step); err != nil {
		m.fail(ExitFailure, "step %d: %v", r.step, err)
		return
	}
	for _, n := range m.world {
		if n.rank >= 0 {
			m.send(Msg{Kind: Abort, Node: n.id, Gen: r.gen, Req: r.req, Step: r.step})
		}
	}
	m.fails++
	m.note("step %d aborted in generation %d: %s", r.step, r.gen, why)
	if m.fails >= m.cfg.MaxAborts {
		m.fail(ExitFailure, "step %d aborted %d times in a row, last: %s", r.step, m.fails, why)
		return
	}
	m.broken = true
	m.next()
}

func (m *Machine) onDigest(n *node, msg *Msg) error {
	if msg.Gen != m.gen {
		return fmt.Errorf("stale message from %s: generation %d, current generation is %d", n.id, msg.Gen, m.gen)
	}
	d := m.pending[msg.Step]
	switch {
	case n.rank < 0:
		return fmt.Errorf("digest from %s, which is not a rank of generation %d", n.id, m.gen)
	case d == nil:
		return fmt.Errorf("digest after step %d, which no digest was asked for", msg.Step)
	case msg.Req != d.req:
		return fmt.Errorf("digest answers request %d, the commit asked with %d", msg.Req, d.req)
	case d.sums[n.rank] != "":
		return fmt.Errorf("second digest after step %d", msg.Step)
	}
	d.sums[n.rank] = msg.Sum
	d.n++
	if d.n < len(d.sums) {
		return nil
	}
	delete(m.pending, msg.Step)
	var bad []string
	for k := 1; k < len(d.sums); k++ {
		if d.sums[k] != d.sums[0] {
			bad = append(bad, fmt.Sprintf("rank %d (%s) has %.16s", k, m.ids[k], d.sums[k]))
		}
	}
	if len(bad) > 0 {
		m.fail(ExitDiverged, "replicas diverged after %d committed steps: rank 0 (%s) has parameter digest %.16s but %s", msg.Step, m.ids[0], d.sums[0], strings.Join(bad, ", "))
		return nil
	}
	m.note("replicas identical after %d steps", msg.Step)
	if m.drain && len(m.pending) == 0 {
		m.drain = false
		m.next()
	}
	return nil
}

func (m *Machine) startEval() {
	req := m.nextReq()
	for k, n := range m.world {
		m.send(Msg{Kind: Eval, Node: n.id, Gen: m.gen, Req: req, Step: m.applied, Rank: k, World: len(m.world)})
	}
	m.round = newRound(EvalRes, m.gen, req, m.applied, len(m.world), nil)
	m.setPhase(Evaluating, m.cfg.EvalTicks)
}

// startCheckpoint writes the checkpoint of the committed step from one
// replica, trying the others in rank order when a transfer fails; when
// none can deliver it, the checkpoint is skipped and the run goes on (a
// checkpoint is insurance, not a reason to stop training).
func (m *Machine) startCheckpoint() {
	m.ckptAt, m.ckptDue, m.ckptTry = m.applied, false, 0
	m.tryCheckpoint()
}

func (m *Machine) tryCheckpoint() {
	for ; m.ckptTry < len(m.world); m.ckptTry++ {
		src := m.world[m.ckptTry]
		if src.rank < 0 || src.applied != m.applied {
			continue
		}
		m.ckptTry++
		m.action, m.actNode = m.nextReq(), src.id
		m.ckptReqs[m.action] = m.applied
		m.act(Action{Kind: WriteCheckpoint, Req: m.action, Step: m.applied, Node: src.id, Session: src.session, Ring: src.ring})
		m.setPhase(Checkpointing, m.cfg.CheckpointTicks)
		return
	}
	m.note("checkpoint of step %d skipped: no replica could deliver it; the run goes on", m.applied)
	m.next()
}

func (m *Machine) startExport() {
	src := m.world[0]
	req := m.nextReq()
	m.send(Msg{Kind: Export, Node: src.id, Gen: m.gen, Req: req, Step: m.applied})
	m.round = newRound(Exported, m.gen, req, m.applied, len(m.world), func(k int) bool { return k == 0 })
	m.setPhase(Exporting, m.cfg.ExportTicks)
}

func (m *Machine) onActionDone(ev Event) {
	step, isCkpt := m.ckptReqs[ev.Req]
	delete(m.ckptReqs, ev.Req)
	if isCkpt && ev.Req != m.action && ev.Error == "" && step > m.ckpt && step <= m.applied {
		// A checkpoint finished after its phase was given up (its source
		// was lost once the state was read): the file is on disk and
		// complete, so it is the newest one to roll back to.
		m.ckpt = step
		m.note("checkpoint of step %d written after its phase was given up", step)
		return
	}
	if ev.Req == 0 || ev.Req != m.action {
		m.note("outcome of action %d dropped: the outstanding action is %d", ev.Req, m.action)
		return
	}
	if ev.Error != "" {
		switch {
		case ev.Fatal:
			m.fail(ExitFailure, "%s of step %d: %s", m.phase, m.applied, ev.Error)
		case m.phase == Checkpointing:
			m.note("checkpoint transfer from %s failed; trying another replica: %s", m.actNode, ev.Error)
			m.tryCheckpoint()
		default:
			m.phaseFailed(ev.Error)
		}
		return
	}
	m.fails = 0
	switch m.phase {
	case Checkpointing:
		m.ckpt = m.applied
		m.note("checkpoint of step %d written from %s", m.applied, m.actNode)
		m.next()
	case Exporting:
		m.finish(ExitOK, nil)
	}
}

// checkSetupFailures ends the run as bad input when, before the first
// generation, at least min_nodes nodes failed to set up the model and no
// connected node is left that might still succeed: they all received the
// same model and job.
func (m *Machine) checkSetupFailures() {
	if m.gen > 0 || len(m.setupFailed) < m.cfg.MinNodes {
		return
	}
	for id := range m.nodes {
		if _, failed := m.setupFailed[id]; !failed {
			return
		}
	}
	ids := make([]string, 0, len(m.setupFailed))
	for id := range m.setupFailed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	m.fail(ExitBadInput, "every node failed to set up the model (%d: %s); check model.path and the job settings. Node %s: %s",
		len(ids), strings.Join(ids, ", "), ids[0], m.setupFailed[ids[0]])
}

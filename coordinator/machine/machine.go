package machine

import (
	"fmt"
	"slices"
	"sort"

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
	// Counts kept as nodes change, so that deciding whether a world can
	// form or must change is O(1) per event, not a scan of every node
	// (the simulator checks them against a recount at every commit).
	nReady   int // set-up nodes not leaving
	nLeaving int // ranks leaving at the next boundary
	nRanked  int // nodes with a rank in the current world

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
	// owed: a world dissolved with digests still owed, so those steps'
	// replicas went uncompared; the next commit asks for digests whatever
	// DigestEvery says, so they are compared one step later, not up to
	// DigestEvery steps later.
	owed bool

	ckpt     int            // committed steps of the newest checkpoint, -1: none
	ckptReqs map[uint64]int // checkpoint actions not yet done: request → step
	lastEval int            // committed steps at the last evaluation, -1: none
	evalDue  bool           // an evaluation is due at this boundary
	ckptDue  bool           // a checkpoint is due at this boundary
	ckptAt   int            // committed steps at the last checkpoint attempt, -1: none
	ckptTry  int            // the next rank to try for the checkpoint in progress
	ckptOff  int            // the rank a background checkpoint tries first
	action   uint64         // the outstanding driver action's request id, 0: none
	// A background checkpoint (Config.CheckpointBackground): its
	// transfer's request id (0: none), source and deadline tick.
	bgReq      uint64
	bgNode     string
	bgDeadline int64
	exported   bool   // the model is written; the run waits for the final checkpoint
	actNode    string // the node the outstanding action reads from
	fails      int    // consecutive failed attempts

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

// Recycle hands back the Msgs of an acknowledged Ready that the driver
// has finished with, for the machine to queue its next messages in: a
// driver that broadcasts to 1,000 nodes would otherwise have the array
// allocated again for every broadcast. The driver must not read msgs
// after Recycle. It does nothing while messages are queued.
func (m *Machine) Recycle(msgs []Msg) {
	if len(m.out.Msgs) > 0 || cap(msgs) <= cap(m.out.Msgs) {
		return
	}
	clear(msgs) // drop what the sent messages point to
	m.out.Msgs = msgs[:0]
}

// send queues msg for its node's live session.
func (m *Machine) send(msg Msg) {
	if n := m.nodes[msg.Node]; n != nil {
		msg.Session = n.session
	}
	m.out.Msgs = append(m.out.Msgs, msg)
}

// reserve makes room for n more messages, so that a burst to every rank
// grows no slice.
func (m *Machine) reserve(n int) { m.out.Msgs = slices.Grow(m.out.Msgs, n) }

// act queues an action for the driver.
func (m *Machine) act(a Action) { m.out.Actions = append(m.out.Actions, a) }

// note explains a decision in the driver's log.
func (m *Machine) note(format string, args ...any) {
	m.out.Notes = append(m.out.Notes, fmt.Sprintf(format, args...))
}

// nextReq is a fresh request id.
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
		if m.bgReq != 0 && m.now >= m.bgDeadline {
			m.backgroundTimeout()
		}
		if m.phase != Done && m.now >= m.deadline {
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

// setPhase enters p with a deadline ticks from now.
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

// fail ends the run with code and a formatted error.
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

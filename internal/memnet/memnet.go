// Package memnet runs the real coordinator machine (coordinator/machine)
// and real agent machines (node/agent/machine) together over an in-memory
// transport, with fake trainers, a fake ring and a fake disk, on one
// logical clock. It is the two machines' wire in tests: what each sends
// reaches the other in order per session, after a seeded delay (a reply
// sometimes twice: Net.DupEvery), and the work each asks for (set-up,
// steps, pulls, checkpoints) completes later, so requests queue behind
// busy work as they do on a real node.
//
// A fake trainer's state is a hash chain of the steps it applied (the step
// and its batch's indices), so a replica's state says exactly which steps
// it applied; Net checks after every event that each replica holds the
// canonical state of the step count it claims, that every committed step
// had every rank's reduced report, and that every timed wait of either
// machine has its deadline ahead.
package memnet

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"

	cm "github.com/ringtune/ringtune/coordinator/machine"
	am "github.com/ringtune/ringtune/node/agent/machine"
)

// InitState is every fresh trainer's state.
const InitState = 0x9e3779b97f4a7c15

// StepState is the state after applying step g with its batch's indices
// to prev.
// The words are hashed as fixed-width little-endian bytes (the step, the
// batch's length, then each index), so that no two (prev, g, indices)
// share an encoding, without fmt's per-call formatting cost.
func StepState(prev uint64, g int, indices []int) uint64 {
	const prime = 1099511628211 // FNV-1a, 64-bit
	h := uint64(14695981039346656037)
	word := func(v uint64) {
		for range 8 {
			h = (h ^ (v & 0xff)) * prime
			v >>= 8
		}
	}
	word(prev)
	word(uint64(g))
	word(uint64(len(indices)))
	for _, i := range indices {
		word(uint64(i))
	}
	return h
}

// Node is one simulated node process: an agent machine and its trainer.
type Node struct {
	ID      string
	M       *am.Machine
	Inst    int // process incarnation (a restart is a new one)
	Session uint64
	Alive   bool
	// Sessions counts the sessions this process opened.
	Sessions int

	// the fake trainer
	state   uint64
	held    int // committed steps in state, -1: no trainer
	batch   []int
	ringKey [2]uint64
	work    uint64 // the busy work's id
	// frozen: the process is stopped (SIGSTOP) until this tick; missed
	// counts the ticks it did not see meanwhile.
	frozen  int64
	missed  int64
	stopped bool // frozen, and not yet resumed
	// seen is the last tick this process has had (stepped, or counted in
	// missed): a process whose machine has no deadline is not stepped on
	// every tick, since such a tick only moves its clock; the ticks it is
	// owed are given at once (catchUp) before anything else reaches it.
	seen int64
	// last is the last delivery tick on session lastS, to the node [0]
	// and from it [1]: only its live session carries messages.
	lastS uint64
	last  [2]int64
}

// State is the trainer's state and the committed steps it holds.
func (n *Node) State() (uint64, int) { return n.state, n.held }

// Commit is one committed step as the coordinator's driver saw it.
type Commit struct {
	Step    int
	Indices []int
}

// Net is the coordinator machine, the nodes and the wire between them.
type Net struct {
	Coord *cm.Machine
	Cfg   cm.Config
	Agent am.Config
	Nodes map[string]*Node

	rnd   *rand.Rand
	now   int64
	q     *wheel
	next  uint64           // session ids
	byS   map[uint64]*Node // live sessions
	rings map[[2]uint64][]*Node
	// reduced records the reduced reports delivered to the coordinator,
	// by (generation, request).
	reduced map[[2]uint64]map[string]bool
	batches map[int][]int // step → its batch (the same in every message)
	aborts  map[[2]uint64]bool
	inc     int                       // the coordinator's incarnation
	genInst map[uint64]map[string]int // generation → rank → the process incarnation it was sent to

	// Lineage is the committed steps, in order (a rollback cuts it).
	Lineage []Commit
	// Disk holds the checkpoints: committed steps → state.
	Disk map[int]uint64
	// Log receives every event and decision when set.
	Log func(format string, args ...any)
	// DupEvery, when above 0, delivers about one agent reply in DupEvery
	// twice (a retried send whose first copy did arrive), the copy after
	// the original on the same ordered stream. 0 (the default) duplicates
	// nothing.
	DupEvery int
	// Dups counts the replies delivered twice.
	Dups int

	// order is the nodes sorted by id, kept as nodes are added, so that a
	// tick does not sort them again (O(N log N) per tick at 1,000 nodes).
	order []*Node
	// down is the nodes started once whose process is not running now,
	// kept as they exit and start, so that a driver finds them without
	// scanning every node after every event.
	down map[string]*Node
	// canon[k] is the canonical state after the first k steps. The batches
	// never change once sent (a change fails the run), so a prefix once
	// computed stays right; the per-event replica check is then O(1)
	// instead of rehashing the whole chain.
	canon []uint64
	// ticked is the last tick the nodes were given: the clock while the
	// run goes on; after it, what is still in flight is delivered without
	// ticks.
	ticked int64

	err error
}

// New returns a net with no node, whose delays come from seed.
func New(seed uint64, cfg cm.Config, agent am.Config) (*Net, error) {
	c, err := cm.New(cfg)
	if err != nil {
		return nil, err
	}
	return &Net{Coord: c, Cfg: cfg, Agent: agent, Nodes: map[string]*Node{}, rnd: rand.New(rand.NewPCG(seed, 0x6d656d)),
		byS: map[uint64]*Node{}, rings: map[[2]uint64][]*Node{}, reduced: map[[2]uint64]map[string]bool{},
		batches: map[int][]int{}, aborts: map[[2]uint64]bool{}, genInst: map[uint64]map[string]int{}, Disk: map[int]uint64{},
		q: &wheel{}, down: map[string]*Node{}, canon: []uint64{InitState}}, nil
}

// SameProcess reports whether node id is still the process incarnation
// that generation gen was sent to (it was not killed and restarted since).
func (n *Net) SameProcess(gen uint64, id string) bool {
	nd := n.Nodes[id]
	inst, ok := n.genInst[gen][id]
	return ok && nd != nil && nd.Inst == inst
}

// Aborts is the number of steps the coordinator aborted so far.
func (n *Net) Aborts() int { return len(n.aborts) }

// Now is the logical clock.
func (n *Net) Now() int64 { return n.now }

// Err is the first broken invariant or wiring error.
func (n *Net) Err() error { return n.err }

func (n *Net) fail(format string, args ...any) {
	if n.err == nil {
		n.err = fmt.Errorf("tick %d: "+format, append([]any{n.now}, args...)...)
	}
}

func (n *Net) logf(format string, args ...any) {
	if n.Log != nil {
		n.Log("t=%d "+format, append([]any{n.now}, args...)...)
	}
}

// Start starts node id's process (again, after a kill: a fresh one with
// no trainer): it connects at once.
func (n *Net) Start(id string) error {
	nd := n.Nodes[id]
	if nd == nil {
		nd = &Node{ID: id}
		n.Nodes[id] = nd
		i, _ := slices.BinarySearchFunc(n.order, id, func(a *Node, id string) int { return cmp.Compare(a.ID, id) })
		n.order = slices.Insert(n.order, i, nd)
	}
	if nd.Alive {
		return fmt.Errorf("memnet: node %s is running", id)
	}
	m, err := am.New(n.Agent)
	if err != nil {
		return err
	}
	nd.Inst++
	delete(n.down, id)
	nd.M, nd.Alive, nd.state, nd.held, nd.work, nd.Sessions = m, true, 0, -1, 0, 0
	nd.frozen, nd.missed, nd.stopped, nd.seen = 0, 0, false, n.ticked
	n.connect(nd)
	return nil
}

func (n *Net) ring(nd *Node) string { return fmt.Sprintf("%s.i%d", nd.ID, nd.Inst) }

// connect opens a session for nd: the coordinator sees it join with the
// state the trainer holds, the agent sees it open.
func (n *Net) connect(nd *Node) {
	n.next++
	s := n.next
	nd.Session, nd.Sessions = s, nd.Sessions+1
	n.byS[s] = nd
	n.agent(nd, am.Event{Kind: am.Open})
	n.coord(cm.Event{Kind: cm.Join, Node: nd.ID, Session: s, Ring: n.ring(nd), Applied: nd.held})
}

// Kill ends node id's process (kill -9): its session breaks at once and
// gossip reports it dead a few ticks later.
func (n *Net) Kill(id string) {
	nd := n.Nodes[id]
	if nd == nil || !nd.Alive {
		return
	}
	n.logf("kill %s", id)
	ring := n.ring(nd)
	n.catchUp(nd, n.ticked)
	n.exit(nd)
	n.coordAt(n.delay(5, 15), cm.Event{Kind: cm.Lost, Node: id, Ring: ring})
}

// exit ends nd's process: its session ends on the coordinator's side.
func (n *Net) exit(nd *Node) {
	s := nd.Session
	nd.Alive, nd.Session, nd.work = false, 0, 0
	n.down[nd.ID] = nd
	delete(n.byS, s)
	if s != 0 {
		n.coordAt(n.delay(0, 2), cm.Event{Kind: cm.Lost, Node: nd.ID, Session: s})
	}
}

// Freeze stops node id's process for ticks (SIGSTOP, then SIGCONT): its
// session stays up, it answers nothing, and when it resumes it takes what
// arrived meanwhile, in order, and then the ticks it missed at once (as
// the real driver steps its machine up to the wall clock).
func (n *Net) Freeze(id string, ticks int64) {
	nd := n.Nodes[id]
	if nd == nil || !nd.Alive || nd.stopped {
		return
	}
	n.logf("freeze %s for %d ticks", id, ticks)
	n.catchUp(nd, n.ticked) // the ticks before the freeze were not missed
	nd.frozen, nd.stopped = n.now+ticks, true
	inst := nd.Inst
	n.later(nd.frozen+1, func() {
		if nd.Inst != inst {
			return
		}
		nd.stopped = false
		n.catchUp(nd, n.ticked)
		n.logf("%s resumes, %d ticks late", id, nd.missed)
		for ; nd.missed > 0 && nd.Alive; nd.missed-- {
			n.agent(nd, am.Event{Kind: am.Tick})
		}
	})
}

// Term sends node id SIGTERM.
func (n *Net) Term(id string) {
	if nd := n.Nodes[id]; nd != nil && nd.Alive {
		n.logf("term %s", id)
		n.agent(nd, am.Event{Kind: am.Term})
	}
}

// Suspect has the coordinator drop node id's live session while the
// process lives on (a false suspicion by gossip): the node notices and
// joins again with its trainer.
func (n *Net) Suspect(id string) {
	nd := n.Nodes[id]
	if nd == nil || !nd.Alive || nd.Session == 0 {
		return
	}
	n.logf("suspect %s", id)
	n.endSession(nd, nd.Session, "the coordinator closed the session")
}

// endSession ends session s of nd on both sides.
func (n *Net) endSession(nd *Node, s uint64, why string) {
	if nd == nil || s == 0 || nd.Session != s {
		return
	}
	delete(n.byS, s)
	nd.Session = 0
	n.coordAt(n.delay(0, 2), cm.Event{Kind: cm.Lost, Node: nd.ID, Session: s})
	inst := nd.Inst
	n.later(n.delay(0, 2), func() {
		if nd.Alive && nd.Inst == inst {
			n.agent(nd, am.Event{Kind: am.Lost, Error: why})
		}
	})
}

// Run advances the net until done() holds, the coordinator is done, or
// limit ticks pass; hook runs after every event and tick (to inject
// faults).
func (n *Net) Run(limit int64, hook func()) error {
	for n.err == nil && n.Coord.Phase() != cm.Done {
		if n.now > limit {
			return fmt.Errorf("memnet: the run did not end within %d ticks (coordinator %s, %d of %d steps)", limit, n.Coord.Phase(), n.Coord.Applied(), n.Coord.Total())
		}
		if f := n.q.pop(n.now); f != nil {
			f.run()
			if hook != nil {
				hook()
			}
			continue
		}
		n.now++
		n.ticked = n.now
		n.coord(cm.Event{Kind: cm.Tick})
		for _, nd := range n.order {
			// Only a running machine with a deadline needs this tick now,
			// in id order with the others; any other's tick only moves
			// its clock (or is missed, frozen), which catchUp does when
			// something next reaches it, with the same result.
			if !nd.Alive || nd.frozen > n.now {
				continue
			}
			if _, timed := nd.M.Deadline(); !timed {
				continue
			}
			n.catchUp(nd, n.now-1)
			nd.seen = n.now
			n.agent(nd, am.Event{Kind: am.Tick})
		}
		if hook != nil {
			hook()
		}
	}
	for _, nd := range n.order {
		n.catchUp(nd, n.ticked)
	}
	// What the coordinator sent last (the stops) still reaches the nodes.
	for n.err == nil && n.q.n > 0 {
		for n.q.empty(n.now) {
			n.now++
		}
		n.q.pop(n.now).run()
	}
	return n.err
}

// Down is the nodes started once whose process is not running now
// (killed, left or finished), sorted by id.
func (n *Net) Down() []string {
	ids := make([]string, 0, len(n.down))
	for id := range n.down {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (n *Net) delay(lo, hi int) int64 { return n.now + int64(lo+n.rnd.IntN(hi-lo+1)) }

// coordAt feeds ev to the coordinator at tick t, unless it was restarted
// meanwhile: what the old process was told dies with it.
func (n *Net) coordAt(t int64, ev cm.Event) {
	inc := n.inc
	n.later(t, func() {
		if n.inc == inc {
			n.coord(ev)
		}
	})
}

// later runs f at tick t.
func (n *Net) later(t int64, f func()) { n.laterJob(t, fn(f)) }

// laterJob runs j at tick t.
func (n *Net) laterJob(t int64, f job) {
	if t < n.now || t-n.now >= wheelSize {
		n.fail("memnet: an event scheduled at tick %d, outside the queue's window [%d, %d)", t, n.now, n.now+wheelSize)
		return
	}
	n.q.push(t, f)
}

// inOrder runs f at tick t, but not before anything sent earlier on the
// same stream (session s, direction dir): gRPC streams are ordered.
// The order is kept on the node (a map by session was a lookup per
// message): messages travel only on its live session, and session ids
// only grow.
func (n *Net) inOrder(nd *Node, s uint64, dir int, t int64, f job) {
	switch {
	case s < nd.lastS:
		n.fail("memnet: a message on %s's old session %d after session %d", nd.ID, s, nd.lastS)
		return
	case s > nd.lastS:
		nd.lastS, nd.last = s, [2]int64{}
	}
	t = max(t, nd.last[dir])
	nd.last[dir] = t
	n.laterJob(t, f)
}

// job is an event in the queue: a closure (fn), or a delivery that
// carries its message in the same allocation as itself (toAgent,
// toCoord), since a closure capturing a message is two allocations per
// message, most of a 1,000-node run's.
type job interface{ run() }

// fn is a closure as a job (a func value is one word: no allocation).
type fn func()

func (f fn) run() { f() }

// toAgent delivers a coordinator message to nd's session s.
type toAgent struct {
	n  *Net
	nd *Node
	s  uint64
	in am.Msg
}

func (d *toAgent) run() {
	if d.nd.Session == d.s && d.nd.Alive {
		d.n.agent(d.nd, am.Event{Kind: am.Message, Msg: &d.in})
	}
}

// toCoord delivers a node's reply to the coordinator, unless it was
// restarted since the reply was sent (incarnation inc).
type toCoord struct {
	n   *Net
	inc int
	ev  cm.Event
	msg cm.Msg
}

func (d *toCoord) run() {
	if d.n.inc == d.inc {
		d.n.coord(d.ev)
	}
}

// coord steps the coordinator machine and carries out its Ready.
func (n *Net) coord(ev cm.Event) {
	if n.err != nil || n.Coord.Phase() == cm.Done {
		return
	}
	if ev.Kind == cm.Message && ev.Msg.Kind == cm.Reduced {
		k := [2]uint64{ev.Msg.Gen, ev.Msg.Req}
		if n.reduced[k] == nil {
			n.reduced[k] = map[string]bool{}
		}
		n.reduced[k][ev.Msg.Node] = true
	}
	n.Coord.Step(ev)
	rd := n.Coord.Ready()
	n.Coord.Advance()
	for _, s := range rd.Notes {
		n.logf("coordinator: %s", s)
	}
	if n.Coord.Phase() != cm.Done {
		// Every wait of the coordinator has a deadline ahead of it.
		if dl, ok := n.Coord.Deadline(); !ok || dl <= n.Coord.Now() {
			n.fail("coordinator phase %s waits without a deadline (deadline %d, tick %d)", n.Coord.Phase(), dl, n.Coord.Now())
		}
	}
	for _, a := range rd.Actions {
		n.action(a)
	}
	for _, msg := range rd.Msgs {
		if msg.Kind == cm.Abort {
			n.aborts[[2]uint64{msg.Gen, msg.Req}] = true
		}
		if n.Log != nil { // boxing a message for a log nobody reads is a 1,000-node run's hot allocation
			n.logf("coordinator → %s", msg)
		}
		n.toNode(msg)
	}
	// Sent: the array holds the next broadcast (a nested step above used
	// one of its own).
	n.Coord.Recycle(rd.Msgs)
}

// toNode carries a coordinator message to its session's agent.
func (n *Net) toNode(msg cm.Msg) {
	nd := n.byS[msg.Session]
	if nd == nil || nd.ID != msg.Node {
		return // the session is gone
	}
	d := &toAgent{n: n, nd: nd, s: msg.Session}
	var err error
	d.in, err = ToAgent(msg)
	if err != nil {
		n.fail("%v", err)
		return
	}
	if msg.Kind == cm.Gen {
		if n.genInst[msg.Gen] == nil {
			n.genInst[msg.Gen] = map[string]int{}
		}
		n.genInst[msg.Gen][nd.ID] = nd.Inst
	}
	if msg.Kind == cm.Step {
		if b, ok := n.batches[msg.Step]; ok && !slices.Equal(b, msg.Indices) {
			n.fail("step %d sent with batch %v, earlier with %v", msg.Step, msg.Indices, b)
		}
		n.batches[msg.Step] = msg.Indices
	}
	n.inOrder(nd, msg.Session, 0, n.delay(0, 2), d)
}

// agent steps nd's machine and carries out its Ready.
func (n *Net) agent(nd *Node, ev am.Event) {
	if n.err != nil || !nd.Alive || nd.M.Phase() == am.Done {
		return
	}
	if ev.Kind != am.Tick {
		n.catchUp(nd, n.ticked)
	}
	if nd.frozen > n.now {
		// A stopped process sees nothing until it resumes; then it sees
		// everything that arrived, in order, and its clock jumps.
		if ev.Kind == am.Tick {
			nd.missed++
			return
		}
		inst := nd.Inst
		n.later(nd.frozen, func() {
			if nd.Inst == inst {
				n.agent(nd, ev)
			}
		})
		return
	}
	before := nd.M.Phase()
	nd.M.Step(ev)
	if ev.Kind == am.Tick && before == am.AwaitCommit && nd.M.Phase() != am.AwaitCommit {
		// The timeouts are ordered so that the coordinator always decides
		// a step (commit, or abort on its step deadline) before a node
		// gives up waiting for it.
		n.fail("%s gave up waiting for a commit before the coordinator decided", nd.ID)
	}
	rd := nd.M.Ready()
	nd.M.Advance()
	for _, s := range rd.Notes {
		n.logf("%s: %s", nd.ID, s)
	}
	s := nd.Session
	for _, r := range rd.Replies {
		if n.Log != nil { // boxing a message for a log nobody reads is a 1,000-node run's hot allocation
			n.logf("%s → %s", nd.ID, r)
		}
		if s == 0 {
			continue
		}
		deliver := &toCoord{n: n, inc: n.inc}
		var err error
		deliver.ev, err = toCoordinator(nd.ID, s, r, &deliver.msg)
		if err != nil {
			n.fail("%v", err)
			continue
		}
		n.inOrder(nd, s, 1, n.delay(0, 3), deliver)
		if n.DupEvery > 0 && n.rnd.IntN(n.DupEvery) == 0 {
			n.Dups++
			if n.Log != nil {
				n.logf("%s → %s (delivered twice)", nd.ID, r)
			}
			n.inOrder(nd, s, 1, n.delay(0, 3), deliver)
		}
	}
	for _, w := range rd.Work {
		n.do(nd, w)
	}
	// Done with them: the next Ready queues into these arrays (a nested
	// step above, e.g. an Open on connect, used arrays of its own).
	nd.M.Recycle(rd.Replies, rd.Work)
	if p := nd.M.Phase(); p == am.AwaitCommit || p == am.Rejoining {
		// A node's timed waits have their deadline ahead of them.
		if dl, ok := nd.M.Deadline(); !ok || dl <= nd.M.Now() {
			n.fail("%s waits in phase %s without a deadline (deadline %d, tick %d)", nd.ID, p, dl, nd.M.Now())
		}
	}
	if nd.M.Phase() == am.Done {
		o, why := nd.M.Outcome()
		n.logf("%s exits: outcome %d %s", nd.ID, o, why)
		n.exit(nd)
	}
	n.check(nd)
}

// catchUp gives nd the ticks after nd.seen up to tick to that it was not
// stepped with: those before its freeze's end are missed (given when it
// resumes), the rest one Tick event of that many ticks. Its machine had
// no deadline meanwhile (the tick loop steps every one that has), so
// these ticks only move its clock, wherever they fall among the other
// nodes' events.
func (n *Net) catchUp(nd *Node, to int64) {
	from := nd.seen
	if from >= to {
		return
	}
	nd.seen = to
	if !nd.Alive || nd.M.Phase() == am.Done {
		return
	}
	if end := min(to, nd.frozen-1); end > from { // tick t is missed while frozen > t
		nd.missed += end - from
		from = end
	}
	if to > from {
		n.agent(nd, am.Event{Kind: am.Tick, Ticks: to - from})
	}
}

// Canonical is the state after the first k steps of the run, from the
// batches the coordinator sent.
func (n *Net) Canonical(k int) (uint64, bool) {
	for g := len(n.canon) - 1; g < k; g++ {
		b, ok := n.batches[g]
		if !ok {
			return 0, false
		}
		n.canon = append(n.canon, StepState(n.canon[g], g, b))
	}
	return n.canon[k], true
}

// check: the node's replica holds the canonical state of the step count
// it claims.
func (n *Net) check(nd *Node) {
	if !nd.Alive || nd.held < 0 {
		return
	}
	want, ok := n.Canonical(nd.held)
	if !ok || nd.state != want {
		n.fail("node %s holds %d committed steps but not their state", nd.ID, nd.held)
	}
}

func share(count, world, rank int) int {
	if world <= 0 {
		return 0
	}
	c := count / world
	if rank < count%world {
		c++
	}
	return c
}

// wheelSize bounds how far ahead an event may be scheduled: the longest
// wait is a freeze (up to 220 ticks) plus a few ticks of delay.
const wheelSize = 1024

// wheel is the event queue: a ring of per-tick FIFO buckets. Every event
// is scheduled at the clock or less than wheelSize ticks ahead of it, so
// bucket t%wheelSize holds only tick t's events, in the order they were
// scheduled: the (tick, sequence) order a heap would give, with O(1)
// push and pop instead of O(log queue), which is most of a 1,000-node
// run's queue.
type wheel struct {
	b    [wheelSize][]job
	head [wheelSize]int
	n    int // events queued
}

func (w *wheel) push(t int64, f job) {
	i := t % wheelSize
	w.b[i] = append(w.b[i], f)
	w.n++
}

// empty reports whether tick t has no event left.
func (w *wheel) empty(t int64) bool {
	i := t % wheelSize
	return w.head[i] == len(w.b[i])
}

// pop takes tick t's next event, or nil.
func (w *wheel) pop(t int64) job {
	i := t % wheelSize
	h := w.head[i]
	if h == len(w.b[i]) {
		return nil
	}
	f := w.b[i][h]
	w.b[i][h] = nil
	w.n--
	if h+1 == len(w.b[i]) {
		// The bucket is drained: reuse its array for tick t+wheelSize.
		w.b[i], w.head[i] = w.b[i][:0], 0
	} else {
		w.head[i] = h + 1
	}
	return f
}

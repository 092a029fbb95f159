package machine

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringtune/ringtune/control"
)

var (
	simSeeds   = flag.Int("sim.seeds", 200, "simulator: number of seeds to run (seeds 1..n)")
	simNodes   = flag.Int("sim.nodes", 0, "simulator: nodes per run; 0 picks 1..16 per seed")
	simSeed    = flag.Int64("sim.seed", 0, "simulator: run only this seed (a failure prints it)")
	simTrace   = flag.Bool("sim.trace", false, "simulator: print every event and the machine's output (runs one seed at a time)")
	simSteps   = flag.Int("sim.steps", 0, "simulator: steps per run; 0 picks a small random schedule per seed")
	simWorkers = flag.Int("sim.workers", 0, "simulator: seeds run in parallel; 0 is GOMAXPROCS")
)

// simResult is what one seed's run left for the summary.
type simResult struct {
	done      bool
	n, total  int
	err       error // an invariant broken, or a panic
	code      int   // the machine's exit code
	why       error // the machine's error with it
	events    int
	faults    int
	restarted bool
}

// TestSim runs the machine against simulated nodes, network and clock, one
// run per seed: nodes join late, are killed and restarted, leave, are
// falsely suspected (their session dropped while they live on), and the
// network delays, reorders and duplicates their messages. After every
// event the invariants are checked (see simRun.check). A failure prints the
// command that replays its seed.
//
// Seeds run in parallel on -sim.workers goroutines. Each run is a function
// of its seed alone (its own random source, machine and clock), so the
// outcome does not depend on the number of workers; the lowest failing
// seed is the one reported.
func TestSim(t *testing.T) {
	seeds := make([]int64, 0, *simSeeds)
	if *simSeed != 0 {
		seeds = append(seeds, *simSeed)
	} else {
		for s := int64(1); s <= int64(*simSeeds); s++ {
			seeds = append(seeds, s)
		}
	}
	workers := *simWorkers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	if *simTrace {
		workers = 1 // one trace at a time, in seed order
	}
	workers = max(1, min(workers, len(seeds)))
	// The runs allocate small short-lived values at a high rate on a
	// small heap; a collection every 4× growth instead of 2× halves the
	// CPU the collector (and its write barriers) takes, for a few tens
	// of MB.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	start := time.Now()
	results := make([]simResult, len(seeds))
	var next, done atomic.Int64
	every := int64(max(1000, len(seeds)/10)) // progress lines of a long run (-v)
	var firstFail atomic.Int64               // index of the lowest failing seed so far
	firstFail.Store(int64(len(seeds)))
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				// Seeds above a failing one need not run; those below it
				// must, so that the lowest failing seed is reported.
				if i >= int64(len(seeds)) || i > firstFail.Load() {
					return
				}
				results[i] = runSeed(seeds[i])
				if d := done.Add(1); testing.Verbose() && d%every == 0 {
					t.Logf("sim: %d of %d seeds run, %s", d, len(seeds), time.Since(start).Round(time.Second))
				}
				if results[i].err != nil {
					for f := firstFail.Load(); i < f && !firstFail.CompareAndSwap(f, i); f = firstFail.Load() {
					}
				}
			}
		}()
	}
	wg.Wait()
	outcomes := map[int]int{}
	events, faults, restarts := 0, 0, 0
	for i, res := range results {
		if res.err != nil {
			t.Fatalf("seed %d (%d nodes, %d steps): %v\nreplay: go test ./coordinator/machine -run 'TestSim$' -sim.seed=%d -sim.nodes=%d -sim.steps=%d -v",
				seeds[i], res.n, res.total, res.err, seeds[i], *simNodes, *simSteps)
		}
		if !res.done {
			t.Fatalf("seed %d did not run (no failing seed below it)", seeds[i])
		}
		outcomes[res.code]++
		if testing.Verbose() && res.why != nil {
			t.Logf("seed %d: exit %d: %v", seeds[i], res.code, res.why)
		}
		events += res.events
		faults += res.faults
		if res.restarted {
			restarts++
		}
	}
	t.Logf("sim: %d seeds, %d events, %d faults (%d coordinator restarts), outcomes %v (exit code: runs), %d workers, %s",
		len(seeds), events, faults, restarts, outcomes, workers, time.Since(start).Round(time.Millisecond))
}

// runSeed runs one seed; a panic in the machine or the simulator is that
// seed's failure, reported with its replay command like any other.
func runSeed(seed int64) (res simResult) {
	res.n = *simNodes
	defer func() {
		if p := recover(); p != nil {
			res.err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	r := newSimRun(seed, *simNodes, *simSteps)
	res.n, res.total = r.n, r.m.Total()
	res.err = r.run()
	res.code, res.why = r.m.Outcome()
	res.events, res.faults, res.restarted, res.done = r.events, r.faults, r.restarted, true
	return res
}

// simNode is one simulated node process.
type simNode struct {
	id      string
	inst    int    // process incarnation (a restart is a new one)
	session uint64 // current session, 0 while it has none
	alive   bool
	applied int
	state   uint64
	gen     uint64
	world   []string
	rank    int
	step    int // step in flight, -1 none
	stepReq uint64
	restart bool  // restart after being killed or leaving
	inbox   []Msg // inbox[head:] not handled yet
	head    int
	busy    bool
	// lastTo is the tick of the last delivery to session lastSes: the
	// coordinator → node stream of a session is in order (gRPC).
	lastTo  int64
	lastSes uint64
}

// touch marks nd's state for the next invariant check.
func (r *simRun) touch(nd *simNode) { r.dirty = append(r.dirty, nd) }

// simKind is what a scheduled happening does. The frequent ones (a
// message on the wire, a rank's backward) are typed, so that scheduling
// them allocates nothing; the rest run a closure.
type simKind uint8

const (
	simFunc     simKind = iota // run do
	simDeliver                 // msg reaches the coordinator of incarnation inc
	simToNode                  // msg reaches nd
	simBackward                // nd finished the backward of the step msg
)

// simItem is a scheduled happening.
type simItem struct {
	kind simKind
	inc  int
	nd   *simNode
	msg  Msg
	do   func()
}

// simHorizon bounds how far ahead anything is scheduled (the longest
// delay is 200 ticks, a late joiner's start): the wheel has one bucket per
// tick of it.
const simHorizon = 512

// simBucket holds one tick's happenings in the order they were scheduled
// (items[head:] still due).
type simBucket struct {
	items []*simItem
	head  int
}

type simRun struct {
	bgLive uint64 // the background checkpoint transfer in flight, 0: none
	seed   int64
	n      int
	rnd    *rand.Rand
	m      *Machine
	cfg    Config
	nodes  []*simNode
	byID   map[string]*simNode
	wheel  [simHorizon]simBucket // what is due, by tick modulo simHorizon
	free   []*simItem            // items to reuse
	buf    Msg                   // the message being fed (see exec)
	next   uint64                // session ids
	// rings collects the ranks that finished a step's backward, by
	// (generation, request): the all-reduce completes when all have.
	rings map[[2]uint64][]*simNode
	// reduced records the reduced reports the machine received, by
	// (generation, request).
	reduced map[[2]uint64]map[string]bool
	lineage []simCommit
	// seen[e][i] is the committed step of the lineage that holds sample i
	// of epoch e: kept as the lineage grows and shrinks, so that the
	// exactly-once check of a commit costs its batch, not the run.
	seen    map[int]map[int]int
	disk    map[int]uint64 // checkpoints: committed steps → state
	batches [][]int        // by global step
	states  []uint64       // canonical state after k steps
	dirty   []*simNode     // replicas whose state changed since the last check
	events  int
	faults  int
	now     int64 // the simulation's clock (the coordinator's restarts with it)
	inc     int   // the coordinator's incarnation
	// restarted is set once the coordinator was restarted (once per run).
	restarted bool
	maxFlt    int
	err       error
}

type simCommit struct {
	step    int
	indices []int
}

func newSimRun(seed int64, nodes, steps int) *simRun {
	rnd := rand.New(rand.NewPCG(uint64(seed), 0x5157))
	n := nodes
	if n <= 0 {
		n = 1 + rnd.IntN(16)
	}
	gb := 2 + rnd.IntN(7)
	samples := gb * (2 + rnd.IntN(6))
	if rnd.IntN(3) == 0 {
		samples += rnd.IntN(gb) // a short last batch
	}
	c := Config{MinNodes: 1 + rnd.IntN(min(3, n)), Samples: samples, GlobalBatch: gb, DropLast: rnd.IntN(2) == 0,
		Seed: int64(seed), Epochs: 1 + rnd.IntN(3), DigestEvery: rnd.IntN(4), HasEval: rnd.IntN(2) == 0, EvalEvery: rnd.IntN(4),
		CheckpointEvery: rnd.IntN(5), CheckpointBackground: seed%2 == 1, Resumed: -1, MaxAborts: 20, SettleTicks: int64(rnd.IntN(4)), WaitTicks: 400,
		FormTicks: 60, SyncTicks: 60, StepTicks: 80, EvalTicks: 60, CheckpointTicks: 60, ExportTicks: 60, DrainTicks: 30}
	if steps > 0 {
		c.Samples, c.GlobalBatch, c.Epochs, c.DropLast = steps*gb, gb, 1, true
	}
	if rnd.IntN(3) == 0 && n > 1 {
		c.MaxNodes = c.MinNodes + rnd.IntN(n-c.MinNodes+1)
	}
	r := &simRun{seed: seed, n: n, rnd: rnd, cfg: c, byID: map[string]*simNode{}, seen: map[int]map[int]int{},
		rings: map[[2]uint64][]*simNode{}, reduced: map[[2]uint64]map[string]bool{}, disk: map[int]uint64{}}
	m, err := New(c)
	if err != nil {
		panic(err)
	}
	r.m = m
	if err := r.plan(); err != nil {
		panic(err)
	}
	r.maxFlt = 1 + rnd.IntN(2*n+2)
	for i := 0; i < n; i++ {
		nd := &simNode{id: fmt.Sprintf("n%02d", i), step: -1, restart: true}
		r.nodes = append(r.nodes, nd)
		r.byID[nd.id] = nd
		at := int64(0)
		if rnd.IntN(4) == 0 {
			at = int64(rnd.IntN(200)) // a late joiner
		}
		r.at(at, func() { r.startNode(nd) })
	}
	return r
}

// at runs f at tick t.
func (r *simRun) at(t int64, f func()) {
	it := r.item(simFunc)
	it.do = f
	r.schedule(t, it)
}

// item is a fresh item of kind k, reused when one is free.
func (r *simRun) item(k simKind) *simItem {
	var it *simItem
	if n := len(r.free); n > 0 {
		it, r.free = r.free[n-1], r.free[:n-1]
	} else {
		it = new(simItem)
	}
	it.kind = k
	return it
}

// schedule queues it for tick t. Happenings of one tick run in the order
// they were scheduled: the order of a heap keyed on (tick, sequence), at
// O(1) per item.
func (r *simRun) schedule(t int64, it *simItem) {
	if t < r.now || t-r.now >= simHorizon {
		r.fail("a happening scheduled for tick %d at tick %d: outside the simulator's wheel of %d ticks (raise simHorizon)", t, r.now, simHorizon)
		return
	}
	b := &r.wheel[t&(simHorizon-1)]
	b.items = append(b.items, it)
}

// due takes the next happening of the current tick, nil when none is left.
func (r *simRun) due() *simItem {
	b := &r.wheel[r.now&(simHorizon-1)]
	if b.head == len(b.items) {
		return nil
	}
	it := b.items[b.head]
	b.items[b.head] = nil
	b.head++
	if b.head == len(b.items) {
		b.items, b.head = b.items[:0], 0
	}
	return it
}

// exec runs a happening and frees its item.
func (r *simRun) exec(it *simItem) {
	kind, inc, nd, do := it.kind, it.inc, it.nd, it.do
	switch kind {
	case simDeliver:
		// The machine reads the message during Step and keeps none of
		// it but the pointers inside (Reduced, Files), so one buffer
		// serves every delivery.
		r.buf = it.msg
	case simToNode:
		nd.inbox = append(nd.inbox, it.msg)
	case simBackward:
		r.buf = it.msg
	}
	*it = simItem{}
	r.free = append(r.free, it)
	switch kind {
	case simFunc:
		do()
	case simDeliver:
		// What the old coordinator process was sent dies with it.
		if r.inc == inc {
			r.feed(Event{Kind: Message, Msg: &r.buf})
		}
	case simToNode:
		r.pump(nd)
	case simBackward:
		r.backward(nd, r.buf)
	}
}

func (r *simRun) delay(lo, hi int) int64 { return r.now + int64(lo+r.rnd.IntN(hi-lo+1)) }

// feedLater feeds ev to the coordinator at tick t, unless the coordinator
// restarted meanwhile: what the old process was told dies with it.
func (r *simRun) feedLater(t int64, ev Event) {
	inc := r.inc
	r.at(t, func() {
		if r.inc == inc {
			r.feed(ev)
		}
	})
}

// initState is every fresh trainer's state; stepState the state after
// applying step g with the step's samples. Canonical states depend only on
// the schedule, so a replica's state tells which steps it applied.
const initState = 0x9e3779b97f4a7c15

func stepState(prev uint64, g int, indices []int) uint64 {
	h := fnv.New64a()
	fmt.Fprint(h, prev, g, indices)
	return h.Sum64()
}

// plan computes every step's batch and the canonical state after each
// step count, from the node's own copy of the schedule.
func (r *simRun) plan() error {
	s := newSchedule(r.cfg)
	st := uint64(initState)
	r.states = []uint64{st}
	for g := 0; g < s.total; g++ {
		e, i := s.locate(g)
		if s.epoch == nil || s.epoch.Index != e {
			if _, err := s.begin(g); err != nil {
				return err
			}
		}
		b, err := s.epoch.Batch(i)
		if err != nil {
			return err
		}
		r.batches = append(r.batches, b.Indices)
		st = stepState(st, g, b.Indices)
		r.states = append(r.states, st)
	}
	return nil
}

func (r *simRun) canon(k int) (uint64, error) {
	if k >= len(r.states) {
		return 0, fmt.Errorf("state of %d steps asked, the run has %d", k, len(r.states)-1)
	}
	return r.states[k], nil
}

func (r *simRun) startNode(nd *simNode) {
	nd.inst++
	nd.alive, nd.applied, nd.state, nd.gen, nd.step = true, -1, initState, 0, -1
	nd.inbox, nd.head, nd.busy = nd.inbox[:0], 0, false
	r.openSession(nd)
}

func (r *simRun) ring(nd *simNode) string { return fmt.Sprintf("%s.i%d", nd.id, nd.inst) }

func (r *simRun) openSession(nd *simNode) {
	r.next++
	nd.session = r.next
	s := nd.session
	r.feed(Event{Kind: Join, Node: nd.id, Session: s, Ring: r.ring(nd), Applied: nd.applied})
}

// toCoord sends a node's message to the coordinator: delayed, sometimes
// duplicated, so that messages of different sessions and kinds reorder.
func (r *simRun) toCoord(nd *simNode, msg Msg) {
	msg.Node, msg.Session = nd.id, nd.session
	copies := 1
	if r.rnd.IntN(20) == 0 {
		copies = 2
	}
	for i := 0; i < copies; i++ {
		it := r.item(simDeliver)
		it.inc, it.msg = r.inc, msg
		r.schedule(r.delay(0, 3), it)
	}
}

// feed gives the machine one event, handles its output and checks the
// invariants.
func (r *simRun) feed(ev Event) {
	if r.err != nil || r.m.Phase() == Done {
		return
	}
	if ev.Kind == Message && ev.Msg.Kind == Reduced {
		k := [2]uint64{ev.Msg.Gen, ev.Msg.Req}
		// The node sent it (only a node whose ring completed does) and it
		// reached the coordinator.
		if r.reduced[k] == nil {
			r.reduced[k] = map[string]bool{}
		}
		r.reduced[k][ev.Msg.Node] = true
	}
	r.events++
	r.m.Step(ev)
	rd := r.m.Ready()
	r.m.Advance()
	if *simTrace && (ev.Kind != Tick || !rd.Empty()) {
		what := fmt.Sprintf("event %d", ev.Kind)
		if ev.Msg != nil {
			what = "msg " + ev.Msg.String()
		} else if ev.Node != "" {
			what += " " + ev.Node + fmt.Sprint(" session ", ev.Session)
		}
		dl, _ := r.m.Deadline()
		fmt.Printf("t=%d %s [coordinator %d at tick %d: %s until %d]\n", r.now, what, r.inc, r.m.Now(), r.m.Phase(), dl)
		for _, m := range rd.Msgs {
			fmt.Printf("    send %s\n", m)
		}
		for _, a := range rd.Actions {
			fmt.Printf("    act %s\n", a)
		}
		for _, n := range rd.Notes {
			fmt.Printf("    note %s\n", n)
		}
	}
	for _, a := range rd.Actions {
		r.action(a)
	}
	for _, msg := range rd.Msgs {
		r.toNode(msg)
	}
	if err := r.check(); err != nil && r.err == nil {
		r.err = err
	}
}

func (r *simRun) toNode(msg Msg) {
	nd := r.byID[msg.Node]
	if nd == nil || msg.Session != nd.session || msg.Session == 0 {
		return
	}
	t := r.delay(0, 2)
	if nd.lastSes == msg.Session {
		t = max(t, nd.lastTo)
	}
	nd.lastTo, nd.lastSes = t, msg.Session
	it := r.item(simToNode)
	it.nd, it.msg = nd, msg
	r.schedule(t, it)
}

// pump has the node's agent handle its inbox in order. Setting up and
// pulling the state block it (the agent does them inline), so a generation
// that arrives meanwhile is handled after, with the state they left.
func (r *simRun) pump(nd *simNode) {
	for !nd.busy && nd.head < len(nd.inbox) {
		msg := nd.inbox[nd.head]
		nd.inbox[nd.head] = Msg{}
		nd.head++
		if nd.head == len(nd.inbox) {
			nd.inbox, nd.head = nd.inbox[:0], 0
		}
		r.onNode(nd, msg)
	}
}

// block keeps nd busy for a while, then runs f and resumes its inbox.
func (r *simRun) block(nd *simNode, lo, hi int, f func()) {
	nd.busy = true
	inst := nd.inst
	r.at(r.delay(lo, hi), func() {
		if nd.inst != inst {
			return // the process was restarted meanwhile
		}
		nd.busy = false
		f()
		r.pump(nd)
	})
}

// onNode is a node's agent receiving msg.
func (r *simRun) onNode(nd *simNode, msg Msg) {
	if !nd.alive || nd.session != msg.Session {
		return
	}
	// The cases that answer later copy msg for their closure (msg := msg),
	// so that only they move a message to the heap, not every delivery.
	switch msg.Kind {
	case Job:
		msg := msg
		r.block(nd, 1, 4, func() {
			if nd.alive && nd.session == msg.Session {
				if nd.applied < 0 {
					nd.applied, nd.state = 0, initState
					r.touch(nd)
				}
				r.toCoord(nd, Msg{Kind: SetUp, Applied: nd.applied})
			}
		})
	case Gen:
		nd.gen, nd.world, nd.rank, nd.step = msg.Gen, msg.IDs, msg.Rank, -1
		r.toCoord(nd, Msg{Kind: Joined, Gen: msg.Gen, Req: msg.Req, Applied: nd.applied})
		if msg.Digest && nd.applied == msg.Applied {
			r.toCoord(nd, Msg{Kind: Digest, Gen: msg.Gen, Req: msg.Req, Step: nd.applied, Sum: fmt.Sprintf("%016x", nd.state)})
		}
	case Pull:
		msg := msg
		r.block(nd, 1, 6, func() {
			if !nd.alive || nd.session != msg.Session {
				return
			}
			reply := Msg{Kind: Loaded, Gen: msg.Gen, Req: msg.Req, Step: msg.Pull.Step}
			switch msg.Pull.Kind {
			case PullState:
				src := r.byID[msg.Pull.Node]
				if src == nil || !src.alive || r.ring(src) != msg.Pull.Ring || src.applied != msg.Pull.Step {
					reply.Error = "source gone or moved on"
				} else {
					nd.state, nd.applied = src.state, src.applied
					r.touch(nd)
				}
			case PullCheckpoint:
				st, ok := r.disk[msg.Pull.Step]
				if !ok {
					r.fail("pull of the checkpoint of step %d, which was never written", msg.Pull.Step)
					return
				}
				nd.state, nd.applied = st, msg.Pull.Step
				r.touch(nd)
			}
			r.toCoord(nd, reply)
		})
	case Step:
		if nd.gen != msg.Gen {
			r.toCoord(nd, Msg{Kind: Failed, Gen: msg.Gen, Req: msg.Req, Step: msg.Step, Error: "stale generation"})
			return
		}
		if nd.applied != msg.Step {
			r.fail("node %s got step %d while holding %d committed steps", nd.id, msg.Step, nd.applied)
			return
		}
		nd.step, nd.stepReq = msg.Step, msg.Req
		it := r.item(simBackward)
		it.nd, it.msg = nd, msg
		r.schedule(r.delay(1, 6), it)
	case Commit:
		if nd.step != msg.Step || nd.applied != msg.Step {
			r.fail("node %s got the commit of step %d while computing %d and holding %d", nd.id, msg.Step, nd.step, nd.applied)
			return
		}
		b, err := r.batchOf(msg.Step)
		if err != nil {
			r.fail("%v", err)
			return
		}
		if nd.state == r.states[msg.Step] {
			// The canonical chain was built by this same function
			// (plan): its next link is the hash, without hashing again.
			nd.state = r.states[msg.Step+1]
		} else {
			nd.state = stepState(nd.state, msg.Step, b)
		}
		nd.applied, nd.step = msg.Step+1, -1
		r.touch(nd)
		if msg.Digest {
			r.toCoord(nd, Msg{Kind: Digest, Gen: msg.Gen, Req: msg.Req, Step: nd.applied, Sum: fmt.Sprintf("%016x", nd.state)})
		}
	case Abort:
		if nd.step == msg.Step {
			nd.step = -1
		}
	case Eval:
		msg := msg
		r.at(r.delay(1, 4), func() {
			if nd.alive && nd.session == msg.Session {
				r.toCoord(nd, Msg{Kind: EvalRes, Gen: msg.Gen, Req: msg.Req, Eval: &control.EvalSums{Count: 1}})
			}
		})
	case Export:
		msg := msg
		r.at(r.delay(1, 4), func() {
			if nd.alive && nd.session == msg.Session {
				r.toCoord(nd, Msg{Kind: Exported, Gen: msg.Gen, Req: msg.Req, Files: []control.FileInfo{{Name: "model.safetensors"}}})
			}
		})
	case Stop:
		nd.alive, nd.session = false, 0
		if msg.Error == "" && r.m.Phase() != Done && nd.restart {
			// It left; it may come back as a new process later.
			r.at(r.delay(20, 120), func() { r.startNode(nd) })
		}
	}
}

// backward is nd finishing the backward of the step msg: the ring's
// all-reduce completes once every rank has, and each reports its share.
func (r *simRun) backward(nd *simNode, msg Msg) {
	if !nd.alive || nd.session != msg.Session || nd.step != msg.Step || nd.stepReq != msg.Req {
		return
	}
	k := [2]uint64{msg.Gen, msg.Req}
	ring := append(r.rings[k], nd)
	r.rings[k] = ring
	if len(ring) < msg.World {
		return
	}
	for _, p := range ring {
		if p.alive && p.step == msg.Step && p.stepReq == msg.Req {
			c := share(msg.Count, msg.World, p.rank)
			r.toCoord(p, Msg{Kind: Reduced, Gen: msg.Gen, Req: msg.Req, Step: msg.Step, Reduced: &control.Reduced{Count: c, Samples: c}})
		}
	}
	delete(r.rings, k)
}

// batchOf is the full batch of global step g (the node hashes it into its
// state).
func (r *simRun) batchOf(g int) ([]int, error) {
	if g >= len(r.batches) {
		return nil, fmt.Errorf("batch of step %d asked, the run has %d", g, len(r.batches))
	}
	return r.batches[g], nil
}

// action is the driver doing what the machine asked.
func (r *simRun) action(a Action) {
	switch a.Kind {
	case Committed:
		if err := r.checkCounts(); err != nil {
			r.fail("%v", err)
		}
		gen := a.Gen
		got := r.reduced[[2]uint64{gen, a.Req}]
		if len(a.IDs) == 0 {
			r.fail("step %d committed by an empty world", a.Step)
		}
		for _, id := range a.IDs {
			if !got[id] {
				r.fail("step %d committed without rank %s's reduced report (generation %d, request %d)", a.Step, id, gen, a.Req)
			}
		}
		if a.Step != len(r.lineage) {
			r.fail("step %d committed after %d committed steps", a.Step, len(r.lineage))
		}
		if r.bgLive != 0 && r.bgLive == r.m.bgReq {
			r.fail("step %d committed while the background checkpoint's transfer %d reads the replicas", a.Step, r.bgLive)
		}
		c := simCommit{step: a.Step, indices: slices.Clone(a.Indices)}
		r.lineage = append(r.lineage, c)
		if err := r.see(c); err != nil {
			r.fail("%v", err)
		}
	case Rollback:
		newest := 0 // the initial state, which every fresh node holds
		for k := range r.disk {
			newest = max(newest, k)
		}
		if a.Step < newest || a.Step >= len(r.lineage) {
			r.fail("rollback to step %d, but the newest checkpoint holds %d (%d committed)", a.Step, newest, len(r.lineage))
		}
		r.truncate(a.Step)
	case WriteCheckpoint:
		src := r.byID[a.Node]
		ok := src != nil && src.alive && src.session == a.Session && src.applied == a.Step
		session := uint64(0)
		if ok {
			session = src.session
		}
		if r.cfg.CheckpointBackground && a.Step < r.m.Total() {
			r.bgLive = a.Req
		}
		inc := r.inc
		r.at(r.delay(1, 8), func() {
			if r.inc != inc {
				return // the coordinator died before the file was complete
			}
			if r.bgLive == a.Req {
				r.bgLive = 0
			}
			// A node ends any read of its state before it changes it (an
			// applied step, a loaded state): a source that moved on while
			// the transfer ran delivers nothing.
			if !ok || !src.alive || src.session != session || src.applied != a.Step {
				r.feed(Event{Kind: ActionDone, Req: a.Req, Error: "source lost or moved on"})
				return
			}
			r.disk[a.Step] = src.state
			r.feed(Event{Kind: ActionDone, Req: a.Req})
		})
	case WriteExport:
		src := r.byID[a.Node]
		ok := src != nil && src.alive && src.session == a.Session
		inc := r.inc
		r.at(r.delay(1, 8), func() {
			if r.inc != inc {
				return
			}
			if !ok || !src.alive {
				r.feed(Event{Kind: ActionDone, Req: a.Req, Error: "source lost"})
				return
			}
			r.feed(Event{Kind: ActionDone, Req: a.Req})
		})
	case Drop:
		nd := r.byID[a.Node]
		r.endSession(nd, a.Session)
	}
}

// endSession ends a node's session from the coordinator's side: the node
// notices and opens a new one as a spare, keeping its state (defect 7).
func (r *simRun) endSession(nd *simNode, s uint64) {
	if nd == nil || s == 0 {
		return
	}
	r.feedLater(r.delay(0, 3), Event{Kind: Lost, Node: nd.id, Session: s})
	if nd.session == s && nd.alive {
		nd.session, nd.step, nd.gen = 0, -1, 0
		r.at(r.delay(2, 10), func() {
			if nd.alive && nd.session == 0 {
				r.openSession(nd)
			}
		})
	}
}

// fault injects one random failure.
func (r *simRun) fault() {
	var live []*simNode
	for _, nd := range r.nodes {
		if nd.alive && nd.session != 0 {
			live = append(live, nd)
		}
	}
	if len(live) == 0 {
		return
	}
	nd := live[r.rnd.IntN(len(live))]
	r.faults++
	if !r.restarted && len(r.disk) > 0 && r.rnd.IntN(8) == 0 {
		r.restartCoordinator()
		return
	}
	switch r.rnd.IntN(4) {
	case 0, 1: // kill -9, maybe restarted later
		s, ring := nd.session, r.ring(nd)
		nd.alive, nd.session = false, 0
		r.feedLater(r.delay(0, 3), Event{Kind: Lost, Node: nd.id, Session: s})
		r.feedLater(r.delay(5, 15), Event{Kind: Lost, Node: nd.id, Ring: ring})
		if r.rnd.IntN(4) != 0 {
			r.at(r.delay(5, 100), func() {
				if !nd.alive {
					r.startNode(nd)
				}
			})
		}
	case 2: // SIGTERM: the node says it leaves
		s := nd.session
		r.feedLater(r.delay(0, 2), Event{Kind: Leave, Node: nd.id, Session: s})
	case 3: // false suspicion: the coordinator drops a live node
		r.endSession(nd, nd.session)
	}
}

// restartCoordinator kills the coordinator and starts it again with
// --resume from the newest checkpoint, under the live nodes: they notice
// their session ended and re-attach with the state they hold (issue 11,
// defect 10). The steps committed after the checkpoint are undone.
func (r *simRun) restartCoordinator() {
	newest := -1
	for k := range r.disk {
		newest = max(newest, k)
	}
	r.restarted = true
	r.inc++
	r.bgLive = 0 // the old coordinator's transfers die with it
	cfg := r.cfg
	cfg.Resumed = newest
	m, err := New(cfg)
	if err != nil {
		r.fail("restart with --resume from step %d: %v", newest, err)
		return
	}
	r.m = m
	if newest > len(r.lineage) {
		r.fail("checkpoint of step %d beyond the %d committed steps", newest, len(r.lineage))
		return
	}
	r.truncate(newest)
	// Generations and request ids start again: forget the old ones.
	r.reduced = map[[2]uint64]map[string]bool{}
	r.rings = map[[2]uint64][]*simNode{}
	for _, nd := range r.nodes {
		if !nd.alive {
			continue
		}
		nd.session, nd.gen, nd.step, nd.inbox, nd.head = 0, 0, -1, nd.inbox[:0], 0
		r.at(r.delay(2, 20), func() {
			if nd.alive && nd.session == 0 {
				r.openSession(nd)
			}
		})
	}
}

func (r *simRun) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("tick %d: "+format, append([]any{r.now}, args...)...)
	}
}

// check tests the invariants after an event.
func (r *simRun) check() error {
	m := r.m
	if m.Phase() != Done {
		dl, ok := m.Deadline()
		if !ok || dl <= m.Now() {
			return fmt.Errorf("tick %d: phase %s waits without a deadline (deadline %d)", m.Now(), m.Phase(), dl)
		}
	}
	if max := r.cfg.MaxNodes; max > 0 && len(m.world) > max {
		return fmt.Errorf("tick %d: world of %d ranks above max_nodes %d", m.Now(), len(m.world), max)
	}
	if len(m.nodes) <= simRecountMax {
		if err := r.checkCounts(); err != nil {
			return err
		}
	}
	if m.Applied() != len(r.lineage) {
		return fmt.Errorf("tick %d: machine has %d committed steps, the commits say %d", m.Now(), m.Applied(), len(r.lineage))
	}
	// Every live replica holds the canonical state of the step count it
	// holds: no replica skipped, repeated or half-applied a step, or loaded
	// a state labelled with another step. (Only the replicas that changed
	// since the last check: the others were checked then.)
	dirty := r.dirty
	r.dirty = r.dirty[:0]
	for _, nd := range dirty {
		if !nd.alive || nd.applied < 0 {
			continue
		}
		want, err := r.canon(nd.applied)
		if err != nil {
			return err
		}
		if nd.state != want {
			return fmt.Errorf("tick %d: node %s holds %d committed steps but not their state", m.Now(), nd.id, nd.applied)
		}
	}
	// (That every rank trains a step from the committed state is checked
	// where a node receives the step: onNode.)
	return nil
}

// see adds commit c to the samples seen: every sample of an epoch is in
// at most one committed step of the lineage.
func (r *simRun) see(c simCommit) error {
	e, _ := r.m.sched.locate(c.step)
	seen := r.seen[e]
	if seen == nil {
		seen = map[int]int{}
		r.seen[e] = seen
	}
	// Check, then add: a refused commit leaves the samples seen as they
	// were.
	for _, i := range c.indices {
		if prev, dup := seen[i]; dup {
			return fmt.Errorf("sample %d of epoch %d is in committed steps %d and %d", i, e, prev, c.step)
		}
	}
	for k, i := range c.indices {
		if _, dup := seen[i]; dup {
			for _, j := range c.indices[:k] {
				delete(seen, j)
			}
			return fmt.Errorf("sample %d of epoch %d is twice in committed step %d", i, e, c.step)
		}
		seen[i] = c.step
	}
	return nil
}

// truncate cuts the lineage to its first k commits (a rollback, or a
// coordinator resumed from an older checkpoint) and forgets their samples.
func (r *simRun) truncate(k int) {
	for _, c := range r.lineage[k:] {
		e, _ := r.m.sched.locate(c.step)
		for _, i := range c.indices {
			if r.seen[e][i] == c.step {
				delete(r.seen[e], i)
			}
		}
	}
	r.lineage = r.lineage[:k]
}

// simRecountMax is the number of sessions up to which the machine's node
// counts are recounted after every event; above it, at every commit (a
// recount is O(N): after every event it would make the run O(N²)).
const simRecountMax = 64

// checkCounts recounts what the machine keeps counted as nodes change
// (nReady, nLeaving, nRanked) and compares.
func (r *simRun) checkCounts() error {
	m := r.m
	ready, leaving, ranked := 0, 0, 0
	for _, n := range m.nodes {
		if n.ready && !n.leaving {
			ready++
		}
		if n.leaving {
			leaving++
		}
		if n.rank >= 0 {
			ranked++
		}
	}
	if ready != m.nReady || leaving != m.nLeaving || ranked != m.nRanked {
		return fmt.Errorf("tick %d: the machine counts %d set-up, %d leaving and %d ranked nodes; there are %d, %d and %d",
			m.Now(), m.nReady, m.nLeaving, m.nRanked, ready, leaving, ranked)
	}
	return nil
}

// checkEpochs checks, at the end of the run, that every finished epoch's
// samples were each committed once: see already refused a second time.
func (r *simRun) checkEpochs() error {
	s := r.m.sched
	for e := 0; (e+1)*s.perEpoch <= len(r.lineage); e++ {
		if len(r.seen[e]) != r.cfg.Samples && !(r.cfg.DropLast && len(r.seen[e]) == s.perEpoch*r.cfg.GlobalBatch) {
			return fmt.Errorf("epoch %d ended with %d of %d samples committed", e, len(r.seen[e]), r.cfg.Samples)
		}
	}
	return nil
}

// run drives the simulation until the machine is done.
func (r *simRun) run() error {
	limit := int64(20000 + 400*r.m.Total())
	for r.err == nil && r.m.Phase() != Done {
		if r.now > limit {
			return fmt.Errorf("the run did not end after %d ticks (phase %s, %d of %d steps)", limit, r.m.Phase(), r.m.Applied(), r.m.Total())
		}
		if it := r.due(); it != nil {
			r.exec(it)
			continue
		}
		if r.faults < r.maxFlt && r.rnd.IntN(40) == 0 {
			r.fault()
			continue
		}
		r.now++
		r.feed(Event{Kind: Tick})
	}
	if r.err != nil {
		return r.err
	}
	code, err := r.m.Outcome()
	switch code {
	case ExitOK:
		if len(r.lineage) != r.m.Total() {
			return fmt.Errorf("run done with %d of %d steps committed", len(r.lineage), r.m.Total())
		}
		if err := r.checkEpochs(); err != nil {
			return err
		}
		if _, ok := r.disk[r.m.Total()]; !ok && r.m.Checkpoint() == r.m.Total() {
			return errors.New("the machine counts a final checkpoint that was never written")
		}
	case ExitNoNodes:
		// Documented: every node was lost (or none holds the state and
		// no checkpoint does) for longer than the wait.
		if !strings.Contains(err.Error(), "waited") && !strings.Contains(err.Error(), "no node holds the state") {
			return fmt.Errorf("exit %d with an undocumented error: %v", code, err)
		}
		alive := 0
		for _, nd := range r.nodes {
			if nd.alive {
				alive++
			}
		}
		if need := r.cfg.MinNodes; strings.Contains(err.Error(), "waited") && alive >= need {
			return fmt.Errorf("gave up waiting for nodes while %d node processes were alive (min_nodes %d): %v", alive, need, err)
		}
	default:
		return fmt.Errorf("run ended with exit %d: %v", code, err)
	}
	return nil
}

// TestSimChecksCatch: the simulator's incremental checks fail on what they
// guard: a commit without a rank's reduced report, a sample committed twice
// in an epoch (and not after the lineage gave it back), an epoch left
// incomplete, and a drifted node count of the machine.
func TestSimChecksCatch(t *testing.T) {
	r := newSimRun(1, 3, 4) // 4 steps, one epoch
	b0, b1 := r.batches[0], r.batches[1]
	r.reduced[[2]uint64{1, 7}] = map[string]bool{"n00": true}
	r.action(Action{Kind: Committed, Gen: 1, Req: 7, Step: 0, IDs: []string{"n00", "n01"}, Indices: b0})
	if r.err == nil || !strings.Contains(r.err.Error(), "without rank n01's reduced report") {
		t.Fatalf("commit without a rank's report: %v", r.err)
	}

	r = newSimRun(1, 3, 4)
	if err := r.see(simCommit{step: 0, indices: b0}); err != nil {
		t.Fatal(err)
	}
	r.lineage = append(r.lineage, simCommit{step: 0, indices: b0})
	if err := r.see(simCommit{step: 1, indices: []int{b1[0], b0[0]}}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("sample %d of epoch 0 is in committed steps 0 and 1", b0[0])) {
		t.Fatalf("a sample committed twice: %v", err)
	}
	// A rollback gives step 0's samples back: committing them again is
	// no double commit.
	r.truncate(0)
	if err := r.see(simCommit{step: 0, indices: b0}); err != nil {
		t.Fatalf("after a rollback: %v", err)
	}
	r.lineage = append(r.lineage, simCommit{step: 0, indices: b0})
	for g := 1; g < 4; g++ {
		c := simCommit{step: g, indices: r.batches[g]}
		if g == 3 {
			c.indices = c.indices[1:] // one sample never committed
		}
		if err := r.see(c); err != nil {
			t.Fatal(err)
		}
		r.lineage = append(r.lineage, c)
	}
	if err := r.checkEpochs(); err == nil || !strings.Contains(err.Error(), "epoch 0 ended with") {
		t.Fatalf("an incomplete epoch: %v", err)
	}

	r = newSimRun(1, 3, 4)
	if err := r.checkCounts(); err != nil {
		t.Fatal(err)
	}
	r.m.nReady++
	if err := r.checkCounts(); err == nil || !strings.Contains(err.Error(), "the machine counts 1 set-up") {
		t.Fatalf("a drifted count: %v", err)
	}
}

// TestSimSeedsIndependent: a seed's run is the same whether it runs alone
// or next to others on parallel workers (no state shared between runs),
// which is what lets TestSim run seeds in parallel and replay one alone.
func TestSimSeedsIndependent(t *testing.T) {
	const n = 40
	alone := make([]simResult, n)
	for i := range alone {
		alone[i] = runSeed(int64(i + 1))
	}
	together := make([]simResult, n)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				together[i] = runSeed(int64(i + 1))
			}
		}()
	}
	wg.Wait()
	for i := range alone {
		a, b := alone[i], together[i]
		if a.err != nil || b.err != nil {
			t.Fatalf("seed %d: %v / %v", i+1, a.err, b.err)
		}
		if a.events != b.events || a.faults != b.faults || a.code != b.code || a.restarted != b.restarted || a.n != b.n {
			t.Errorf("seed %d alone: %d events, %d faults, exit %d; next to others: %d events, %d faults, exit %d",
				i+1, a.events, a.faults, a.code, b.events, b.faults, b.code)
		}
	}
}

package coordinator

import (
	"context"
	"time"

	"github.com/ringtune/ringtune/coordinator/machine"
)

// tick is the length of the machine's unit of logical time. Every timeout
// is converted to ticks once (machineConfig); the machine never reads a
// clock. 50 ms is far below every deadline and costs nothing while idle.
const tick = 50 * time.Millisecond

// The deadlines that have no configuration key.
const (
	// pullTimeout bounds the wait for stale ranks to load a state, and a
	// checkpoint's transfer. The bulk plane's per-chunk deadline is what
	// detects a stalled transfer; this only caps one that keeps moving,
	// and is far above any real one.
	pullTimeout   = 2 * time.Hour
	formTimeout   = 60 * time.Second // every rank answers a new generation
	exportTimeout = 30 * time.Minute // rank 0 writes the model and the transfer ends
	drainTimeout  = 30 * time.Second // the last digests arrive
)

// ticks converts d to ticks, rounding up, at least 1: every wait has a
// deadline.
func ticks(d time.Duration) int64 { return max(1, int64((d+tick-1)/tick)) }

// driver runs coordinator/machine for one run: it owns the sockets (the
// sessions of serveSession), the clock (wall time → Tick events), the disk
// (checkpoint and export transfers) and the displays (log, metrics,
// dashboard, progress), and feeds the machine every event. The machine
// decides; the driver only carries its decisions out. One goroutine, Run's,
// touches it.
type driver struct {
	c   *Coordinator
	m   *machine.Machine
	ctx context.Context

	sid   uint64               // last session id handed out
	live  map[string]*dsess    // the sessions the machine holds, by node id
	bySid map[uint64]*dsess    // every open session, by id
	of    map[*session]*dsess  // every open session, by its relay
	sums  map[int]string       // digests received, by committed step count (for the log)
	paths map[int]string       // checkpoints written in this run, by step
	xfer  map[string]*transfer // running transfers by kind: "checkpoint", "export"
	done  chan result          // finished transfers
	quit  chan struct{}        // closed when the driver returns
	fatal error                // a driver-side failure that ends the run
	batch stepBatch            // the step in flight's samples

	// What the log and displays last showed (driver_log.go).
	phase    machine.Phase
	gen      uint64
	ids      []string
	formed   uint64          // the last generation logged as formed
	leaving  map[string]bool // ranks of the current world that asked to leave
	lostRank bool            // the current world lost a rank
	aborted  bool            // this flush aborted a step or failed a phase
	stepped  bool            // a step was sent (the rate counts from then)

	t0     time.Time
	ticked int64
}

// dsess is the driver's record of one session.
type dsess struct {
	s     *session
	sid   uint64
	ready bool // the node's trainer is set up
	// The requests last sent on this session, to fill the request id into
	// replies of agents that do not echo it (wire.go).
	genReq, stepReq, pullReq, lastReq uint64
	step                              int
	digestReq                         map[int]uint64 // by the committed step count a digest reports
}

// drive runs the training protocol with coordinator/machine until the run
// is over: nil, or an error that carries the exit code.
func (c *Coordinator) drive(ctx context.Context) error {
	d, err := newDriver(ctx, c)
	if err != nil {
		return err
	}
	defer d.stopTransfers()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if d.fatal != nil {
			return d.fatal
		}
		if d.m.Phase() == machine.Done {
			return d.outcome()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			d.tickTo(now)
		case ev := <-c.events:
			d.handle(ev)
		case r := <-d.done:
			d.finished(r)
		}
	}
}

// newDriver starts the machine of c's run.
func newDriver(ctx context.Context, c *Coordinator) (*driver, error) {
	m, err := machine.New(c.machineConfig())
	if err != nil {
		return nil, err
	}
	d := &driver{c: c, m: m, ctx: ctx, live: map[string]*dsess{}, bySid: map[uint64]*dsess{}, of: map[*session]*dsess{},
		sums: map[int]string{}, paths: map[int]string{}, xfer: map[string]*transfer{}, done: make(chan result, 4),
		quit: make(chan struct{}), leaving: map[string]bool{}, phase: machine.Waiting, t0: time.Now()}
	if c.resumed != nil {
		d.paths[c.resumed.Applied] = c.resumed.Path
	}
	d.logWaiting()
	d.flush()
	return d, nil
}

// tickTo feeds the machine the ticks due by now. They follow the wall
// clock, not the ticker's deliveries, which a loaded machine drops.
func (d *driver) tickTo(now time.Time) {
	for due := int64(now.Sub(d.t0) / tick); d.ticked < due && d.m.Phase() != machine.Done; {
		d.ticked++
		d.step(machine.Event{Kind: machine.Tick})
	}
}

// machineConfig is the run's configuration in the machine's terms.
func (c *Coordinator) machineConfig() machine.Config {
	t, cl := c.cfg.Train, c.cfg.Cluster
	resumed := -1
	if c.resumed != nil {
		resumed = c.resumed.Applied
	}
	settle := int64(0)
	if cl.Settle > 0 {
		settle = ticks(cl.Settle)
	}
	step := ticks(c.stepTimeout())
	return machine.Config{
		MinNodes: cl.MinNodes, MaxNodes: cl.MaxNodes,
		Samples: len(c.train), GlobalBatch: t.GlobalBatch, DropLast: t.DropLast, Seed: t.Seed, Epochs: t.Epochs, MaxSteps: t.MaxSteps,
		CountOf:     c.stepCount,
		DigestEvery: t.DigestEvery, EvalEvery: t.EvalEvery, HasEval: len(c.eval) > 0,
		CheckpointEvery: c.cfg.Checkpoint.Every, CheckpointBackground: c.cfg.Checkpoint.Background, Resumed: resumed, MaxAborts: c.opts.MaxAborts,
		SettleTicks: settle, WaitTicks: ticks(cl.WaitTimeout), FormTicks: ticks(formTimeout), SyncTicks: ticks(pullTimeout),
		StepTicks: step, EvalTicks: step, CheckpointTicks: ticks(pullTimeout), ExportTicks: ticks(exportTimeout), DrainTicks: ticks(drainTimeout),
	}
}

// stepCount is the divisor of step g's summed gradient (the machine's
// CountOf): a pure function of the step and its samples.
func (c *Coordinator) stepCount(g int, indices []int) int {
	enc, pos, err := c.stepSamples(g, indices)
	if err != nil {
		// Locating a step of a schedule New validated cannot fail.
		return len(indices)
	}
	return GlobalCount(c.task, enc, pos)
}

// step feeds the machine one event and carries out what it decided.
func (d *driver) step(ev machine.Event) {
	d.m.Step(ev)
	d.flush()
}

// flush carries out the machine's Ready: notes to the log, messages to the
// sessions, actions to the disk and displays; then Advance.
func (d *driver) flush() {
	rd := d.m.Ready()
	d.aborted = false
	for _, n := range rd.Notes {
		d.note(n)
	}
	for _, msg := range rd.Msgs {
		d.send(msg)
	}
	for _, a := range rd.Actions {
		d.act(a)
	}
	d.m.Advance()
	d.transitions()
}

// handle turns one session or gossip event into the machine's events.
func (d *driver) handle(ev event) {
	c := d.c
	switch {
	case ev.open:
		d.sid++
		ds := &dsess{s: ev.s, sid: d.sid, digestReq: map[int]uint64{}}
		d.of[ev.s], d.bySid[ds.sid] = ds, ds
		if old := d.live[ev.s.id]; old != nil {
			c.log.Warn("duplicate node id refused", "node", ev.s.id)
		} else {
			d.live[ev.s.id] = ds
			c.sessions[ev.s.id] = ev.s
			c.log.Info("node connected", "node", ev.s.id, "ring", ev.s.ring)
			c.dash.Connected(ev.s.id)
		}
		d.step(machine.Event{Kind: machine.Join, Node: ev.s.id, Session: ds.sid, Ring: ev.s.ring, Applied: ev.s.applied})
	case ev.dead != "":
		ds := d.live[ev.dead]
		switch {
		case ds == nil:
		case ev.deadRing != "" && ev.deadRing != ds.s.ring:
			// The machine tells the same apart (issue 11, defect 13).
			c.log.Info("gossip reports an earlier instance dead; its restarted session stays", "node", ev.dead, "dead_ring", ev.deadRing, "ring", ds.s.ring)
		default:
			c.log.Warn("gossip reports node dead", "node", ev.dead)
			d.forget(ds, true)
		}
		d.step(machine.Event{Kind: machine.Lost, Node: ev.dead, Ring: ev.deadRing})
	case ev.err != nil:
		ds := d.of[ev.s]
		if ds == nil {
			return
		}
		delete(d.of, ev.s)
		delete(d.bySid, ds.sid)
		if d.live[ds.s.id] != ds {
			return // released, dropped or refused earlier
		}
		c.log.Warn("session ended", "node", ds.s.id, "err", ev.err)
		d.forget(ds, true)
		d.step(machine.Event{Kind: machine.Lost, Node: ds.s.id, Session: ds.sid})
	case ev.m != nil:
		ds := d.of[ev.s]
		if ds == nil || d.live[ds.s.id] != ds {
			return
		}
		d.receive(ds, ev.m)
	}
}

// forget ends the driver's record of a live session and closes it; lost
// counts it as a loss in the metrics and the dashboard.
func (d *driver) forget(ds *dsess, lost bool) {
	c := d.c
	id := ds.s.id
	delete(d.live, id)
	if c.sessions[id] == ds.s {
		delete(c.sessions, id)
	}
	ds.s.gone = true
	ds.s.cancel()
	if !lost {
		return
	}
	for _, r := range d.ids {
		if r == id {
			d.lostRank = true
		}
	}
	// A transfer from a lost node cannot finish: stop it now rather than
	// at the bulk plane's chunk deadline.
	for _, x := range d.xfer {
		if x.node == id {
			x.cancel()
		}
	}
	c.metrics.lost(id)
	c.dash.Lost(id)
}

// release lets a node go after the machine stopped it (it left, or was
// told to): the stop goes out, and the stream closes when the node hangs
// up or after a grace period.
func (d *driver) release(ds *dsess) {
	delete(d.live, ds.s.id)
	if d.c.sessions[ds.s.id] == ds.s {
		delete(d.c.sessions, ds.s.id)
	}
	ds.s.gone = true
	time.AfterFunc(10*time.Second, ds.s.cancel)
	d.c.log.Info("node left", "node", ds.s.id)
}

// outcome is the run's result as Run returns it: the machine's exit code
// and error, with the advice an operator needs (see noNodes).
func (d *driver) outcome() error {
	code, err := d.m.Outcome()
	if code == machine.ExitOK {
		return nil
	}
	if code == machine.ExitNoNodes {
		err = d.noNodes(err)
	}
	return &Error{Code: code, Err: err}
}

package coordinator

import (
	"context"
	"fmt"
	"time"

	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/coordinator/machine"
)

// transfer is a bulk transfer the driver runs for the machine in a
// goroutine, so that the loop goes on (gossip, sessions, ticks) meanwhile.
type transfer struct {
	req    uint64
	node   string
	cancel context.CancelFunc
	ended  chan struct{}
}

// result is a finished transfer.
type result struct {
	kind  machine.ActionKind
	req   uint64
	step  int
	node  string
	path  string // the checkpoint written
	files int    // the export's files
	start time.Time
	err   error
	disk  bool // err is a local file-system error: retrying cannot help
}

// act carries out one of the machine's actions.
func (d *driver) act(a machine.Action) {
	c := d.c
	switch a.Kind {
	case machine.Committed:
		d.committed(a)
	case machine.Evaluated:
		c.applied = a.Step
		if a.Eval != nil {
			c.reportEval(*a.Eval)
		}
	case machine.WriteCheckpoint:
		c.log.Info("pulling checkpoint", "node", a.Node, "applied", a.Step)
		d.start("checkpoint", a, d.checkpoint)
	case machine.WriteExport:
		d.start("export", a, d.export)
	case machine.Rollback:
		d.rollback(a.Step)
	case machine.Drop:
		ds := d.bySid[a.Session]
		if ds == nil {
			return
		}
		if d.live[ds.s.id] == ds {
			c.log.Warn("node dropped", "node", ds.s.id)
			d.forget(ds, true)
			return
		}
		ds.s.cancel() // a refused duplicate
	default:
		c.log.Error("the protocol machine asked for an unknown action; ignored", "action", a.Kind)
	}
}

// committed accounts step a.Step: the loss, the rate, the displays.
func (d *driver) committed(a machine.Action) {
	c := d.c
	g := a.Step
	c.applied = g + 1
	c.reduced = make(map[string]*control.Reduced, len(a.IDs))
	for k, id := range a.IDs {
		if k < len(a.Reduced) && a.Reduced[k] != nil {
			c.reduced[id] = a.Reduced[k]
		}
	}
	if per, err := c.sched.StepsPerEpoch(); err == nil && (g+1)%per == 0 {
		// The machine checked the epoch's ledger: every sample committed
		// once (it ends the run otherwise).
		n := c.sched.N
		if c.sched.DropLast {
			n = per * c.sched.GlobalBatch
		}
		c.log.Info("epoch complete", "epoch", g/per, "committed", n, "missing", 0, "samples", c.sched.N)
	}
	if testHookCommitted != nil {
		testHookCommitted(g)
	}
	c.account(g)
}

// rollback records that the run went back to step committed steps: the
// newest checkpoint (which the bulk plane then serves), or a state a node
// holds.
func (d *driver) rollback(step int) {
	c := d.c
	undone := c.applied - step
	if path, ok := d.paths[step]; ok {
		c.log.Warn("no node holds the committed state: rolling back to the newest checkpoint", "checkpoint", path, "applied", step, "undone", undone)
		d.serve(step)
	} else if step == 0 {
		c.log.Warn("no node holds the committed state and no checkpoint was written: starting again from the initial state", "undone", undone)
	} else {
		c.log.Warn("no node holds the committed state: rolling back to the newest state a node holds", "applied", step, "undone", undone)
	}
	c.applied = step
}

// start runs f as the transfer of kind for action a; an earlier transfer
// of that kind is superseded: cancelled, and waited for, so that two
// never write the same files.
func (d *driver) start(kind string, a machine.Action, f func(ctx context.Context, a machine.Action) result) {
	d.stop(kind)
	ctx, cancel := context.WithCancel(d.ctx)
	x := &transfer{req: a.Req, node: a.Node, cancel: cancel, ended: make(chan struct{})}
	d.xfer[kind] = x
	go func() {
		defer close(x.ended)
		defer cancel()
		r := f(ctx, a)
		r.kind, r.req, r.step, r.node = a.Kind, a.Req, a.Step, a.Node
		select {
		case d.done <- r:
		case <-d.quit:
		}
	}()
}

// stop cancels the transfer of kind, if any, and waits for it. Its result
// still reaches the loop: d.done holds every running transfer's result.
func (d *driver) stop(kind string) {
	if x := d.xfer[kind]; x != nil {
		x.cancel()
		<-x.ended
		delete(d.xfer, kind)
	}
}

// stopTransfers ends every transfer when the run is over.
func (d *driver) stopTransfers() {
	select {
	case <-d.quit:
		return // stopped already
	default:
	}
	close(d.quit)
	for kind, x := range d.xfer {
		x.cancel()
		<-x.ended
		delete(d.xfer, kind)
	}
}

// finished reports a transfer's outcome to the machine.
func (d *driver) finished(r result) {
	c := d.c
	for kind, x := range d.xfer {
		if x.req == r.req {
			delete(d.xfer, kind)
		}
	}
	ev := machine.Event{Kind: machine.ActionDone, Req: r.req}
	switch {
	case r.err == nil && r.kind == machine.WriteCheckpoint:
		d.paths[r.step] = r.path
		c.lastCkpt = r.path
		c.log.Info("checkpoint written", "path", r.path, "applied", r.step, "from", r.node, "seconds", time.Since(r.start).Seconds())
	case r.err == nil:
		c.log.Info("model written", "dir", c.cfg.Output.Dir, "files", r.files)
	case r.disk:
		ev.Error, ev.Fatal = r.err.Error(), true
	case r.kind == machine.WriteCheckpoint:
		c.log.Warn("checkpoint transfer failed; trying another replica", "node", r.node, "applied", r.step, "err", r.err)
		ev.Error = r.err.Error()
	default:
		c.log.Warn("export transfer failed", "node", r.node, "err", r.err)
		ev.Error = fmt.Sprintf("export from %s: %v", r.node, r.err)
	}
	d.step(ev)
}

// checkpoint streams a.Node's state of a.Step committed steps into a
// checkpoint file (see WriteCheckpointFrom).
func (d *driver) checkpoint(ctx context.Context, a machine.Action) result {
	c := d.c
	cfg := c.cfg
	r := result{start: time.Now()}
	cc, err := bulk.Dial(a.Ring, c.key, c.clientTLS())
	if err != nil {
		r.err = err
		return r
	}
	defer cc.Close()
	path, diskErr, err := pullCheckpoint(ctx, cc, cfg.Checkpoint.Dir, a.Step, cfg.Train.Seed, c.pin, cfg.Checkpoint.Keep, cfg.Cluster.BulkChunkBytes, cfg.Cluster.BulkTimeout)
	if diskErr != nil {
		r.err, r.disk = fmt.Errorf("checkpoint.dir: %w", diskErr), true
		return r
	}
	r.path, r.err = path, err
	return r
}

// export pulls export a.Req's files from a.Node into output.dir (see
// pullDir).
func (d *driver) export(ctx context.Context, a machine.Action) result {
	c := d.c
	r := result{start: time.Now(), files: len(a.Files)}
	diskErr, err := pullDir(ctx, c.cfg.Output.Dir, a.Ring, c.key, c.clientTLS(), int(a.Req), a.Files, c.cfg.Cluster.BulkChunkBytes, c.cfg.Cluster.BulkTimeout)
	if diskErr != nil {
		r.err, r.disk = fmt.Errorf("output.dir: %w", diskErr), true
		return r
	}
	r.err = err
	return r
}

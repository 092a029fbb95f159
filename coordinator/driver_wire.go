package coordinator

import (
	"fmt"
	"time"

	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/coordinator/machine"
	"github.com/ringtune/ringtune/data"
)

// The wire mapping between control.Msg (protocol v3) and machine.Msg.
//
// Request ids: today's agent echoes the request id only in loaded, evalres
// and exported. For ready (joined), reduced, failed and digest the driver
// fills in the id of the request it last sent on that session that the
// reply answers: the last gen for joined, the last step of the same number
// for reduced, the commit (or gen) that asked for a digest of that step
// count, and the last request of any kind for failed. A reply outside any
// generation (set-up, or its failure) carries none. Once the agent echoes
// the id, a reply arrives with it and the fill-in does nothing. The fill-in
// never makes a reply count that the machine would refuse otherwise: the
// machine still checks the generation, the sender's rank and the step.

// receive maps one message of a live session to a machine event.
func (d *driver) receive(ds *dsess, cm *control.Msg) {
	c := d.c
	id := ds.s.id
	mm := machine.Msg{Node: id, Session: ds.sid, Gen: cm.Gen, Req: uint64(max(cm.Req, 0)), Step: cm.Step}
	fill := func(req uint64) {
		if mm.Req == 0 && cm.Gen > 0 {
			mm.Req = req
		}
	}
	switch cm.Type {
	case control.TypeLeave:
		c.log.Info("node asks to leave", "node", id, "in_world", d.inWorld(id))
		if d.inWorld(id) {
			d.leaving[id] = true
		}
		d.step(machine.Event{Kind: machine.Leave, Node: id, Session: ds.sid})
		return
	case control.TypeReady:
		if cm.Ready == nil {
			c.log.Warn("bad message from node", "node", id, "type", cm.Type, "err", "ready without its payload")
			return
		}
		mm.Applied = cm.Ready.Applied
		if cm.Gen == 0 {
			mm.Kind = machine.SetUp
			if !ds.ready {
				c.log.Info("node ready", "node", id, "params", cm.Ready.Params)
			}
			ds.ready = true
		} else {
			mm.Kind = machine.Joined
			fill(ds.genReq)
		}
	case control.TypeReduced:
		mm.Kind, mm.Reduced = machine.Reduced, cm.Reduced
		if cm.Step == ds.step {
			fill(ds.stepReq)
		}
	case control.TypeFailed:
		mm.Kind, mm.Error = machine.Failed, cm.Error
		if cm.Gen == 0 {
			c.log.Error("node failed", "node", id, "err", cm.Error)
		} else {
			c.log.Warn("node reports a failure", "node", id, "gen", cm.Gen, "step", cm.Step, "err", cm.Error)
		}
		fill(ds.lastReq)
	case control.TypeDigest:
		mm.Kind, mm.Sum = machine.Digest, cm.Sum
		if r, ok := ds.digestReq[cm.Step]; ok {
			delete(ds.digestReq, cm.Step)
			fill(r)
		}
		d.sums[cm.Step] = cm.Sum
	case control.TypeEval:
		mm.Kind, mm.Eval = machine.EvalRes, cm.Eval
	case control.TypeLoaded:
		mm.Kind, mm.Error = machine.Loaded, cm.Error
		fill(ds.pullReq)
	case control.TypeExported:
		mm.Kind, mm.Files = machine.Exported, cm.Files
		for _, f := range cm.Files {
			if err := checkExportName(f.Name); err != nil {
				// Refused here: the machine would ask for the transfer.
				c.log.Warn("bad message from node", "node", id, "type", cm.Type, "err", err)
				return
			}
		}
	default:
		c.log.Warn("bad message from node", "node", id, "type", cm.Type, "err", fmt.Sprintf("unexpected message type %q", cm.Type))
		return
	}
	d.step(machine.Event{Kind: machine.Message, Msg: &mm})
}

// send carries one of the machine's messages to its session.
func (d *driver) send(msg machine.Msg) {
	c := d.c
	ds := d.live[msg.Node]
	if ds == nil || ds.sid != msg.Session {
		return // the session ended meanwhile; the machine hears of it
	}
	req := int(msg.Req)
	var cm *control.Msg
	switch msg.Kind {
	case machine.Job:
		cm = &control.Msg{Type: control.TypeJob, Job: c.job}
	case machine.Gen:
		ds.genReq, ds.lastReq = msg.Req, msg.Req
		if msg.Digest {
			ds.digestReq[msg.Applied] = msg.Req
		}
		cm = &control.Msg{Type: control.TypeGen, Gen: msg.Gen, Req: req, Digest: msg.Digest,
			World: &control.World{Generation: msg.Gen, Rank: msg.Rank, Peers: msg.Rings, IDs: msg.IDs, Applied: msg.Applied}}
	case machine.Pull:
		ds.pullReq, ds.lastReq = msg.Req, msg.Req
		p := d.pullFrom(msg.Pull)
		c.log.Info("node pulls state", "node", msg.Node, "applied", msg.Step, "from", p.Addr, "kind", p.Kind)
		cm = &control.Msg{Type: control.TypePull, Gen: msg.Gen, Step: msg.Step, Req: req, Pull: p}
	case machine.Step:
		ds.stepReq, ds.lastReq, ds.step = msg.Req, msg.Req, msg.Step
		if !d.stepped {
			// Throughput and ETA count from the first step, not from the wait.
			d.stepped = true
			c.stats.start = time.Now()
			if c.progress != nil {
				c.progress.start = c.stats.start
			}
		}
		if d.batch.req != msg.Req {
			// Once per step, not per rank: masking costs O(batch).
			enc, pos, err := c.stepSamples(msg.Step, msg.Indices)
			if err != nil {
				d.fatal = err
				return
			}
			d.batch = stepBatch{req: msg.Req, enc: enc, pos: pos}
		}
		bs, err := RankBatches(d.batch.enc, d.batch.pos, msg.World, msg.Rank, c.cfg.Train.MicroBatch, c.task, c.pad)
		if err != nil {
			d.fatal = fmt.Errorf("step %d, rank %d: %w", msg.Step, msg.Rank, err)
			return
		}
		cm = &control.Msg{Type: control.TypeStep, Gen: msg.Gen, Step: msg.Step, Req: req, Batches: bs, Count: msg.Count}
	case machine.Commit:
		if msg.Digest {
			ds.digestReq[msg.Step+1] = msg.Req
		}
		cm = &control.Msg{Type: control.TypeCommit, Gen: msg.Gen, Step: msg.Step, Req: req, Count: msg.Count, Digest: msg.Digest}
	case machine.Abort:
		cm = &control.Msg{Type: control.TypeAbort, Gen: msg.Gen, Step: msg.Step, Req: req}
	case machine.Eval:
		ds.lastReq = msg.Req
		idx := make([]int, len(c.eval))
		for i := range idx {
			idx[i] = i
		}
		bs, err := RankBatches(c.eval, idx, msg.World, msg.Rank, c.cfg.Train.MicroBatch, c.task, c.pad)
		if err != nil {
			d.fatal = fmt.Errorf("evaluation, rank %d: %w", msg.Rank, err)
			return
		}
		cm = &control.Msg{Type: control.TypeEvalReq, Gen: msg.Gen, Step: msg.Step, Req: req, Batches: bs}
	case machine.Export:
		ds.lastReq = msg.Req
		cm = &control.Msg{Type: control.TypeExport, Gen: msg.Gen, Req: req}
	case machine.Stop:
		if d.m.Phase() == machine.Done {
			// Run's stopAll tells every node, with the error Run returns.
			return
		}
		cm = &control.Msg{Type: control.TypeStop, Reason: "left on request", Error: msg.Error}
		ds.s.send(cm)
		d.release(ds)
		return
	default:
		c.log.Error("the protocol machine sent a message of an unknown kind; dropped", "kind", msg.Kind, "node", msg.Node)
		return
	}
	ds.s.send(cm)
}

// stepBatch is the step in flight's samples (masked for masked LM), cut
// into every rank's micro-batches.
type stepBatch struct {
	req uint64
	enc []data.Encoded
	pos []int
}

// pullFrom is the bulk source a stale rank loads the committed state from.
func (d *driver) pullFrom(p *machine.PullFrom) *control.Pull {
	if p.Kind != machine.PullCheckpoint {
		return &control.Pull{Addr: p.Ring, Kind: bulk.KindState, Step: p.Step}
	}
	out := &control.Pull{Addr: d.c.grpcAddr, Kind: bulk.KindCheckpoint, Step: p.Step}
	if ck := d.serve(p.Step); ck != nil {
		out.SHA256 = ck.SHA256
	}
	return out
}

// serve makes the bulk plane serve the checkpoint of step committed steps
// (the one --resume loaded, or one this run wrote), verifying it first.
func (d *driver) serve(step int) *Checkpoint {
	c := d.c
	if ck := c.served.Load(); ck != nil && ck.Applied == step {
		return ck
	}
	path, ok := d.paths[step]
	if !ok {
		c.log.Warn("no checkpoint of this step to serve; the pull will fail", "applied", step)
		return nil
	}
	ck, err := VerifyCheckpoint(path)
	if err != nil {
		c.log.Warn("the checkpoint to serve is unreadable; the pull will fail", "checkpoint", path, "err", err)
		return nil
	}
	c.resumed = ck
	c.served.Store(ck)
	return ck
}

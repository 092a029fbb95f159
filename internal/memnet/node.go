package memnet

// The node's driver: the work an agent machine asks for, done with a fake
// trainer (a hash chain), a fake ring and the other nodes' states.

import (
	"fmt"

	"github.com/ringtune/ringtune/control"
	cm "github.com/ringtune/ringtune/coordinator/machine"
	am "github.com/ringtune/ringtune/node/agent/machine"
)

// done answers nd's busy work id at tick t, unless the process or its
// work changed meanwhile.
func (n *Net) done(nd *Node, t int64, ev am.Event) {
	inst, id := nd.Inst, ev.ID
	nd.work = id
	n.later(t, func() {
		if nd.Alive && nd.Inst == inst && nd.work == id {
			nd.work = 0
			ev.Kind = am.WorkDone
			n.agent(nd, ev)
		}
	})
}

// do is the node's driver doing work for its machine with the fake
// trainer.
func (n *Net) do(nd *Node, w am.Work) {
	switch w.Kind {
	case am.Connect:
		inst := nd.Inst
		n.later(n.delay(2, 8), func() {
			if nd.Alive && nd.Inst == inst && nd.Session == 0 {
				n.connect(nd)
			}
		})
	case am.EndSession:
		n.endSession(nd, nd.Session, "")
	case am.SetUpTrainer:
		if nd.held < 0 {
			nd.state, nd.held = InitState, 0
		}
		n.done(nd, n.delay(1, 4), am.Event{ID: w.ID, Applied: nd.held})
	case am.JoinGen:
		n.done(nd, n.delay(0, 1), am.Event{ID: w.ID, Applied: nd.held})
	case am.RunStep:
		idx, _ := w.Payload.([]int)
		nd.batch = idx
		k := [2]uint64{w.Gen, w.Req}
		nd.ringKey, nd.work = k, w.ID
		inst, id := nd.Inst, w.ID
		n.later(n.delay(1, 5), func() {
			if !nd.Alive || nd.Inst != inst || nd.work != id {
				return
			}
			n.rings[k] = append(n.rings[k], nd)
			if len(n.rings[k]) < w.World {
				return // the all-reduce waits for every rank
			}
			for r, p := range n.rings[k] {
				if p.Alive && p.ringKey == k && p.work != 0 {
					c := share(w.Count, w.World, r)
					n.done(p, n.now, am.Event{ID: p.work, Payload: &control.Reduced{Count: c, Samples: c}})
				}
			}
			delete(n.rings, k)
		})
	case am.CancelStep:
		if nd.ringKey[0] == w.Gen && nd.work != 0 {
			n.done(nd, n.now, am.Event{ID: nd.work, Error: "all-reduce cancelled: the coordinator aborted the step"})
		}
	case am.Apply:
		b, ok := n.batches[w.Step]
		if !ok {
			n.fail("%s applies step %d, which was never sent", nd.ID, w.Step)
			return
		}
		if nd.held != w.Step {
			n.fail("%s applies step %d holding %d committed steps", nd.ID, w.Step, nd.held)
			return
		}
		nd.state, nd.held = StepState(nd.state, w.Step, b), w.Step+1
		n.done(nd, n.delay(0, 1), am.Event{ID: w.ID})
	case am.Discard:
	case am.LoadState:
		from, _ := w.Payload.(*cm.PullFrom)
		ev := am.Event{ID: w.ID}
		switch {
		case from == nil:
			n.fail("%s: pull without a source", nd.ID)
			return
		case from.Kind == cm.PullCheckpoint:
			st, ok := n.Disk[from.Step]
			if !ok {
				n.fail("%s pulls the checkpoint of step %d, which was never written", nd.ID, from.Step)
				return
			}
			nd.state, nd.held = st, from.Step
		default:
			src := n.Nodes[from.Node]
			if src == nil || !src.Alive || n.ring(src) != from.Ring || src.held != from.Step {
				ev.Error = "source gone or moved on"
				nd.held = -1
			} else {
				nd.state, nd.held = src.state, src.held
			}
		}
		n.done(nd, n.delay(1, 5), ev)
	case am.Evaluate:
		n.done(nd, n.delay(1, 3), am.Event{ID: w.ID, Payload: &control.EvalSums{Count: 1}})
	case am.WriteExport:
		n.done(nd, n.delay(1, 3), am.Event{ID: w.ID, Payload: []control.FileInfo{{Name: "model.safetensors", Size: 1}}})
	case am.ComputeDigest:
		n.done(nd, n.now, am.Event{ID: w.ID, Sum: fmt.Sprintf("%016x", nd.state)})
	default:
		n.fail("%s: unknown work %s", nd.ID, w)
	}
}

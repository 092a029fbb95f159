package memnet

// The coordinator's driver: the actions its machine asks for (commits
// recorded, checkpoints read from a replica, exports, dropped sessions),
// and its restart with --resume.

import (
	"fmt"
	"slices"

	cm "github.com/ringtune/ringtune/coordinator/machine"
	am "github.com/ringtune/ringtune/node/agent/machine"
)

// action is the coordinator's driver doing what its machine asked.
func (n *Net) action(a cm.Action) {
	if n.Log != nil { // boxing a message for a log nobody reads is a 1,000-node run's hot allocation
		n.logf("coordinator action %s", a)
	}
	switch a.Kind {
	case cm.Committed:
		got := n.reduced[[2]uint64{a.Gen, a.Req}]
		for _, id := range a.IDs {
			if !got[id] {
				n.fail("step %d committed without rank %s's reduced report", a.Step, id)
			}
		}
		if a.Step != len(n.Lineage) {
			n.fail("step %d committed after %d committed steps", a.Step, len(n.Lineage))
		}
		n.Lineage = append(n.Lineage, Commit{Step: a.Step, Indices: slices.Clone(a.Indices)})
	case cm.Rollback:
		if a.Step > len(n.Lineage) {
			n.fail("rollback to step %d after %d committed steps", a.Step, len(n.Lineage))
			return
		}
		n.Lineage = n.Lineage[:a.Step]
	case cm.WriteCheckpoint:
		// The transfer reads the state once the source has applied the
		// step (the commit may still be on its way to it), as a node's
		// bulk service does; it fails when the source dies or moves on.
		src := n.Nodes[a.Node]
		inst := 0
		if src != nil {
			inst = src.Inst
		}
		tries := 0
		inc := n.inc
		var read func()
		read = func() {
			switch {
			case n.inc != inc:
				// The coordinator died before the file was complete.
			case src == nil || !src.Alive || src.Inst != inst || src.held > a.Step:
				n.coord(cm.Event{Kind: cm.ActionDone, Req: a.Req, Error: "source lost or moved on"})
			case src.held < a.Step && tries < 20:
				tries++
				n.later(n.delay(1, 3), read)
			case src.held < a.Step:
				n.coord(cm.Event{Kind: cm.ActionDone, Req: a.Req, Error: "the source never applied the step"})
			default:
				n.Disk[a.Step] = src.state
				n.coord(cm.Event{Kind: cm.ActionDone, Req: a.Req})
			}
		}
		n.later(n.delay(1, 6), read)
	case cm.WriteExport:
		n.coordAt(n.delay(1, 6), cm.Event{Kind: cm.ActionDone, Req: a.Req})
	case cm.Drop:
		if nd := n.Nodes[a.Node]; nd != nil {
			n.endSession(nd, a.Session, "the coordinator dropped the session")
		}
	}
}

// RestartCoordinator kills the coordinator and starts it again with
// --resume from the newest checkpoint, under the live nodes: their
// sessions break, and they join again with the state their trainers hold
// (issue 11, defect 10). The steps committed after the checkpoint are
// undone.
func (n *Net) RestartCoordinator() error {
	newest := -1
	for k := range n.Disk {
		newest = max(newest, k)
	}
	if newest < 0 {
		return fmt.Errorf("memnet: no checkpoint to resume from")
	}
	cfg := n.Cfg
	cfg.Resumed = newest
	c, err := cm.New(cfg)
	if err != nil {
		return fmt.Errorf("memnet: restart with --resume from step %d: %w", newest, err)
	}
	n.logf("coordinator restarts from the checkpoint of step %d", newest)
	n.inc++
	n.Coord = c
	if newest > len(n.Lineage) {
		return fmt.Errorf("memnet: checkpoint of step %d beyond the %d committed steps", newest, len(n.Lineage))
	}
	n.Lineage = n.Lineage[:newest]
	// Generations and request ids start again.
	n.reduced = map[[2]uint64]map[string]bool{}
	n.rings = map[[2]uint64][]*Node{}
	n.genInst = map[uint64]map[string]int{}
	for _, nd := range n.order {
		if !nd.Alive || nd.Session == 0 {
			continue
		}
		delete(n.byS, nd.Session)
		nd.Session = 0
		inst := nd.Inst
		n.later(n.delay(0, 2), func() {
			if nd.Alive && nd.Inst == inst {
				n.agent(nd, am.Event{Kind: am.Lost, Error: "the coordinator closed the session"})
			}
		})
	}
	return nil
}

package machine

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// onJoin opens a node's session and sends it the job; a second live
// session under one id is refused.
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

// onLost handles a session's end or a gossip death, telling an earlier
// session's or instance's end from the live one's.
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
	if n.ready && !n.leaving {
		m.nReady--
	}
	if n.leaving {
		m.nLeaving--
	}
	if react && m.bgReq != 0 && n.id == m.bgNode {
		defer m.bgSourceLost(n) // once n holds no rank: not a replica to retry
	}
	// A node that failed to set up stays counted after its session ends
	// (the agent exits on the failure): the next node's failure then
	// still ends the run.
	if n.rank < 0 {
		if m.gen == 0 {
			m.checkSetupFailures()
		}
		return
	}
	k := n.rank
	n.rank = -1
	m.nRanked--
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

// bgSourceLost moves the background checkpoint on from its lost source; a
// held step is aborted for its lost rank (lose) or, when none was left to
// wait on, commits.
func (m *Machine) bgSourceLost(n *node) {
	if m.phase == Done || m.bgReq == 0 || m.bgNode != n.id {
		return
	}
	m.note("checkpoint source %s lost; trying another replica", n.id)
	m.bgReq = 0
	if !m.tryBackground() {
		m.releaseHeld()
	}
}

// onLeave handles a node announcing it leaves (SIGTERM).
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
	if !n.leaving {
		n.leaving = true
		m.nReady-- // a rank is set up
		m.nLeaving++
	}
	m.note("rank %d (%s) leaves at the next step boundary", n.rank, n.id)
}

// candidates lists the set-up nodes that may enter a world, the holders of
// the committed state first, then by id.
func (m *Machine) candidates() []*node {
	out := make([]*node, 0, m.nReady)
	for _, n := range m.nodes {
		if n.ready && !n.leaving {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *node) int {
		ha, hb := a.applied == m.applied, b.applied == m.applied
		if ha != hb {
			if ha {
				return -1
			}
			return 1
		}
		return strings.Compare(a.id, b.id)
	})
	return out
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

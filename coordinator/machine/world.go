package machine

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// enterWaiting dissolves the world (its ranks become candidates again, its
// leaving ranks are stopped) and waits for nodes with WaitTicks' deadline.
func (m *Machine) enterWaiting() {
	for _, n := range m.world {
		n.rank = -1
	}
	m.nRanked = 0
	m.world, m.ids, m.broken, m.round, m.action, m.actNode, m.drain, m.exported = nil, nil, false, nil, 0, "", false, false
	// Digests still owed by the dissolved generation can never complete:
	// the next commit asks again.
	if len(m.pending) > 0 {
		m.note("digests of steps %v dropped with generation %d; the next commit asks for digests", m.pendingSteps(), m.gen)
		m.owed = true
	}
	clear(m.pending)
	for _, id := range m.leavingIDs() {
		m.note("node %s left", id)
		m.send(Msg{Kind: Stop, Node: id})
		m.lose(m.nodes[id], false)
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
	// This runs on every event while waiting: the count is kept, not
	// recounted.
	if m.nReady < need {
		return
	}
	c := m.candidates()
	if max := m.cfg.MaxNodes; max > 0 && len(c) > max {
		c = c[:max]
	}
	slices.SortFunc(c, func(a, b *node) int { return strings.Compare(a.id, b.id) })
	m.form(c)
}

// form freezes a generation of members (in rank order) and asks each to
// join it under one request id.
func (m *Machine) form(members []*node) {
	m.gen++
	m.world = members
	m.nRanked = len(members)
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
	m.changed = m.now // settle first, as after an aborted step
	m.enterWaiting()
}

// needReform reports whether the world must change at this boundary: it
// lost a rank, a rank is leaving, or a ready node could enter it.
func (m *Machine) needReform() bool {
	if m.gen == 0 || m.broken || len(m.world) == 0 {
		return true
	}
	if m.nLeaving > 0 {
		return true // only ranks leave (onLeave)
	}
	if max := m.cfg.MaxNodes; max > 0 && len(m.world) >= max {
		return false
	}
	if m.now-m.changed < m.cfg.SettleTicks {
		return false
	}
	// A set-up node outside the world, a late joiner, enters at the step
	// boundary. Every rank is set up, and none is leaving here, so the
	// set-up nodes outside the world are nReady - nRanked.
	return m.nReady > m.nRanked
}

// leavingIDs lists the leaving nodes, sorted (deterministic output); it
// scans the nodes only when one is leaving.
func (m *Machine) leavingIDs() []string {
	if m.nLeaving == 0 {
		return nil
	}
	var ids []string
	for id, n := range m.nodes {
		if n.leaving {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
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

// onDeadline acts on the current phase's deadline: every wait ends, with
// a decision, at a known tick.
func (m *Machine) onDeadline() {
	switch m.phase {
	case Waiting:
		need := m.cfg.MinNodes
		if m.gen > 0 {
			need = 1
		}
		m.fail(ExitNoNodes, "waited %d ticks for %d set-up node(s), have %d", m.cfg.WaitTicks, need, len(m.candidates()))
	case Training:
		if m.held() {
			// Past the transfer's deadline too: backgroundTimeout, which
			// runs first on the same tick, has moved it on.
			m.deadline = max(m.bgDeadline, m.now+1)
			return
		}
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
		if m.exported {
			// Waiting for the final checkpoint: backgroundTimeout, which
			// runs first on the same tick, has moved it on.
			m.deadline = max(m.bgDeadline, m.now+1)
			return
		}
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

// pendingSteps lists the step counts whose digests are still owed.
func (m *Machine) pendingSteps() []int {
	var s []int
	for k := range m.pending {
		s = append(s, k)
	}
	sort.Ints(s)
	return s
}

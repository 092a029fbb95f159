package machine

import (
	"errors"
	"fmt"
	"strings"
)

// onMsg takes a node's message, only from that node's live session.
func (m *Machine) onMsg(msg *Msg) {
	n := m.nodes[msg.Node]
	if n == nil || n.session != msg.Session {
		m.note("%s from %s (session %d) dropped: no such live session", msg.Kind, msg.Node, msg.Session)
		return
	}
	if err := m.apply(n, msg); err != nil {
		m.note("%s from %s dropped: %v", msg.Kind, msg.Node, err)
	}
}

// apply checks msg against the phase, the outstanding request, the sender
// and the generation before it touches any state.
func (m *Machine) apply(n *node, msg *Msg) error {
	switch msg.Kind {
	case SetUp:
		// Restarted under its name after a failed set-up, it set up.
		delete(m.setupFailed, n.id)
		if n.ready {
			return errors.New("a second set-up message on one session")
		}
		n.ready, n.applied = true, msg.Applied
		m.nReady++ // a node leaves only once it has a rank
		m.changed = m.now
		return nil
	case Failed:
		if msg.Gen == 0 && msg.Req == 0 {
			m.setupFailed[n.id] = msg.Error
			m.checkSetupFailures()
			return nil
		}
		return m.onReply(n, msg)
	case Joined, Loaded, Reduced, EvalRes, Exported:
		return m.onReply(n, msg)
	case Digest:
		return m.onDigest(n, msg)
	}
	return fmt.Errorf("unexpected message kind %s", msg.Kind)
}

// onReply matches a reply to the outstanding round.
func (m *Machine) onReply(n *node, msg *Msg) error {
	r := m.round
	if r == nil {
		return fmt.Errorf("no request outstanding in phase %s", m.phase)
	}
	if msg.Kind != r.reply && msg.Kind != Failed {
		return fmt.Errorf("%s while the outstanding request %d expects %s", msg.Kind, r.req, r.reply)
	}
	k := n.rank
	if err := r.check(k, msg); err != nil {
		return err
	}
	if msg.Kind == Failed {
		why := msg.Error
		if why == "" {
			why = "failed (no reason given)" // an empty reason must not read as success
		}
		r.failRank(k, why)
		if m.phase == Training {
			m.abortStep(fmt.Sprintf("rank %d (%s): %s", k, n.id, why))
		} else {
			m.phaseFailed(fmt.Sprintf("rank %d (%s): %s", k, n.id, why))
		}
		return nil
	}
	switch msg.Kind {
	case Joined:
		n.applied = msg.Applied
	case Loaded:
		if msg.Error != "" {
			n.applied = -1
			r.failRank(k, msg.Error)
			m.phaseFailed(fmt.Sprintf("rank %d (%s) could not load the state: %s", k, n.id, msg.Error))
			return nil
		}
		if msg.Step != m.applied {
			return fmt.Errorf("loaded the state of step %d, the committed step is %d", msg.Step, m.applied)
		}
		n.applied = m.applied
	case Reduced:
		if msg.Reduced == nil {
			return errors.New("reduced without its report")
		}
		r.reduced[k] = msg.Reduced
	case EvalRes:
		if msg.Eval == nil {
			return errors.New("evaluation result without sums")
		}
		r.eval.Add(*msg.Eval)
	case Exported:
		r.succeed(k)
		m.round = nil
		m.action, m.actNode = r.req, n.id
		m.act(Action{Kind: WriteExport, Req: r.req, Step: m.applied, Node: n.id, Session: n.session, Ring: n.ring, Files: msg.Files})
		m.setPhase(Exporting, m.cfg.ExportTicks)
		return nil
	}
	r.succeed(k)
	if !r.complete() {
		return nil
	}
	switch r.reply {
	case Joined:
		m.sync()
	case Loaded:
		m.next()
	case Reduced:
		m.commit()
	case EvalRes:
		m.fails = 0
		m.lastEval, m.evalDue = m.applied, false
		sums := r.eval
		m.act(Action{Kind: Evaluated, Step: m.applied, Req: r.req, Eval: &sums})
		m.next()
	}
	return nil
}

// onDigest records a rank's parameter digest after a commit that asked
// for it; once every rank sent one, a mismatch ends the run (exit 3).
func (m *Machine) onDigest(n *node, msg *Msg) error {
	if msg.Gen != m.gen {
		return fmt.Errorf("stale message from %s: generation %d, current generation is %d", n.id, msg.Gen, m.gen)
	}
	d := m.pending[msg.Step]
	switch {
	case n.rank < 0:
		return fmt.Errorf("digest from %s, which is not a rank of generation %d", n.id, m.gen)
	case d == nil:
		return fmt.Errorf("digest after step %d, which no digest was asked for", msg.Step)
	case msg.Req != d.req:
		return fmt.Errorf("digest answers request %d, the commit asked with %d", msg.Req, d.req)
	case d.sums[n.rank] != "":
		return fmt.Errorf("second digest after step %d", msg.Step)
	}
	d.sums[n.rank] = msg.Sum
	d.n++
	if d.n < len(d.sums) {
		return nil
	}
	delete(m.pending, msg.Step)
	var bad []string
	for k := 1; k < len(d.sums); k++ {
		if d.sums[k] != d.sums[0] {
			bad = append(bad, fmt.Sprintf("rank %d (%s) has %.16s", k, m.ids[k], d.sums[k]))
		}
	}
	if len(bad) > 0 {
		m.fail(ExitDiverged, "replicas diverged after %d committed steps: rank 0 (%s) has parameter digest %.16s but %s", msg.Step, m.ids[0], d.sums[0], strings.Join(bad, ", "))
		return nil
	}
	m.note("replicas identical after %d steps", msg.Step)
	if m.drain && len(m.pending) == 0 {
		m.drain = false
		m.next()
	}
	return nil
}

package machine

import (
	"github.com/ringtune/ringtune/control"
)

// commit is where a step commits, and the only place: the step round is
// complete (every rank of the generation reported the step reduced: the
// commit rule), the ranks' loss counts add up to the step's divisor, and
// the schedule's ledger takes the step's samples for good. Every rank is
// told to apply it; evaluations and checkpoints that fall due wait for the
// next boundary.
func (m *Machine) commit() {
	if m.bgReq != 0 {
		m.hold()
		return
	}
	r := m.round
	m.round = nil
	g := r.step
	n := 0
	for _, red := range r.reduced {
		n += red.Count
	}
	if n != m.count {
		// The data side and the model count targets differently; every
		// update would be scaled wrongly without any other sign.
		m.fail(ExitFailure, "step %d: the ranks counted %d loss targets but the step's divisor is %d: the coordinator's data and the nodes' model disagree on what a target is (a bug; report it with the dataset's format and data.pack)", g, n, m.count)
		return
	}
	epochDone, err := m.sched.commit(g)
	if err != nil {
		m.fail(ExitFailure, "step %d: %v", g, err)
		return
	}
	m.applied = g + 1
	m.fails = 0
	every := m.cfg.DigestEvery
	digest := every > 0 && (m.applied%every == 0 || m.owed)
	if digest {
		m.owed = false
		m.pending[m.applied] = &digests{gen: r.gen, req: r.req, sums: make([]string, len(m.world))}
	}
	m.reserve(2 * len(m.world)) // the commits, then the next step's messages
	for _, nd := range m.world {
		m.send(Msg{Kind: Commit, Node: nd.id, Gen: r.gen, Req: r.req, Step: g, Count: m.count, Digest: digest})
		// The node applies it on receipt.
		nd.applied = m.applied
	}
	m.act(Action{Kind: Committed, Gen: r.gen, IDs: m.ids, Step: g, Req: r.req, Indices: m.batch.Fresh(), Reduced: append([]*control.Reduced(nil), r.reduced...)})
	c := m.cfg
	if c.HasEval && ((c.EvalEvery > 0 && m.applied%c.EvalEvery == 0) || (c.EvalEvery == 0 && epochDone)) {
		m.evalDue = true
	}
	if c.CheckpointEvery > 0 && m.applied%c.CheckpointEvery == 0 && m.applied < m.sched.total {
		m.ckptDue = true
	}
	m.next()
}

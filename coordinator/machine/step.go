package machine

// startStep sends every rank the committed step's batch under a fresh
// request id.
func (m *Machine) startStep() {
	g := m.applied
	b, err := m.sched.begin(g)
	if err != nil {
		m.fail(ExitFailure, "step %d: %v", g, err)
		return
	}
	m.batch, m.count = b, m.cfg.CountOf(g, b.Indices)
	req := m.nextReq()
	m.reserve(len(m.world))
	for k, n := range m.world {
		m.send(Msg{Kind: Step, Node: n.id, Gen: m.gen, Req: req, Step: g, Rank: k, World: len(m.world), Indices: b.Indices, Count: m.count})
	}
	m.round = newRound(Reduced, m.gen, req, g, len(m.world), nil)
	m.setPhase(Training, m.cfg.StepTicks)
}

// abortStep drops the step in flight: its samples go back to the schedule,
// the live ranks are told at once (so that they cancel their all-reduce),
// and a new generation forms.
func (m *Machine) abortStep(why string) {
	r := m.round
	m.round = nil
	if err := m.sched.abort(r.step); err != nil {
		m.fail(ExitFailure, "step %d: %v", r.step, err)
		return
	}
	for _, n := range m.world {
		if n.rank >= 0 {
			m.send(Msg{Kind: Abort, Node: n.id, Gen: r.gen, Req: r.req, Step: r.step})
		}
	}
	m.fails++
	m.note("step %d aborted in generation %d: %s", r.step, r.gen, why)
	if m.fails >= m.cfg.MaxAborts {
		m.fail(ExitFailure, "step %d aborted %d times in a row, last: %s", r.step, m.fails, why)
		return
	}
	m.broken = true
	// A failed rank's ring broke under the others too: its loss (or
	// theirs) is usually on its way. Settle before the next generation
	// rather than form one with a rank about to be lost.
	m.changed = m.now
	m.next()
}

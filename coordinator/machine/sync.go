package machine

// sync brings the world's stale ranks to the committed state. The source
// is a rank that holds it; else the newest checkpoint when it holds exactly
// the committed step (a checkpoint of an older step is never sent as the
// current one: defect 1); else, when no node holds the state any more, the
// run rolls back to the newest checkpoint (defect 11).
func (m *Machine) sync() {
	var stale []int
	src := -1
	for k, n := range m.world {
		if n.applied == m.applied {
			if src < 0 {
				src = k
			}
		} else {
			stale = append(stale, k)
		}
	}
	if len(stale) == 0 {
		m.next()
		return
	}
	var from PullFrom
	switch {
	case src >= 0:
		s := m.world[src]
		from = PullFrom{Kind: PullState, Node: s.id, Ring: s.ring, Step: m.applied}
	case m.ckpt == m.applied:
		from = PullFrom{Kind: PullCheckpoint, Step: m.applied}
	case m.rollbackTo() >= 0:
		to := m.rollbackTo()
		if to == m.ckpt {
			m.note("no node holds the state of step %d: rolling back to the checkpoint of step %d", m.applied, to)
		} else {
			m.note("no node holds the state of step %d: rolling back to step %d, which a rank holds", m.applied, to)
		}
		m.act(Action{Kind: Rollback, Step: to})
		m.applied = to
		m.sched.reset()
		m.evalDue, m.ckptDue, m.ckptAt = false, false, -1
		clear(m.pending)
		m.sync()
		return
	default:
		m.fail(ExitNoNodes, "no node holds the state of step %d (every node that did is gone) and no checkpoint of it was written; restart the run with --resume from the newest checkpoint", m.applied)
		return
	}
	req := m.nextReq()
	isStale := make([]bool, len(m.world))
	for _, k := range stale {
		isStale[k] = true
		p := from
		m.send(Msg{Kind: Pull, Node: m.world[k].id, Gen: m.gen, Req: req, Step: m.applied, Pull: &p})
	}
	m.round = newRound(Loaded, m.gen, req, m.applied, len(m.world), func(k int) bool { return isStale[k] })
	m.setPhase(Syncing, m.cfg.SyncTicks)
}

// rollbackTo is the step count the run can roll back to when no rank holds
// the committed state: the newest of the newest checkpoint and the states
// the ranks hold (each a state of this run's committed steps: a rank that
// missed the last commits, or a fresh node's initial state, which is a
// function of the job). -1: none.
func (m *Machine) rollbackTo() int {
	best := -1
	if m.ckpt < m.applied {
		best = m.ckpt
	}
	for _, n := range m.world {
		if n.applied >= 0 && n.applied < m.applied && n.applied > best {
			best = n.applied
		}
	}
	return best
}

package machine

// startEval asks every rank to score its shard of the evaluation set.
func (m *Machine) startEval() {
	req := m.nextReq()
	for k, n := range m.world {
		m.send(Msg{Kind: Eval, Node: n.id, Gen: m.gen, Req: req, Step: m.applied, Rank: k, World: len(m.world)})
	}
	m.round = newRound(EvalRes, m.gen, req, m.applied, len(m.world), nil)
	m.setPhase(Evaluating, m.cfg.EvalTicks)
}

// startCheckpoint writes the checkpoint of the committed step from one
// replica, trying the others in rank order when a transfer fails; when
// none can deliver it, the checkpoint is skipped and the run goes on (a
// checkpoint is insurance, not a reason to stop training).
func (m *Machine) startCheckpoint() {
	m.ckptAt, m.ckptDue, m.ckptTry = m.applied, false, 0
	m.tryCheckpoint()
}

// tryCheckpoint asks the driver for the checkpoint from the next replica
// that holds the committed step, or skips it when none is left.
func (m *Machine) tryCheckpoint() {
	for ; m.ckptTry < len(m.world); m.ckptTry++ {
		src := m.world[m.ckptTry]
		if src.rank < 0 || src.applied != m.applied {
			continue
		}
		m.ckptTry++
		m.action, m.actNode = m.nextReq(), src.id
		m.ckptReqs[m.action] = m.applied
		m.act(Action{Kind: WriteCheckpoint, Req: m.action, Step: m.applied, Node: src.id, Session: src.session, Ring: src.ring})
		m.setPhase(Checkpointing, m.cfg.CheckpointTicks)
		return
	}
	m.note("checkpoint of step %d skipped: no replica could deliver it; the run goes on", m.applied)
	m.next()
}

// startExport asks rank 0 to write the model.
func (m *Machine) startExport() {
	src := m.world[0]
	req := m.nextReq()
	m.send(Msg{Kind: Export, Node: src.id, Gen: m.gen, Req: req, Step: m.applied})
	m.round = newRound(Exported, m.gen, req, m.applied, len(m.world), func(k int) bool { return k == 0 })
	m.setPhase(Exporting, m.cfg.ExportTicks)
}

// onActionDone takes the outcome of the driver's outstanding action; the
// late success of an abandoned checkpoint still counts (see below).
func (m *Machine) onActionDone(ev Event) {
	step, isCkpt := m.ckptReqs[ev.Req]
	delete(m.ckptReqs, ev.Req)
	if isCkpt && ev.Req != m.action && ev.Error == "" && step > m.ckpt && step <= m.applied {
		// A checkpoint finished after its phase was given up (its source
		// was lost once the state was read): the file is on disk and
		// complete, so it is the newest one to roll back to.
		m.ckpt = step
		m.note("checkpoint of step %d written after its phase was given up", step)
		return
	}
	if ev.Req == 0 || ev.Req != m.action {
		m.note("outcome of action %d dropped: the outstanding action is %d", ev.Req, m.action)
		return
	}
	if ev.Error != "" {
		switch {
		case ev.Fatal:
			m.fail(ExitFailure, "%s of step %d: %s", m.phase, m.applied, ev.Error)
		case m.phase == Checkpointing:
			m.note("checkpoint transfer from %s failed; trying another replica: %s", m.actNode, ev.Error)
			m.tryCheckpoint()
		default:
			m.phaseFailed(ev.Error)
		}
		return
	}
	m.fails = 0
	switch m.phase {
	case Checkpointing:
		m.ckpt = m.applied
		m.note("checkpoint of step %d written from %s", m.applied, m.actNode)
		m.next()
	case Exporting:
		m.finish(ExitOK, nil)
	}
}

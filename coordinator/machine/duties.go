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
//
// With Config.CheckpointBackground a checkpoint due between two steps runs
// in the background of the next one: the state of step s changes only
// when step s+1 is applied, so the next step starts at once and only its
// commit waits until the transfer ended (hold). Every replica then still
// holds step s when a retry picks another one, and a checkpoint costs the
// run what its transfer takes beyond one step's forward and backward,
// instead of all of it. (Nodes also end any read of their state before
// they change it, so no transfer ever sees a step half applied.) The
// final checkpoint runs beside the export instead: both read the final
// state, and the run ends when both are written.
func (m *Machine) startCheckpoint() {
	m.ckptAt, m.ckptDue, m.ckptTry, m.ckptOff = m.applied, false, 0, 0
	if m.cfg.CheckpointBackground {
		if m.applied == m.sched.total && len(m.world) > 1 {
			// Rank 0 writes the export meanwhile: read the final
			// checkpoint from another rank first (another host's CPU,
			// disk and network, in a real cluster).
			m.ckptOff = 1
		}
		m.tryBackground()
		m.next()
		return
	}
	m.tryCheckpoint()
}

// tryBackground starts the background checkpoint's transfer from the next
// replica holding its step and reports whether it did. When none is left
// the checkpoint is skipped; when the world dissolved meanwhile, it is
// due again at the next boundary instead (no step committed since, so it
// still writes step ckptAt, from the new generation's replicas).
func (m *Machine) tryBackground() bool {
	for ; m.ckptTry < len(m.world); m.ckptTry++ {
		src := m.world[(m.ckptTry+m.ckptOff)%len(m.world)]
		if src.rank < 0 || src.applied != m.ckptAt {
			continue
		}
		m.ckptTry++
		m.bgReq, m.bgNode, m.bgDeadline = m.nextReq(), src.id, m.now+m.cfg.CheckpointTicks
		m.ckptReqs[m.bgReq] = m.ckptAt
		m.act(Action{Kind: WriteCheckpoint, Req: m.bgReq, Step: m.ckptAt, Node: src.id, Session: src.session, Ring: src.ring})
		if m.held() {
			m.deadline = m.bgDeadline
		}
		return true
	}
	m.bgReq, m.bgNode = 0, ""
	if len(m.world) == 0 && m.applied == m.ckptAt {
		m.ckptDue, m.ckptTry = true, 0
		m.note("checkpoint of step %d: no replica to read it from while the world re-forms; it starts again once a generation formed", m.ckptAt)
		return false
	}
	m.note("checkpoint of step %d skipped: no replica could deliver it; the run goes on", m.ckptAt)
	return false
}

// held reports whether a step's round is complete and its commit waits
// for the background checkpoint.
func (m *Machine) held() bool {
	return m.phase == Training && m.round != nil && m.round.reply == Reduced && m.round.complete()
}

// hold keeps the complete step round uncommitted until the background
// checkpoint's transfer ends (releaseHeld); meanwhile the phase waits on
// the transfer's deadline, not the step's.
func (m *Machine) hold() {
	m.note("commit of step %d waits for the checkpoint (applied %d) that %s is writing in the background", m.round.step, m.ckptAt, m.bgNode)
	m.deadline = m.bgDeadline
}

// releaseHeld commits the held step, if any, once no background
// checkpoint is in flight; or ends the run whose model is written.
func (m *Machine) releaseHeld() {
	switch {
	case m.bgReq != 0:
	case m.held():
		m.commit()
	case m.exported && m.phase == Exporting:
		m.finish(ExitOK, nil)
	}
}

// backgroundDone takes the outcome of the background checkpoint's
// transfer.
func (m *Machine) backgroundDone(ev Event) {
	step, src := m.ckptAt, m.bgNode
	m.bgReq, m.bgNode = 0, ""
	switch {
	case ev.Error == "":
		m.fails = 0
		if step > m.ckpt && step <= m.applied {
			m.ckpt = step
		}
		m.note("checkpoint of step %d written from %s in the background", step, src)
	case ev.Fatal:
		m.fail(ExitFailure, "checkpoint of step %d: %s", step, ev.Error)
		return
	default:
		m.note("checkpoint transfer from %s failed; trying another replica: %s", src, ev.Error)
		if m.tryBackground() {
			return
		}
	}
	m.releaseHeld()
}

// backgroundTimeout gives up the background transfer past its deadline
// (its late success still counts, as onActionDone says) and tries the
// next replica.
func (m *Machine) backgroundTimeout() {
	m.note("checkpoint transfer from %s did not finish before the deadline; trying another replica", m.bgNode)
	m.bgReq = 0
	if !m.tryBackground() {
		m.releaseHeld()
	}
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
	if ev.Req != 0 && ev.Req == m.bgReq {
		delete(m.ckptReqs, ev.Req)
		m.backgroundDone(ev)
		return
	}
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
		if m.bgReq != 0 {
			// The model is written; the final checkpoint still streams.
			m.exported = true
			m.deadline = m.bgDeadline
			m.note("model written; the run ends when the final checkpoint from %s is", m.bgNode)
			return
		}
		m.finish(ExitOK, nil)
	}
}

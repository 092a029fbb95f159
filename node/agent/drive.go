package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ringtune/ringtune/control"
	am "github.com/ringtune/ringtune/node/agent/machine"
)

// The session loop is the driver of the agent's protocol machine
// (node/agent/machine): it turns the coordinator's messages, the results
// of the work it ran, SIGTERM and the wall clock into the machine's
// events, sends the replies the machine decides, and runs the work it asks
// for inline, on the goroutine that owns the trainer. The machine decides
// which message the node takes when, and every deadline; the driver owns
// the trainer, the ring, the disk and the streams.

// tick is the machine's unit of logical time on a real node.
const tick = 100 * time.Millisecond

// ticksOf converts d to whole ticks, rounding up, at least one.
func ticksOf(d time.Duration) int64 { return max(1, int64((d+tick-1)/tick)) }

// newMachine is the node's protocol machine and its tick 0. It lives
// across sessions: a lost session's trainer state stays in it, and its
// rejoin deadline bounds the joins that follow (Run).
func (a *Agent) newMachine() (*am.Machine, time.Time, error) {
	rejoin := int64(-1)
	if a.cfg.RejoinTimeout >= 0 {
		rejoin = ticksOf(a.cfg.RejoinTimeout)
	}
	m, err := am.New(am.Config{CommitTicks: ticksOf(a.cfg.CommitTimeout), RejoinTicks: rejoin})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("agent: %w", err)
	}
	return m, time.Now(), nil
}

// startMachine opens the session in the node's machine (a new one when
// the session has none, as in tests): the handshake passed.
func (s *session) startMachine() error {
	if s.m == nil {
		m, t0, err := s.a.newMachine()
		if err != nil {
			return err
		}
		s.m, s.t0 = m, t0
	}
	s.clock()
	s.m.Step(am.Event{Kind: am.Open})
	return s.flush()
}

// stepClock steps m's ticks up to the wall clock since t0 (ticks missed
// while work ran inline, or between sessions, are stepped now).
func stepClock(m *am.Machine, t0 time.Time) {
	due := int64(time.Since(t0) / tick)
	for m.Now() < due && m.Phase() != am.Done {
		m.Step(am.Event{Kind: am.Tick})
	}
}

func (s *session) clock() { stepClock(s.m, s.t0) }

// deliver hands one coordinator message to the machine and carries out
// what it decides. The error is the end of the session (the run's outcome,
// or a session loss).
func (s *session) deliver(m *control.Msg) error {
	in, err := toMachine(m)
	if err != nil {
		// Out of the protocol: it must not touch anything.
		s.a.log.Warn("unexpected message from the coordinator dropped", "from", "coordinator", "type", m.Type, "gen", m.Gen, "step", m.Step, "req", m.Req, "err", err)
		return nil
	}
	if m.Type == control.TypeStop {
		s.stopReason = m.Reason
	}
	s.clock()
	s.m.Step(am.Event{Kind: am.Message, Msg: &in})
	return s.flush()
}

// expect reports whether the node would take m now, and why not, without
// changing anything.
func (s *session) expect(m *control.Msg) error {
	in, err := toMachine(m)
	if err != nil {
		return err
	}
	return s.m.Check(in)
}

// handle is deliver for a message expect accepted (tests).
func (s *session) handle(m *control.Msg) error { return s.deliver(m) }

// flush carries out what the machine decided, until it has nothing left:
// it sends the replies, then runs the work in order, stepping each busy
// work's result. When the machine is done it returns the run's outcome
// (nil for a finished run: the caller checks the phase).
func (s *session) flush() error {
	for {
		rd := s.m.Ready()
		s.m.Advance()
		if rd.Empty() {
			break
		}
		for _, n := range rd.Notes {
			if strings.Contains(n, " dropped") {
				s.a.log.Warn("unexpected message from the coordinator dropped", "from", "coordinator", "why", n)
			} else {
				s.a.log.Info(n)
			}
		}
		for _, r := range rd.Replies {
			if err := s.send(s.toControl(r)); err != nil {
				return err
			}
		}
		for _, w := range rd.Work {
			ev, err := s.do(w)
			if err != nil {
				return err
			}
			if ev != nil {
				s.m.Step(*ev)
			}
		}
	}
	if s.m.Phase() == am.Done {
		return s.outcome()
	}
	return nil
}

// outcome is Run's error for the machine's outcome.
func (s *session) outcome() error {
	o, why := s.m.Outcome()
	switch o {
	case am.Finished:
		s.a.log.Info("run finished", "reason", s.stopReason)
		return nil
	case am.Left:
		if s.stopReason != "" {
			s.a.log.Info("run finished", "reason", s.stopReason)
		}
		if s.ctx != nil && s.ctx.Err() != nil {
			return s.ctx.Err()
		}
		return context.Canceled
	case am.SessionLost:
		if s.lostErr != nil {
			return s.lostErr
		}
		return lost(fmt.Errorf("agent: %s (a tick is %s)", why, tick))
	}
	if s.fatal != nil {
		return s.fatal
	}
	return errors.New(why)
}

// failed is the machine's event for a work that failed on this node for
// good: the node tells the coordinator and ends with err.
func (s *session) failed(w am.Work, err error) *am.Event {
	s.fatal = err
	return &am.Event{Kind: am.WorkDone, ID: w.ID, Error: err.Error(), Fatal: true}
}

// do runs one piece of work; busy work returns the event of its result.
func (s *session) do(w am.Work) (*am.Event, error) {
	msg, _ := w.Payload.(*control.Msg)
	done := &am.Event{Kind: am.WorkDone, ID: w.ID}
	// Work that changes the trainer's state first ends every read of it
	// (a background checkpoint of the state it replaces).
	switch w.Kind {
	case am.SetUpTrainer:
		s.hub.seal("a new trainer")
		s.noView = false
	case am.JoinGen:
		if s.shard != nil {
			s.hub.seal("re-sliced for generation " + strconv.FormatUint(w.Gen, 10))
		}
	case am.Apply:
		s.hub.seal("step " + strconv.Itoa(w.Step) + " applied")
	case am.LoadState:
		s.hub.seal("a state loaded")
	}
	switch w.Kind {
	case am.SetUpTrainer:
		if err := s.onJob(msg.Job); err != nil {
			return s.failed(w, err), nil
		}
		done.Applied, done.CommitTicks = s.applied, ticksOf(s.commitTimeout())
	case am.JoinGen:
		if err := s.onGen(msg); err != nil {
			return s.failed(w, err), nil
		}
		done.Applied = s.applied
	case am.RunStep:
		red, ringErr, err := s.onStep(msg)
		switch {
		case err != nil:
			return s.failed(w, err), nil
		case ringErr != nil:
			done.Error = ringErr.Error()
		default:
			done.Payload = red
		}
	case am.CancelStep:
		s.watch.abort(w.Gen, w.Step)
	case am.Apply:
		gathered, err := s.onCommit(msg)
		if err != nil {
			return s.failed(w, err), nil
		}
		if !gathered {
			done.Error = "zero1: parameters not gathered after the update"
		}
	case am.Discard:
		if s.tr != nil {
			if err := s.tr.Discard(); err != nil {
				s.fatal = fmt.Errorf("agent: discard step %d: %w", w.Step, err)
				return &am.Event{Kind: am.Fail, Error: s.fatal.Error()}, nil
			}
		}
	case am.LoadState:
		if err := s.onPull(msg); err != nil {
			done.Error = err.Error()
		}
	case am.Evaluate:
		var sum control.EvalSums
		for i, b := range msg.Batches {
			r, err := s.tr.Evaluate(b)
			if err != nil {
				return s.failed(w, fmt.Errorf("agent: evaluate batch %d: %w", i, err)), nil
			}
			sum.Add(r)
		}
		done.Payload = &sum
	case am.WriteExport:
		files, err := s.onExport(msg.Req)
		if err != nil {
			return s.failed(w, err), nil
		}
		done.Payload = files
	case am.ComputeDigest:
		d, err := s.tr.Digest()
		if err != nil {
			return s.failed(w, fmt.Errorf("agent: digest: %w", err)), nil
		}
		done.Sum = hex.EncodeToString(d)
	case am.EndSession:
		// release closes the streams and the ring when run returns.
		return nil, nil
	case am.Connect:
		// Run joins again, keeping the trainer.
		if s.lostErr != nil {
			return nil, s.lostErr
		}
		return nil, lost(fmt.Errorf("agent: %s (a tick is %s)", w.Why, tick))
	default:
		return nil, fmt.Errorf("agent: the protocol machine asked for unknown work %s (a bug)", w)
	}
	if w.ID == 0 {
		return nil, nil // instant work: no result
	}
	return done, nil
}

// toMachine is a coordinator message as the machine takes it; the message
// itself travels as the payload, for the work it starts.
func toMachine(m *control.Msg) (am.Msg, error) {
	in := am.Msg{Gen: m.Gen, Req: uint64(max(m.Req, 0)), Step: m.Step, Count: m.Count, Digest: m.Digest, Error: m.Error, Payload: m}
	switch m.Type {
	case control.TypeJob:
		in.Kind = am.Job
	case control.TypeGen:
		in.Kind = am.Gen
		if w := m.World; w != nil {
			in.Rank, in.World, in.Applied = w.Rank, len(w.Peers), w.Applied
		}
	case control.TypePull:
		in.Kind = am.Pull
		if m.Pull != nil {
			in.PullStep = m.Pull.Step
		}
	case control.TypeStep:
		in.Kind = am.Step
	case control.TypeCommit:
		in.Kind = am.Commit
	case control.TypeAbort:
		in.Kind = am.Abort
	case control.TypeEvalReq:
		in.Kind = am.Eval
	case control.TypeExport:
		in.Kind = am.Export
	case control.TypeStop:
		in.Kind = am.Stop
	default:
		return in, fmt.Errorf("a node does not take %q messages", m.Type)
	}
	return in, nil
}

// toControl is the machine's reply on the wire. Every reply echoes the
// generation and request id of the request it answers.
func (s *session) toControl(r am.Msg) *control.Msg {
	m := &control.Msg{Gen: r.Gen, Req: int(r.Req), Step: r.Step, Error: r.Error, Sum: r.Sum}
	switch r.Kind {
	case am.SetUp, am.Joined:
		m.Type, m.Ready = control.TypeReady, &control.Ready{Params: s.params, Applied: r.Applied}
	case am.Loaded:
		m.Type = control.TypeLoaded
	case am.Reduced:
		m.Type = control.TypeReduced
		m.Reduced, _ = r.Payload.(*control.Reduced)
	case am.Failed:
		m.Type = control.TypeFailed
	case am.Digest:
		m.Type = control.TypeDigest
	case am.EvalRes:
		m.Type = control.TypeEval
		m.Eval, _ = r.Payload.(*control.EvalSums)
	case am.Exported:
		m.Type = control.TypeExported
		m.Files, _ = r.Payload.([]control.FileInfo)
	case am.Leave:
		m.Type = control.TypeLeave
	}
	return m
}

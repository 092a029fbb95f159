package memnet

import (
	"fmt"

	"github.com/ringtune/ringtune/control"
	cm "github.com/ringtune/ringtune/coordinator/machine"
	am "github.com/ringtune/ringtune/node/agent/machine"
)

// ToAgent is a coordinator machine's request as the agent machine takes
// it. The payload carries what the node's driver needs and the agent
// machine does not read: a step's batch indices, a pull's source.
func ToAgent(m cm.Msg) (am.Msg, error) {
	out := am.Msg{Gen: m.Gen, Req: m.Req, Step: m.Step, Rank: m.Rank, World: m.World, Count: m.Count, Digest: m.Digest, Error: m.Error}
	switch m.Kind {
	case cm.Job:
		out.Kind = am.Job
	case cm.Gen:
		out.Kind, out.World, out.Applied, out.Payload = am.Gen, len(m.IDs), m.Applied, m.Rings
	case cm.Pull:
		if m.Pull == nil {
			return out, fmt.Errorf("memnet: pull to %s without a source", m.Node)
		}
		p := *m.Pull
		out.Kind, out.PullStep, out.Payload = am.Pull, p.Step, &p
	case cm.Step:
		out.Kind, out.Payload = am.Step, m.Indices
	case cm.Commit:
		out.Kind = am.Commit
	case cm.Abort:
		out.Kind = am.Abort
	case cm.Eval:
		out.Kind = am.Eval
	case cm.Export:
		out.Kind = am.Export
	case cm.Stop:
		out.Kind = am.Stop
	default:
		return out, fmt.Errorf("memnet: the coordinator sent %s, which is no request", m.Kind)
	}
	return out, nil
}

// ToCoordinator is node id's reply on session s as the coordinator
// machine's event (a leave is an event of its own).
func ToCoordinator(id string, s uint64, r am.Msg) (cm.Event, error) {
	return toCoordinator(id, s, r, new(cm.Msg))
}

// toCoordinator is ToCoordinator writing the message into m, which the
// event points to: a caller keeps it in the same allocation as the event.
func toCoordinator(id string, s uint64, r am.Msg, m *cm.Msg) (cm.Event, error) {
	if r.Kind == am.Leave {
		return cm.Event{Kind: cm.Leave, Node: id, Session: s}, nil
	}
	*m = cm.Msg{Node: id, Session: s, Gen: r.Gen, Req: r.Req, Step: r.Step, Applied: r.Applied, Sum: r.Sum, Error: r.Error}
	switch r.Kind {
	case am.SetUp:
		m.Kind = cm.SetUp
	case am.Joined:
		m.Kind = cm.Joined
	case am.Loaded:
		m.Kind = cm.Loaded
	case am.Reduced:
		m.Kind = cm.Reduced
		red, ok := r.Payload.(*control.Reduced)
		if !ok {
			return cm.Event{}, fmt.Errorf("memnet: reduced from %s without its report", id)
		}
		m.Reduced = red
	case am.Failed:
		m.Kind = cm.Failed
	case am.Digest:
		m.Kind = cm.Digest
	case am.EvalRes:
		m.Kind = cm.EvalRes
		m.Eval, _ = r.Payload.(*control.EvalSums)
	case am.Exported:
		m.Kind = cm.Exported
		m.Files, _ = r.Payload.([]control.FileInfo)
	default:
		return cm.Event{}, fmt.Errorf("memnet: node %s sent %s, which is no reply", id, r.Kind)
	}
	return cm.Event{Kind: cm.Message, Msg: m}, nil
}

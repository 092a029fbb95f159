package machine

import (
	"fmt"
	"strings"

	"github.com/ringtune/ringtune/control"
)

// Phase is what the machine is waiting for.
type Phase int

// The phases (see the package comment).
const (
	Waiting Phase = iota
	Forming
	Syncing
	Training
	Evaluating
	Checkpointing
	Exporting
	Done
)

var phaseNames = [...]string{"waiting", "forming", "syncing", "training", "evaluating", "checkpointing", "exporting", "done"}

func (p Phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// Kind is a message's type. Requests (coordinator → node) and replies (node
// → coordinator) are distinct kinds, so that a readiness round is a typed
// Joined reply and not a step numbered -1 (issue 11, defect 5).
type Kind int

// Message kinds.
const (
	// coordinator → node
	Job    Kind = iota + 1 // the job; answered by SetUp
	Gen                    // a new generation; answered by Joined
	Pull                   // load the committed state; answered by Loaded
	Step                   // train one step; answered by Reduced or Failed
	Commit                 // apply the step (Digest: then send a Digest)
	Abort                  // drop the step's gradients
	Eval                   // score a shard; answered by EvalRes
	Export                 // write the model; answered by Exported
	Stop                   // the run is over, or this node leaves it

	// node → coordinator
	SetUp    // trainer set up (Applied: committed steps it holds)
	Joined   // joined generation Gen (Applied)
	Loaded   // state of Step loaded, or Error
	Reduced  // gradients of Step all-reduced
	Failed   // the request failed on the node (Error)
	Digest   // parameter digest after Step committed steps
	EvalRes  // evaluation sums
	Exported // the model's files, to be pulled from the node
)

var kindNames = map[Kind]string{Job: "job", Gen: "gen", Pull: "pull", Step: "step", Commit: "commit", Abort: "abort",
	Eval: "eval", Export: "export", Stop: "stop", SetUp: "setup", Joined: "joined", Loaded: "loaded", Reduced: "reduced",
	Failed: "failed", Digest: "digest", EvalRes: "evalres", Exported: "exported"}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// ParseKind is the inverse of Kind.String (for scenario scripts).
func ParseKind(s string) (Kind, bool) {
	for k, n := range kindNames {
		if n == s {
			return k, true
		}
	}
	return 0, false
}

// Msg is one protocol message. Node is the recipient of an outbound message
// and the sender of an inbound one; Session is that node's session (a
// restarted node has a new one, so that its earlier instance's messages and
// death are told apart). Every request carries Req, a fresh id, and a reply
// counts only when it echoes the Req, the Gen, and comes from a rank the
// request went to (issue 11, defect 4).
type Msg struct {
	Kind    Kind
	Node    string
	Session uint64
	Gen     uint64
	Req     uint64
	Step    int

	// Gen: the world of the generation, Rank the recipient's place in it.
	Rank  int
	IDs   []string
	Rings []string
	// Applied is the committed step count a generation starts from (Gen),
	// or the count the node holds (SetUp, Joined).
	Applied int

	// Step: the step's global batch (dataset indices; the driver cuts the
	// rank's micro-batches from them with Rank and World) and its divisor.
	// Indices is shared by the step's messages to every rank: read only.
	Indices []int
	World   int
	Count   int
	// Digest asks for a parameter digest after the commit (Commit), or
	// after joining (Gen of a fresh run).
	Digest bool

	Pull    *PullFrom
	Sum     string
	Error   string
	Reduced *control.Reduced
	Eval    *control.EvalSums
	Files   []control.FileInfo
}

// PullFrom names where a stale rank loads the committed state from: a live
// rank (Kind "state", Node and Ring set) or the checkpoint the driver holds
// (Kind "checkpoint").
type PullFrom struct {
	Kind string
	Node string
	Ring string
	Step int
}

// Pull kinds (the bulk plane's names).
const (
	PullState      = "state"
	PullCheckpoint = "checkpoint"
)

func (m Msg) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", m.Node, m.Kind)
	if m.Gen > 0 {
		fmt.Fprintf(&b, " gen=%d", m.Gen)
	}
	if m.Req > 0 {
		fmt.Fprintf(&b, " req=%d", m.Req)
	}
	switch m.Kind {
	case Gen:
		fmt.Fprintf(&b, " rank=%d ids=%s applied=%d", m.Rank, strings.Join(m.IDs, ","), m.Applied)
	case Step:
		fmt.Fprintf(&b, " step=%d rank=%d/%d count=%d", m.Step, m.Rank, m.World, m.Count)
		if len(m.Indices) <= 8 { // small batches (scenarios): the samples themselves
			fmt.Fprintf(&b, " samples=%v", m.Indices)
		}
	case Commit:
		fmt.Fprintf(&b, " step=%d", m.Step)
	case Abort, Reduced, Loaded:
		fmt.Fprintf(&b, " step=%d", m.Step)
	case Eval:
		fmt.Fprintf(&b, " rank=%d/%d", m.Rank, m.World)
	case SetUp, Joined:
		fmt.Fprintf(&b, " applied=%d", m.Applied)
	case Digest:
		fmt.Fprintf(&b, " step=%d sum=%s", m.Step, m.Sum)
	}
	if m.Digest {
		b.WriteString(" digest")
	}
	if m.Pull != nil {
		fmt.Fprintf(&b, " from=%s:%s step=%d", m.Pull.Kind, m.Pull.Node, m.Pull.Step)
	}
	if m.Error != "" {
		fmt.Fprintf(&b, " error=%q", m.Error)
	}
	return b.String()
}

// EventKind says what happened.
type EventKind int

// Event kinds.
const (
	// Join: a node's session opened (Node, Session, Ring: its ring address
	// from gossip, Applied: the committed steps its process holds, -1 for
	// none).
	Join EventKind = iota + 1
	// Lost: a node's session ended or gossip declared it dead. Session 0
	// (a gossip death) with a Ring other than the live session's is an
	// earlier instance's death and changes nothing (issue 11, defect 13).
	Lost
	// Leave: the node announced it is leaving (SIGTERM): it finishes the
	// step in flight and leaves at the next step boundary.
	Leave
	// Message: Msg arrived from Msg.Node on Msg.Session.
	Message
	// Tick: one unit of logical time passed.
	Tick
	// ActionDone: the driver finished action Req (Error when it failed;
	// Fatal when retrying cannot help, e.g. a full disk).
	ActionDone
)

// Event is one input of the machine.
type Event struct {
	Kind    EventKind
	Node    string
	Session uint64
	Ring    string
	Applied int
	Msg     *Msg
	Req     uint64
	Error   string
	Fatal   bool
}

// ActionKind is work the driver does for the machine outside the control
// plane.
type ActionKind int

// Action kinds.
const (
	// Committed: step Step committed with the fresh samples Indices and
	// the ranks' reports (the driver accounts and shows progress).
	Committed ActionKind = iota + 1
	// WriteCheckpoint: stream the state of Step committed steps from Node
	// (Ring) to disk; answer with ActionDone{Req}. A checkpoint action
	// that the machine gave up on (its source was lost) may still finish:
	// its success is recorded, its failure ignored.
	WriteCheckpoint
	// WriteExport: pull export Req's Files from Node (Ring) into the output
	// directory; answer with ActionDone{Req}. A new WriteExport supersedes
	// an earlier one, whose transfer the driver cancels.
	WriteExport
	// Evaluated: the evaluation after Step committed steps (Eval: the sums
	// over every rank).
	Evaluated
	// Rollback: the whole world was lost; the run continues from the
	// checkpoint of Step committed steps (the steps after it are undone).
	Rollback
	// Drop: end Node's session Session (it missed a deadline or is a
	// duplicate id).
	Drop
)

var actionNames = map[ActionKind]string{Committed: "committed", WriteCheckpoint: "checkpoint", WriteExport: "export",
	Evaluated: "evaluated", Rollback: "rollback", Drop: "drop"}

func (k ActionKind) String() string { return actionNames[k] }

// Action is one piece of work for the driver.
type Action struct {
	Kind ActionKind
	// Gen and IDs are the generation and its ranks (Committed, Evaluated).
	Gen     uint64
	IDs     []string
	Req     uint64
	Step    int
	Node    string
	Session uint64
	Ring    string
	Indices []int
	Reduced []*control.Reduced
	Eval    *control.EvalSums
	Files   []control.FileInfo
}

func (a Action) String() string {
	s := a.Kind.String()
	if a.Kind != Drop {
		s += fmt.Sprintf(" step=%d", a.Step)
	}
	if a.Req > 0 {
		s += fmt.Sprintf(" req=%d", a.Req)
	}
	if a.Node != "" {
		s += " node=" + a.Node
	}
	return s
}

// Ready is what the machine decided since the last Advance.
type Ready struct {
	Msgs    []Msg
	Actions []Action
	// Notes explain decisions and dropped messages, for the driver's log.
	Notes []string
}

// Empty reports whether there is nothing to do.
func (r Ready) Empty() bool { return len(r.Msgs) == 0 && len(r.Actions) == 0 && len(r.Notes) == 0 }

// Exit codes of a finished run; the same values as the coordinator's.
const (
	ExitOK       = 0
	ExitFailure  = 1
	ExitBadInput = 2
	ExitDiverged = 3
	ExitNoNodes  = 4
)

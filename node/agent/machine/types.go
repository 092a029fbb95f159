package machine

import (
	"fmt"
	"strings"
)

// Phase is what the agent is doing or waiting for.
type Phase int

// The phases (see the package comment).
const (
	Connecting Phase = iota
	AwaitJob
	SettingUp
	Spare
	Joining
	Idle
	Computing
	AwaitCommit
	Applying
	Pulling
	Evaluating
	Exporting
	Digesting
	Rejoining
	Done
)

var phaseNames = [...]string{"connecting", "awaitjob", "settingup", "spare", "joining", "idle", "computing", "awaitcommit",
	"applying", "pulling", "evaluating", "exporting", "digesting", "rejoining", "done"}

func (p Phase) String() string {
	if p >= 0 && int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", int(p))
}

// busy reports whether a piece of work is running in phase p.
func (p Phase) busy() bool {
	switch p {
	case SettingUp, Joining, Computing, Applying, Pulling, Evaluating, Exporting, Digesting:
		return true
	}
	return false
}

// Kind is a message's type: requests from the coordinator and the node's
// replies are distinct kinds, the same set as coordinator/machine's.
type Kind int

// Message kinds.
const (
	// coordinator → node
	Job    Kind = iota + 1 // set up the trainer; answered by SetUp (or Failed)
	Gen                    // join a generation; answered by Joined
	Pull                   // load the committed state; answered by Loaded
	Step                   // train one step; answered by Reduced or Failed
	Commit                 // apply the step in flight (Digest: then send a Digest)
	Abort                  // drop the step in flight
	Eval                   // score a shard; answered by EvalRes
	Export                 // write the model; answered by Exported
	Stop                   // the run is over, or this node is released

	// node → coordinator
	SetUp    // trainer set up (Applied: committed steps it holds)
	Joined   // joined generation Gen (Applied)
	Loaded   // the state of Step loaded, or Error
	Reduced  // gradients of Step all-reduced (Payload: the report)
	Failed   // a request failed on the node (Error)
	Digest   // parameter digest (Sum) after Step committed steps
	EvalRes  // evaluation sums (Payload)
	Exported // the model's files (Payload)
	Leave    // the node asks to be released (SIGTERM)
)

var kindNames = map[Kind]string{Job: "job", Gen: "gen", Pull: "pull", Step: "step", Commit: "commit", Abort: "abort",
	Eval: "eval", Export: "export", Stop: "stop", SetUp: "setup", Joined: "joined", Loaded: "loaded", Reduced: "reduced",
	Failed: "failed", Digest: "digest", EvalRes: "evalres", Exported: "exported", Leave: "leave"}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Msg is one protocol message: a request from the coordinator (an event)
// or a reply of the node (in Ready). Every reply echoes the Gen and Req of
// the request it answers. Payload is opaque to the machine: the driver's
// data (the job, the world's ring addresses, a step's batches, a pull's
// source, a reduced report, evaluation sums, export files), handed back in
// the Work the request starts.
type Msg struct {
	Kind Kind
	Gen  uint64
	Req  uint64
	Step int

	// Gen: the recipient's rank, the world's size and the committed step
	// count the generation starts from. Step and Eval: Rank and World too.
	Rank    int
	World   int
	Applied int
	// Count is the step's divisor (Step, Commit).
	Count int
	// Digest asks for a parameter digest after the commit (Commit), the
	// join (Gen) or the pull (Pull).
	Digest bool
	// PullStep is the committed step count a Pull loads.
	PullStep int

	Sum     string
	Error   string
	Payload any
}

func (m Msg) String() string {
	var b strings.Builder
	b.WriteString(m.Kind.String())
	if m.Gen > 0 {
		fmt.Fprintf(&b, " gen=%d", m.Gen)
	}
	if m.Req > 0 {
		fmt.Fprintf(&b, " req=%d", m.Req)
	}
	switch m.Kind {
	case Step, Commit, Abort, Reduced, Failed, Digest, Loaded, Exported:
		fmt.Fprintf(&b, " step=%d", m.Step)
	case Gen:
		fmt.Fprintf(&b, " rank=%d/%d applied=%d", m.Rank, m.World, m.Applied)
	case SetUp, Joined:
		fmt.Fprintf(&b, " applied=%d", m.Applied)
	case Pull:
		fmt.Fprintf(&b, " of=%d", m.PullStep)
	}
	if m.Digest {
		b.WriteString(" digest")
	}
	if m.Sum != "" {
		fmt.Fprintf(&b, " sum=%s", m.Sum)
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
	// Open: a session with the coordinator opened (the handshake passed).
	Open EventKind = iota + 1
	// ConnectFailed: opening a session failed (Error).
	ConnectFailed
	// Lost: the session broke (Error says how).
	Lost
	// Message: Msg arrived from the coordinator on the live session.
	Message
	// WorkDone: work ID finished; Error when it failed (Fatal: the node
	// cannot go on), else the result's fields.
	WorkDone
	// Fail: a local failure outside any work (e.g. discarding a step's
	// gradients failed): the node tells the coordinator and ends.
	Fail
	// Term: SIGTERM or SIGINT: leave at a step boundary.
	Term
	// Tick: one unit of logical time passed (Event.Ticks units when above
	// 1).
	Tick
)

// Event is one input of the machine.
type Event struct {
	Kind EventKind
	Msg  *Msg
	// WorkDone: the work's ID and result.
	ID    uint64
	Error string
	Fatal bool
	// Applied is the committed step count the trainer holds after SetUp or
	// Join work (a zero1 re-slice may change it; -1: none).
	Applied int
	// Sum is a Digest work's result (hex).
	Sum string
	// Payload is the reply's payload (Step: the reduced report, Eval: the
	// sums, Export: the files).
	Payload any
	// CommitTicks, from SetUp work, raises Config.CommitTicks for this
	// job (past the coordinator's step timeout); 0 keeps it.
	CommitTicks int64
	// Ticks, on a Tick, is how many units of time passed: the event is
	// exactly Ticks single Ticks in a row (0 or 1: one). A driver that
	// lets a machine with no Deadline fall behind its clock catches it up
	// with one event; while nothing is timed, a tick only moves the clock,
	// so the catch-up is O(1).
	Ticks int64
}

// WorkKind is what the driver does for the machine.
type WorkKind int

// Work kinds. Busy work is answered with WorkDone{ID}; instant work is
// not (its failure is a Fail event).
const (
	// Connect (busy until Open or ConnectFailed): join the cluster again
	// and open a session; the hello announces Applied.
	Connect WorkKind = iota + 1
	// SetUpTrainer (busy): set the trainer up for the job in Payload, or
	// keep the one carried from a lost session when the job is the same
	// run's; answer with Applied (and CommitTicks).
	SetUpTrainer
	// JoinGen (busy): build generation Gen's ring (Payload: the request's)
	// at rank Rank; answer with Applied.
	JoinGen
	// RunStep (busy): run step Step (Payload: its batches) and all-reduce
	// it; answer with the report as Payload, or with Error (not Fatal)
	// when the ring failed, Fatal when the trainer did.
	RunStep
	// CancelStep (instant): cancel the ring operation of step Step in
	// generation Gen: the coordinator aborted it.
	CancelStep
	// Apply (busy): apply committed step Step with divisor Count.
	Apply
	// Discard (instant): drop the gradients of the step in flight.
	Discard
	// LoadState (busy): load the state of PullStep committed steps from
	// the source in Payload; Error (not Fatal) when the pull failed.
	LoadState
	// Evaluate (busy): score the batches in Payload; answer with the sums.
	Evaluate
	// WriteExport (busy): write the model for export request Req; answer
	// with the files.
	WriteExport
	// ComputeDigest (busy): the parameter digest; answer with Sum.
	ComputeDigest
	// EndSession (instant): close the session's streams and drop its
	// generation (ring, waiting state requests); the trainer stays.
	EndSession
)

var workNames = map[WorkKind]string{Connect: "connect", SetUpTrainer: "setup", JoinGen: "join", RunStep: "step",
	CancelStep: "cancel", Apply: "apply", Discard: "discard", LoadState: "load", Evaluate: "evaluate",
	WriteExport: "export", ComputeDigest: "digest", EndSession: "endsession"}

func (k WorkKind) String() string {
	if s, ok := workNames[k]; ok {
		return s
	}
	return fmt.Sprintf("work(%d)", int(k))
}

// Work is one piece of work for the driver.
type Work struct {
	Kind WorkKind
	// ID matches the WorkDone event of busy work.
	ID       uint64
	Gen      uint64
	Req      uint64
	Step     int
	Rank     int
	World    int
	Count    int
	PullStep int
	// Applied is what the hello of a Connect announces.
	Applied int
	// Why is what ended the session (Connect).
	Why     string
	Payload any
}

func (w Work) String() string {
	s := w.Kind.String()
	if w.ID > 0 {
		s += fmt.Sprintf(" id=%d", w.ID)
	}
	switch w.Kind {
	case JoinGen:
		s += fmt.Sprintf(" gen=%d rank=%d/%d", w.Gen, w.Rank, w.World)
	case RunStep, CancelStep, Apply, Discard:
		s += fmt.Sprintf(" gen=%d step=%d", w.Gen, w.Step)
	case LoadState:
		s += fmt.Sprintf(" gen=%d of=%d", w.Gen, w.PullStep)
	case Connect:
		s += fmt.Sprintf(" applied=%d", w.Applied)
	}
	return s
}

// Outcome says how the node's run ended.
type Outcome int

// Outcomes.
const (
	// Running: not over yet.
	Running Outcome = iota
	// Finished: the coordinator ended the run (stop without an error).
	Finished
	// Left: the node left after SIGTERM (released, or on its own).
	Left
	// Failure: the run failed (Err): the coordinator stopped it with an
	// error, the node failed, or it could not rejoin in time.
	Failure
	// SessionLost: the session broke (Err) and the node does not rejoin:
	// it was leaving, or RejoinTicks < 0.
	SessionLost
)

// Ready is what the machine decided since the last Advance. The driver
// sends Replies in order, then runs Work in order.
type Ready struct {
	Replies []Msg
	Work    []Work
	// Notes explain decisions and dropped messages, for the driver's log.
	Notes []string
}

// Empty reports whether there is nothing to do.
func (r Ready) Empty() bool { return len(r.Replies) == 0 && len(r.Work) == 0 && len(r.Notes) == 0 }

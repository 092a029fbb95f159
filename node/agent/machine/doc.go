// Package machine is the node agent's side of the training protocol as a
// pure state machine, the counterpart of coordinator/machine: the driver
// (node/agent) feeds it events with Step (a session opened or was lost, a
// coordinator message arrived, work it asked for finished, SIGTERM, a tick
// of logical time), takes what it decided with Ready (replies to send,
// work to run on the trainer, the ring or the disk, the process's outcome)
// and acknowledges that with Advance.
//
// The machine does no I/O, reads no clock, starts no goroutine and links
// no libtorch, so the agent's rules (which message it takes in which
// phase, stale generations and unknown requests, when it gives up on a
// commit, how it leaves on SIGTERM, how long it tries to rejoin a lost
// coordinator with its trainer kept) are tested in milliseconds, alone
// (machine_test.go) and together with the real coordinator machine over an
// in-memory transport (internal/memnet).
//
// Work runs one piece at a time, as the agent runs it inline on the
// goroutine that owns the trainer: while a busy piece runs (set-up, a
// generation's join, a step, an apply, a pull, an evaluation, an export, a
// digest) the coordinator's messages queue in the machine's inbox and are
// handled in order once it is done. The one exception is the abort of the
// step in flight, which also asks at once for the step's ring operation to
// be cancelled (issue 11, defect 12).
//
// Phases:
//
//	Connecting  the first session is being opened (the driver's join deadline)
//	AwaitJob    the session is open; the job comes next
//	SettingUp   the trainer is being set up (or a kept one adopted)
//	Spare       set up, in no generation (no deadline of its own: the control connection's keepalive ends a session whose coordinator froze or vanished, and that end is the signal)
//	Joining     joining a generation (ring, zero1 re-slice)
//	Idle        a rank of a generation, between requests
//	Computing   running a step (forward, backward, all-reduce)
//	AwaitCommit the step is reported; the commit or abort is due (CommitTicks)
//	Applying    applying a committed step
//	Pulling     loading the committed state
//	Evaluating  scoring a shard of the evaluation set
//	Exporting   writing the model
//	Digesting   computing a parameter digest
//	Rejoining   the session was lost; joining again with the trainer kept (RejoinTicks)
//	Done        the process ends (Outcome)
//
// A node leaving on SIGTERM (Term) tells the coordinator (a leave reply)
// and keeps training until it is released (stop), or until LeaveTicks have
// passed, at a step boundary.
package machine

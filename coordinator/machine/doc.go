// Package machine is the coordinator's training protocol as a pure state
// machine, in the style of etcd's raft: the driver feeds it events with
// Step (a session opened or ended, a node's message, a tick of logical
// time, the outcome of an action it asked for), then takes what the machine
// decided with Ready (messages to send, actions such as writing a
// checkpoint) and acknowledges it with Advance.
//
// The machine does no I/O, reads no clock and starts no goroutine, so every
// rule of the protocol (who forms a generation, where the state comes from,
// when a step commits or aborts, what a late or duplicate reply does, how
// long each wait lasts) is tested by scripted scenarios (testdata/*.txt)
// and by a deterministic simulator (sim_test.go) without a network.
//
// Phases, in the order a run goes through them:
//
//	Waiting       for enough set-up nodes and a quiet membership (deadline: WaitTicks)
//	Forming       a generation was sent; every rank must join it (FormTicks)
//	Syncing       stale ranks pull the committed state (SyncTicks)
//	Training      one step is in flight; it commits or aborts (StepTicks)
//	Evaluating    every rank scores its shard of the evaluation set (EvalTicks)
//	Checkpointing the driver streams a rank's state to disk (CheckpointTicks)
//	Exporting     rank 0 writes the model, the driver pulls it (ExportTicks)
//	Done          the run is over (Outcome)
//
// Every phase but Done has a deadline (Deadline). Where a step commits:
// Machine.commit in commit.go.
package machine

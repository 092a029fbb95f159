package machine

import (
	"errors"
	"fmt"
)

// Config is the protocol's part of the run's configuration. Durations are
// in ticks: the driver picks the tick's length (e.g. 50 ms) and converts.
type Config struct {
	// MinNodes is the number of set-up nodes the first generation needs
	// (cluster.min_nodes, default 1); later generations carry on with any.
	MinNodes int
	// MaxNodes caps a world's size (cluster.max_nodes); 0 is no cap. Set-up
	// nodes beyond it are spares.
	MaxNodes int
	// Samples, GlobalBatch, DropLast, Seed, Epochs and MaxSteps define the
	// schedule (data.Epoch); Total steps = min(MaxSteps, Epochs·steps per epoch).
	Samples     int
	GlobalBatch int
	DropLast    bool
	Seed        int64
	Epochs      int
	MaxSteps    int
	// CountOf returns the divisor of a step's summed gradient (its sample or
	// target count); nil counts samples. It must be a pure function.
	CountOf func(step int, indices []int) int
	// DigestEvery asks for parameter digests every that many steps (0: never).
	DigestEvery int
	// EvalEvery evaluates every that many steps; 0 evaluates at each
	// epoch's end. Only when HasEval.
	EvalEvery int
	HasEval   bool
	// CheckpointEvery writes a checkpoint every that many steps (0: only
	// the final one, which is always written).
	CheckpointEvery int
	// CheckpointBackground transfers a checkpoint due between two steps
	// while the next step runs, holding only that step's commit until the
	// transfer ended, and the final one beside the export (see
	// startCheckpoint); false stops training for each.
	CheckpointBackground bool
	// Resumed is the committed step count of the checkpoint the run resumed
	// from, -1 for a fresh run.
	Resumed int
	// MaxAborts bounds consecutive failed attempts (aborted steps, failed
	// generations, failed evaluations or transfers) (default 10).
	MaxAborts int

	// SettleTicks is how long membership must be quiet before a
	// generation forms (cluster.settle).
	SettleTicks int64
	// WaitTicks bounds the wait for nodes (cluster.wait_timeout).
	WaitTicks int64
	// FormTicks, SyncTicks, StepTicks, EvalTicks, CheckpointTicks and
	// ExportTicks bound each phase; DrainTicks the wait for the last
	// digests at the end of the run.
	FormTicks, SyncTicks, StepTicks, EvalTicks, CheckpointTicks, ExportTicks, DrainTicks int64
}

// withDefaults fills the zero values that have a default.
func (c Config) withDefaults() Config {
	if c.MinNodes == 0 {
		c.MinNodes = 1
	}
	if c.MaxAborts == 0 {
		c.MaxAborts = 10
	}
	if c.Epochs == 0 {
		c.Epochs = 1
	}
	if c.CountOf == nil {
		c.CountOf = func(_ int, idx []int) int { return len(idx) }
	}
	return c
}

// validate checks c; errors name the setting.
func (c Config) validate() error {
	switch {
	case c.MinNodes < 1:
		return fmt.Errorf("machine: min_nodes %d < 1", c.MinNodes)
	case c.MaxNodes < 0 || (c.MaxNodes > 0 && c.MaxNodes < c.MinNodes):
		return fmt.Errorf("machine: max_nodes %d below min_nodes %d", c.MaxNodes, c.MinNodes)
	case c.Samples <= 0 || c.GlobalBatch <= 0:
		return fmt.Errorf("machine: %d samples with global batch %d: both must be > 0", c.Samples, c.GlobalBatch)
	case c.DropLast && c.Samples < c.GlobalBatch:
		return fmt.Errorf("machine: drop_last with %d samples and global batch %d leaves no step", c.Samples, c.GlobalBatch)
	case c.Resumed < -1:
		return fmt.Errorf("machine: resumed step %d", c.Resumed)
	}
	for name, v := range map[string]int64{"WaitTicks": c.WaitTicks, "FormTicks": c.FormTicks, "SyncTicks": c.SyncTicks,
		"StepTicks": c.StepTicks, "EvalTicks": c.EvalTicks, "CheckpointTicks": c.CheckpointTicks, "ExportTicks": c.ExportTicks, "DrainTicks": c.DrainTicks} {
		if v <= 0 {
			// Every wait has a deadline: a zero one would be none.
			return fmt.Errorf("machine: %s is %d; every wait needs a deadline > 0", name, v)
		}
	}
	if c.SettleTicks < 0 {
		return errors.New("machine: SettleTicks < 0")
	}
	return nil
}

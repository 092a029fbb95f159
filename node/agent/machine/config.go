package machine

import "fmt"

// Config is the agent's protocol settings in ticks: the driver picks the
// tick's length and converts its timeouts.
type Config struct {
	// CommitTicks bounds the wait for the commit or abort of a step the
	// node reported (agent --commit-timeout, default 2 minutes; the driver
	// raises it past the coordinator's step timeout, see SetUpDone's
	// CommitTicks). Past it the session counts as lost. Must be > 0.
	CommitTicks int64
	// LeaveTicks bounds the wait, after SIGTERM, for the coordinator to
	// release the node (stop); past it the node leaves at the next step
	// boundary on its own. 0: the commit deadline in force (CommitTicks,
	// or the job's raise of it).
	LeaveTicks int64
	// RejoinTicks bounds how long a node whose established session was
	// lost keeps trying to join again, its trainer kept (agent
	// --rejoin-timeout, default 2 minutes). Negative: never rejoin; the
	// node ends with the session. 0 is not allowed (the driver maps its
	// zero value to the default).
	RejoinTicks int64
}

func (c Config) validate() error {
	switch {
	case c.CommitTicks <= 0:
		return fmt.Errorf("agent machine: CommitTicks is %d; the wait for a commit needs a deadline > 0", c.CommitTicks)
	case c.LeaveTicks < 0:
		return fmt.Errorf("agent machine: LeaveTicks is %d; want > 0 (0 takes the commit deadline)", c.LeaveTicks)
	case c.RejoinTicks == 0:
		return fmt.Errorf("agent machine: RejoinTicks is 0; want > 0, or < 0 to never rejoin")
	}
	return nil
}

package coordinator

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/ringtune/ringtune/coordinator/machine"
)

// The driver's log: the machine explains its decisions in notes, and the
// driver shows them as the log lines that operators, tests
// and docs/errors.md know (a note the driver does not know is logged as
// is). Phase changes (transitions) update the metrics and the dashboard.

// dropNote is the machine's note for a message it refused.
var dropNote = regexp.MustCompile(`^(\S+) from (\S+) (?:\(session \d+\) )?dropped: (.*)$`)

// note logs one of the machine's notes.
func (d *driver) note(n string) {
	c := d.c
	var a, b int
	switch {
	case strings.HasPrefix(n, "replicas identical after "):
		if _, err := fmt.Sscanf(n, "replicas identical after %d steps", &a); err == nil {
			sum := d.sums[a]
			delete(d.sums, a)
			c.log.Info("replicas identical", "applied", a, "digest", sum[:min(16, len(sum))])
			return
		}
	case strings.HasPrefix(n, "step ") && strings.Contains(n, " aborted in generation "):
		if _, err := fmt.Sscanf(n, "step %d aborted in generation %d:", &a, &b); err == nil {
			_, why, _ := strings.Cut(n, ": ")
			c.log.Warn("step aborted", "step", a, "gen", b, "why", why)
			c.metrics.abort()
			c.dash.Abort()
			d.aborted = true
			return
		}
	case strings.Contains(n, " failed in generation "):
		c.log.Warn("generation failed", "why", n)
		d.aborted = true
		return
	case strings.HasPrefix(n, "checkpoint of step ") && strings.Contains(n, " skipped: "):
		if _, err := fmt.Sscanf(n, "checkpoint of step %d skipped:", &a); err == nil {
			c.log.Warn("checkpoint skipped: no replica could deliver it; the run goes on", "applied", a)
			return
		}
	case strings.HasPrefix(n, "run failed: "), strings.HasPrefix(n, "run done after "),
		strings.HasPrefix(n, "duplicate node id "), strings.HasPrefix(n, "generation "),
		strings.HasPrefix(n, "node ") && (strings.HasSuffix(n, " lost") || strings.HasSuffix(n, " left")),
		strings.HasPrefix(n, "no node holds the state of step "),
		strings.HasPrefix(n, "checkpoint of step ") && strings.Contains(n, " written from "):
		// Logged by the driver where it acts on them (outcome, handle,
		// transitions, release, rollback, finished).
		c.log.Debug("protocol", "note", n)
		return
	}
	if m := dropNote.FindStringSubmatch(n); m != nil {
		c.log.Warn("bad message from node", "node", m[2], "type", wireType(m[1]), "err", m[3])
		return
	}
	c.log.Info("protocol", "note", n)
}

// wireType is the control message type of a machine kind's name.
func wireType(kind string) string {
	switch kind {
	case "setup", "joined":
		return "ready"
	}
	return kind
}

// boundary reports whether p ends at a step boundary (where the world may
// be re-formed).
func boundary(p machine.Phase) bool {
	switch p {
	case machine.Training, machine.Syncing, machine.Evaluating, machine.Checkpointing, machine.Exporting:
		return true
	}
	return false
}

// transitions logs and displays what changed in the machine's phase and
// generation since the last flush.
func (d *driver) transitions() {
	c := d.c
	ph := d.m.Phase()
	gen, ids := d.m.Generation()
	left := d.phase != machine.Waiting && ph != machine.Done && (ph == machine.Waiting || gen != d.gen)
	if left {
		if boundary(d.phase) && !d.aborted {
			// Why the world is re-formed between two steps.
			switch {
			case len(d.leaving) > 0:
				c.log.Info("shrinking the world at a step boundary: a node leaves", "gen", d.gen, "size", len(d.ids), "applied", d.m.Applied())
			case d.lostRank:
				c.log.Warn("world lost a rank between steps", "gen", d.gen, "applied", d.m.Applied())
			default:
				c.log.Info("growing the world at a step boundary", "gen", d.gen, "size", len(d.ids), "ready", d.readyNodes(), "applied", d.m.Applied())
			}
		}
		d.logWaiting()
	}
	if ph != machine.Waiting && ph != machine.Forming && ph != machine.Done && gen > d.formed {
		d.formed, d.ids = gen, ids
		clear(d.leaving)
		d.lostRank = false
		c.log.Info("generation formed", "gen", gen, "size", len(ids), "nodes", ids, "spares", d.readyNodes()-len(ids), "applied", d.m.Applied())
		c.metrics.world(len(ids), gen)
		c.dash.World(gen, ids)
	}
	d.phase, d.gen = ph, gen
}

// logWaiting shows that the world dissolved and the machine waits for
// nodes.
func (d *driver) logWaiting() {
	c := d.c
	need := c.cfg.Cluster.MinNodes
	if d.formed > 0 {
		need = 1 // survivors carry on; min_nodes gates only the first world
	}
	c.metrics.world(0, d.gen)
	c.dash.World(d.gen, nil)
	c.log.Info("waiting for nodes", "need", need, "settle", c.cfg.Cluster.Settle, "wait_timeout", c.cfg.Cluster.WaitTimeout)
}

// readyNodes counts the live sessions whose trainer is set up.
func (d *driver) readyNodes() int {
	n := 0
	for _, ds := range d.live {
		if ds.ready {
			n++
		}
	}
	return n
}

// noNodes words the machine's exit-4 error for the operator: the
// setting that ran out, and which checkpoint to resume from.
func (d *driver) noNodes(err error) error {
	c := d.c
	var waited, need, have int
	if err != nil {
		if _, e := fmt.Sscanf(err.Error(), "waited %d ticks for %d set-up node(s), have %d", &waited, &need, &have); e == nil {
			return fmt.Errorf("waited cluster.wait_timeout (%s) for %d ready node(s), have %d; %s", c.cfg.Cluster.WaitTimeout, need, have, c.resumeAdvice())
		}
		if strings.HasPrefix(err.Error(), "no node holds the state of step ") {
			msg, _, _ := strings.Cut(err.Error(), " and no checkpoint")
			return fmt.Errorf("%s and no checkpoint of it was written; %s", msg, c.resumeAdvice())
		}
		return err
	}
	return errors.New("no nodes")
}

// inWorld reports whether id is a rank of the generation last formed.
func (d *driver) inWorld(id string) bool { return slices.Contains(d.ids, id) }

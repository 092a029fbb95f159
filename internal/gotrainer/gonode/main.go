// Command gonode is a ringtune node with the pure-Go trainer of package
// gotrainer, for cluster tests: gonode join --coordinator ... --key-file ...
// Exit codes: 0 the run ended normally (or the node left on SIGTERM/SIGINT),
// 1 any error, 70 a panic (agent.ExitCode).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/internal/gotrainer"
	"github.com/ringtune/ringtune/node/agent"
)

func main() {
	root := &cobra.Command{Use: "gonode", SilenceUsage: true, SilenceErrors: true}
	factory := gotrainer.New
	// GONODE_STEP_DELAY slows every micro-batch down, so that tests can
	// kill a node while a run is in progress.
	if d, err := time.ParseDuration(os.Getenv("GONODE_STEP_DELAY")); err == nil && d > 0 {
		factory = func() (agent.Trainer, error) {
			t, err := gotrainer.New()
			return slow{t, d}, err
		}
	}
	// GONODE_PERTURB_AT_STEP=k is a test-only fault: after applying
	// committed step k (0-based) this node adds 1e-3 to one parameter, so
	// that its replica silently diverges from the others' and the
	// coordinator's digest check must catch it.
	if v := os.Getenv("GONODE_PERTURB_AT_STEP"); v != "" {
		k, err := strconv.Atoi(v)
		if err != nil || k < 0 {
			fmt.Fprintf(os.Stderr, "gonode: GONODE_PERTURB_AT_STEP=%q is not a step number\n", v)
			os.Exit(1)
		}
		inner := factory
		factory = func() (agent.Trainer, error) {
			t, err := inner()
			return &perturb{Trainer: t, at: k}, err
		}
	}
	root.AddCommand(agent.Command(factory))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gonode:", err)
		os.Exit(agent.ExitCode(err))
	}
}

type slow struct {
	agent.Trainer
	d time.Duration
}

func (s slow) Accumulate(b *data.Batch) (float64, int, error) {
	time.Sleep(s.d)
	return s.Trainer.Accumulate(b)
}

// perturb changes one parameter after applying step at.
type perturb struct {
	agent.Trainer
	at int
}

func (p *perturb) Apply(step, globalCount int) error {
	if err := p.Trainer.Apply(step, globalCount); err != nil || step != p.at {
		return err
	}
	st, err := p.State()
	if err != nil {
		return err
	}
	st.Params[0] += 1e-3
	fmt.Fprintf(os.Stderr, "gonode: fault injected: parameter 0 perturbed after step %d\n", step)
	return p.SetState(st)
}

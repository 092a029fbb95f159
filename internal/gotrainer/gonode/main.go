// Command gonode is a ringtune node with the pure-Go trainer of package
// gotrainer, for cluster tests: gonode join --coordinator ... --key-file ...
// Exit codes: 0 the run ended normally, 1 any error.
package main

import (
	"fmt"
	"os"
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
	root.AddCommand(agent.Command(factory))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gonode:", err)
		os.Exit(1)
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

// Command node is ringtune's worker. Each subcommand lives in its own file;
// this file holds only the root command and the exit path.
package main

import (
	"fmt"
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/node/agent"
)

func main() {
	os.Exit(run())
}

// run returns the exit code: 0, 1 for any error, agent.ExitPanic (70) for a
// panic, recovered here when it happens outside the join loop (which
// recovers its own).
func run() (code int) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintln(os.Stderr, "node:", &agent.PanicError{Value: p, Stack: debug.Stack()})
			code = agent.ExitPanic
		}
	}()
	root := &cobra.Command{
		Use:           "node",
		Short:         "ringtune worker: training node, prediction and evaluation",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(joinCmd(), predictCmd(), evalCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		return agent.ExitCode(err)
	}
	return 0
}

// Command node is ringtune's worker. Each subcommand lives in its own file;
// this file holds only the root command and the exit path.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "node",
		Short:         "ringtune worker: training node, prediction and evaluation",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(joinCmd(), predictCmd(), evalCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}

// Command gonode is a ringtune node with the pure-Go trainer of package
// gotrainer, for cluster tests: gonode join --coordinator ... --key-file ...
// Exit codes: 0 the run ended normally, 1 any error.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/internal/gotrainer"
	"github.com/ringtune/ringtune/node/agent"
)

func main() {
	root := &cobra.Command{Use: "gonode", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(agent.Command(gotrainer.New))
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "gonode:", err)
		os.Exit(1)
	}
}

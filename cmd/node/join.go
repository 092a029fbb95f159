package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/model/torch"
	"github.com/ringtune/ringtune/node"
	"github.com/ringtune/ringtune/node/agent"
)

// joinCmd is `node join`: the cluster protocol of node/agent driving the
// libtorch trainer of package node. --device is checked against this
// binary's libtorch before anything joins: a CPU build asked for cuda:0, or
// a GPU host with fewer devices, fails at once with what to do, instead of
// after the coordinator has formed a world around this node.
func joinCmd() *cobra.Command {
	cmd := agent.Command(node.NewTrainer)
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		if f := c.Flags().Lookup("device"); f != nil {
			dev, err := torch.ParseDevice(f.Value.String())
			if err != nil {
				return fmt.Errorf("--device: %w", err)
			}
			if err := dev.Check(); err != nil {
				return fmt.Errorf("--device: %w", err)
			}
		}
		if prev != nil {
			return prev(c, args)
		}
		return nil
	}
	return cmd
}

package main

import (
	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/node"
	"github.com/ringtune/ringtune/node/agent"
)

// joinCmd is `node join`: the cluster protocol of node/agent driving the
// libtorch trainer of package node.
func joinCmd() *cobra.Command { return agent.Command(node.NewTrainer) }

// Command coordinator runs a ringtune training job:
//
//	coordinator --config cluster.yaml [--resume] [--train.lr 3e-5 ...]
//	coordinator keygen cluster.key
//
// Every configuration key can be overridden by a flag named by its key path
// (see config.RegisterFlags). Exit codes:
//
//	0    training finished and the model was written to output.dir
//	1    the run failed (nodes kept failing, I/O error, ...)
//	2    bad input: flags, config, key file, model directory, dataset, an
//	     address or directory already in use, --resume of a checkpoint of a
//	     different run, or a model that every node failed to load
//	     (docs/errors.md lists the cases)
//	3    replicas diverged (parameter digests disagree)
//	70   internal error: the coordinator panicked (a bug; nodes are told
//	     the run failed)
//	130  interrupted by SIGINT or SIGTERM
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/coordinator"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) (code int) {
	// The run loop recovers its own panics (coordinator.ExitPanic, after
	// telling the nodes); this catches one anywhere else on this goroutine.
	defer func() {
		if p := recover(); p != nil {
			err := coordinator.PanicError(p)
			fmt.Fprintln(os.Stderr, "coordinator:", err)
			code = coordinator.ExitCode(err)
		}
	}()
	var cfgPath, logLevel string
	var resume bool
	root := &cobra.Command{
		Use:           "coordinator",
		Short:         "Coordinate a ringtune data-parallel training run",
		Args:          usageArgs(cobra.NoArgs),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" {
				return usageErr(errors.New("--config is required"))
			}
			cfg, err := config.Load(cfgPath, cmd.Flags())
			if err != nil {
				return usageErr(err)
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return usageErr(fmt.Errorf("--log-level: %w", err))
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			c, err := coordinator.New(coordinator.Options{Config: cfg, Resume: resume, Log: log, Progress: os.Stdout})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := c.Run(ctx); err != nil {
				if ctx.Err() != nil {
					return &coordinator.Error{Code: coordinator.ExitInterrupted, Err: fmt.Errorf("interrupted: %w", err)}
				}
				return err
			}
			log.Info("done", "output", cfg.Output.Dir)
			return nil
		},
	}
	root.Flags().StringVar(&cfgPath, "config", "", "YAML configuration file (required)")
	root.Flags().BoolVar(&resume, "resume", false, "restart from the newest valid checkpoint in checkpoint.dir")
	root.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	config.RegisterFlags(root.Flags())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr(err) })

	root.AddCommand(&cobra.Command{
		Use:           "keygen FILE",
		Short:         "Write a new random cluster key to FILE (mode 0600)",
		Args:          usageArgs(cobra.ExactArgs(1)),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(_ *cobra.Command, args []string) error {
			// The key often goes into a run directory that does not exist yet.
			if err := os.MkdirAll(filepath.Dir(args[0]), 0o700); err != nil {
				return usageErr(fmt.Errorf("keygen: %w", err))
			}
			if _, err := auth.WriteKeyFile(args[0]); err != nil {
				return usageErr(err)
			}
			return nil
		},
	})
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		fmt.Fprintln(os.Stderr, "coordinator:", err)
	}
	return coordinator.ExitCode(err)
}

// usageArgs makes cobra's argument errors (unknown command, missing file)
// usage errors, exit 2, like the flag errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageErr(err)
		}
		return nil
	}
}

func usageErr(err error) error {
	return &coordinator.Error{Code: coordinator.ExitBadInput, Err: err}
}

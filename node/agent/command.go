package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/auth"
)

// Command returns the "join" command that runs a node with trainers from
// factory. cmd/node registers it with the libtorch trainer; test binaries
// with a pure-Go one. On SIGTERM or SIGINT the node leaves at the next step
// boundary and the command returns nil (exit 0): a leave that was asked for
// is not a failure. Errors are returned, not printed: the caller maps them
// to exit codes.
func Command(factory Factory) *cobra.Command {
	var cfg Config
	var keyFile, logLevel, pprofAddr string
	cmd := &cobra.Command{
		Use:   "join",
		Short: "Join a ringtune cluster as a training node",
		Long: `join connects to the coordinator's gossip address with the cluster key,
receives the model, settings and data over the network, and trains until the
coordinator ends the run. SIGTERM/SIGINT leave at the next step boundary
and exit 0.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := auth.LoadKeyFile(keyFile)
			if err != nil {
				return err
			}
			cfg.Key = key
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			if pprofAddr != "" {
				stop, err := servePprof(pprofAddr, cfg.Log)
				if err != nil {
					return err
				}
				defer stop()
			}
			a, err := New(cfg, factory)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err = a.Run(ctx)
			if sig := ctx.Err(); sig != nil && cmd.Context().Err() == nil && errors.Is(err, sig) {
				// Run ended because of the signal, at a step boundary:
				// the leave was asked for and went as promised.
				cfg.Log.Info("left the cluster on a signal")
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Coordinator, "coordinator", "", "coordinator's gossip address host:port (required)")
	f.StringVar(&keyFile, "key-file", "", "cluster key file (required)")
	f.StringVar(&cfg.Device, "device", "cpu", "device for the trainer: cpu, cuda:N")
	f.StringVar(&cfg.Bind, "bind", "0.0.0.0:7946", "gossip listen address host:port (port 0 picks one)")
	f.StringVar(&cfg.Advertise, "advertise", "", "gossip address other members use, when not --bind's (NAT)")
	f.StringVar(&cfg.RingAddr, "ring", "", "ring gRPC listen address (default: --bind's host, any port)")
	f.StringVar(&cfg.Name, "name", "", "unique node id (default host-pid-random)")
	f.StringVar(&cfg.Label, "label", "ringtune", "cluster label; must equal the coordinator's cluster.label")
	f.StringVar(&cfg.CacheDir, "cache-dir", "", "model file cache (default $XDG_CACHE_HOME/ringtune/blobs)")
	f.DurationVar(&cfg.JoinTimeout, "join-timeout", 30*time.Second, "give up joining the cluster after this long")
	f.DurationVar(&cfg.RejoinTimeout, "rejoin-timeout", 2*time.Minute, "after losing the coordinator (restarted, or a false suspicion), keep the trainer state and try to join again for this long; negative: exit at once")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "this node's PEM certificate, when the coordinator uses cluster.tls files (default: derived from the key)")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "the PEM key of --tls-cert")
	f.StringVar(&cfg.TLSCA, "tls-ca", "", "the cluster's PEM CA certificate (cluster.tls.ca)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&pprofAddr, "pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060), for profiling a step; off by default")
	_ = cmd.MarkFlagRequired("coordinator")
	_ = cmd.MarkFlagRequired("key-file")
	return cmd
}

// servePprof serves the profiling endpoints on their own mux (not
// http.DefaultServeMux, so that nothing else a dependency registers is
// exposed) and returns a function that stops the server.
func servePprof(addr string, log *slog.Logger) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--pprof %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(lis) }()
	log.Info("pprof serving", "addr", lis.Addr().String())
	return func() { _ = srv.Close() }, nil
}

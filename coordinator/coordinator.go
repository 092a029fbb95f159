// Package coordinator runs a ringtune training job: it loads and tokenizes
// the dataset once, discovers nodes by gossip, forms generations (ordered
// rings of nodes), streams every rank its micro-batches step by step,
// commits a step only when every rank has all-reduced it, handles failures
// by aborting the step and forming a new generation from the survivors,
// compares parameter digests, evaluates, checkpoints and exports the model.
//
// The protocol's rules (who forms a generation, where the state comes from,
// when a step commits or aborts, every deadline) are the pure state machine
// of coordinator/machine, tested without a network. This package is its
// driver (driver*.go: sessions, gossip, clock, disk, displays) and what
// the machine needs around it: the inputs checked once (New, pin.go,
// dirlock.go), the data cut into micro-batches (logic.go, tasks.go), the
// servers (this file: control and bulk planes, metrics.go, dashboard.go)
// and the checkpoint files (checkpoint.go).
package coordinator

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hfspec"
)

// Exit codes of the coordinator command (see ExitCode).
const (
	ExitOK       = 0 // training finished and the model was written
	ExitFailure  = 1 // the run failed (too many aborts, I/O error, ...)
	ExitBadInput = 2 // bad config, key, model directory or dataset, or an address in use
	ExitDiverged = 3 // replicas' parameter digests disagree
	ExitNoNodes  = 4 // no (or too few) nodes for cluster.wait_timeout, or none holds the state
	// ExitPanic is a bug: the coordinator panicked. It is neither 0 nor the
	// bad-input code 2 (which is what Go's runtime uses for an unrecovered
	// panic), so that scripts never take a crash for success or for a
	// user's mistake.
	ExitPanic       = 70  // EX_SOFTWARE of sysexits.h
	ExitInterrupted = 130 // stopped by SIGINT/SIGTERM
)

// Error carries an exit code.
type Error struct {
	Code int
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func badInput(err error) error { return &Error{Code: ExitBadInput, Err: err} }

// ExitCode maps an error from New or Run to the process exit code.
func ExitCode(err error) int {
	var e *Error
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &e):
		return e.Code
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	return ExitFailure
}

// Options configure a coordinator.
type Options struct {
	Config *config.Config
	// Resume restarts from the newest valid checkpoint in checkpoint.dir.
	Resume bool
	// Log receives structured log lines (default: discard).
	Log *slog.Logger
	// Progress receives the progress display: a bar when it is a terminal,
	// plain lines otherwise (nil: none).
	Progress io.Writer
	// MaxAborts bounds consecutive failed attempts: aborted steps, failed
	// generations, evaluations or transfers (default 10).
	MaxAborts int
}

// Coordinator is one training run.
type Coordinator struct {
	cfg  *config.Config
	opts Options
	log  *slog.Logger
	key  auth.Key
	// tls is nil when cluster.tls.enabled is false; tlsMode is gossiped
	// so that nodes follow (control.TLSDerived, TLSFiles or empty).
	tls     *auth.TLSConfigs
	tlsMode string
	task    data.Task
	mask    *data.MaskConfig // masked_lm only
	tok     *data.Tokenizer  // nil for pre-tokenized data without one
	pad     int              // padding token id
	train   []data.Encoded
	eval    []data.Encoded
	files   []control.FileInfo
	paths   map[string]string // sha256 → path
	sched   *Schedule
	total   int
	job     *control.Job

	// Run's state, touched only by Run's goroutine (the driver's): the
	// relays' events, the live sessions (for the final stop), and what
	// the displays show of the run.
	events   chan event
	sessions map[string]*session
	applied  int                         // committed steps
	reduced  map[string]*control.Reduced // the last step's reports, by node
	resumed  *Checkpoint                 // the checkpoint --resume started from, or the run rolled back to
	// served is the checkpoint the bulk plane serves (resumed), for the
	// gRPC handlers' goroutines.
	served   atomic.Pointer[Checkpoint]
	lastCkpt string // newest checkpoint written or resumed from
	grpcAddr string // advertised address of the control and bulk server
	stats    stats
	metrics  *metrics
	dash     *dashboard // nil without metrics.dashboard
	progress *progress

	// What New checked (pin.go, dirlock.go).
	pin     *RunPin
	params  int64  // parameters the model config implies (hfspec)
	cfgHash string // SHA-256 of config.json
	locks   []*dirLock
	ml      *memberlist.Memberlist
}

// stats are what the throughput shown counts from.
type stats struct {
	samples int       // trained on since start
	start   time.Time // the first step
}

// New validates the inputs: the key file, the model directory, the dataset
// and tokenizer. Errors name the file or key and carry ExitBadInput.
func New(opts Options) (*Coordinator, error) {
	cfg := opts.Config
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.MaxAborts <= 0 {
		opts.MaxAborts = 10
	}
	c := &Coordinator{cfg: cfg, opts: opts, log: opts.Log, task: data.Task(cfg.Model.Task)}
	if cfg.Cluster.KeyFile == "" {
		return nil, badInput(errors.New("cluster.key_file: required: nodes authenticate with it (create one with `coordinator keygen cluster.key` and copy it to every node host)"))
	}
	key, err := auth.LoadKeyFile(cfg.Cluster.KeyFile)
	if err != nil {
		return nil, badInput(fmt.Errorf("cluster.key_file: %w", err))
	}
	c.key = key
	if c.tls, c.tlsMode, err = ClusterTLS(cfg.Cluster.TLS, key); err != nil {
		return nil, badInput(err)
	}
	if err := c.loadModelDir(); err != nil {
		return nil, badInput(err)
	}
	if err := c.loadData(); err != nil {
		return nil, badInput(err)
	}
	c.sched = &Schedule{Seed: cfg.Train.Seed, N: len(c.train), GlobalBatch: cfg.Train.GlobalBatch, DropLast: cfg.Train.DropLast, Epochs: cfg.Train.Epochs, MaxSteps: cfg.Train.MaxSteps}
	if c.total, err = c.sched.Total(); err != nil {
		return nil, badInput(fmt.Errorf("data.train_file %s: %w", cfg.Data.TrainFile, err))
	}
	warm := cfg.Train.WarmupSteps
	if cfg.Train.WarmupRatio > 0 {
		warm = int(cfg.Train.WarmupRatio * float64(c.total))
	}
	t := cfg.Train
	c.job = &control.Job{
		RunID: fmt.Sprintf("%x", sha256.Sum256([]byte(fmt.Sprint(cfg.Model.Path, t.Seed, time.Now().UnixNano()))))[:16],
		Task:  cfg.Model.Task, NumLabels: cfg.Model.NumLabels, Labels: cfg.Model.Labels, Init: cfg.Model.Init, Seed: t.Seed,
		Train: control.TrainSpec{Optimizer: t.Optimizer, LR: t.LR, Schedule: t.Schedule, WarmupSteps: warm, WeightDecay: t.WeightDecay,
			Betas: t.Betas, Eps: t.Eps, Momentum: t.Momentum, MaxGradNorm: t.MaxGradNorm, Precision: t.Precision, Threads: t.Threads,
			ShardOptimizer: t.ShardOptimizer, SparseEmbedding: cfg.AllReduce.SparseEmbedding},
		TotalSteps: c.total, Files: c.files, ChunkBytes: cfg.AllReduce.ChunkBytes, Wire: cfg.AllReduce.Wire, TimeoutMS: cfg.AllReduce.Timeout.Milliseconds(),
		Transport: cfg.AllReduce.Transport, BucketBytes: cfg.AllReduce.BucketBytes, Overlap: cfg.AllReduce.Overlap, BulkChunkBytes: cfg.Cluster.BulkChunkBytes, BulkTimeoutMS: cfg.Cluster.BulkTimeout.Milliseconds(),
	}
	c.job.StepTimeoutMS = c.stepTimeout().Milliseconds()
	tokHash, err := hashFiles(tokenizerFiles(c.tok)...)
	if err != nil {
		return nil, badInput(fmt.Errorf("data.tokenizer: %w", err))
	}
	c.pin = &RunPin{Data: hashEncoded(c.train), Examples: len(c.train), Seed: t.Seed, GlobalBatch: t.GlobalBatch, DropLast: t.DropLast,
		Epochs: t.Epochs, MaxSteps: t.MaxSteps, Task: cfg.Model.Task, NumLabels: cfg.Model.NumLabels, Optimizer: t.Optimizer,
		ModelConfig: c.cfgHash, Params: c.params, Tokenizer: tokHash, RunID: c.job.RunID}
	// Lock last: bad input found above creates no directory.
	if err := c.lockDirs(); err != nil {
		return nil, badInput(err)
	}
	if opts.Resume {
		if err := c.loadCheckpoint(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// ClusterTLS returns the TLS configurations of cluster.tls and the mode the
// coordinator gossips: certificates from the files when given, otherwise
// derived from key; nil and "" when TLS is disabled. Errors name the key.
func ClusterTLS(t config.TLSConfig, key auth.Key) (*auth.TLSConfigs, string, error) {
	switch {
	case !t.Enabled:
		return nil, "", nil
	case t.Cert != "":
		tc, err := auth.FileTLS(t.Cert, t.Key, t.CA)
		if err != nil {
			return nil, "", fmt.Errorf("cluster.tls (cert, key, ca): %w", err)
		}
		return tc, control.TLSFiles, nil
	}
	tc, err := auth.DerivedTLS(key)
	if err != nil {
		return nil, "", fmt.Errorf("cluster.tls: %w", err)
	}
	return tc, control.TLSDerived, nil
}

func (c *Coordinator) loadModelDir() error {
	dir := c.cfg.Model.Path
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("model.path: model directory %s: %w", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("model.path: %s is not a directory; give a Hugging Face model directory", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("model.path: %w", err)
	}
	c.paths = map[string]string{}
	for _, e := range ents {
		if !e.Type().IsRegular() || e.Name()[0] == '.' {
			continue
		}
		p := filepath.Join(dir, e.Name())
		h, n, err := hashFile(p)
		if err != nil {
			return fmt.Errorf("model.path: %w", err)
		}
		c.files = append(c.files, control.FileInfo{Name: e.Name(), Size: n, SHA256: h})
		c.paths[h] = p
	}
	i := slices.IndexFunc(c.files, func(f control.FileInfo) bool { return f.Name == "config.json" })
	if i < 0 {
		return fmt.Errorf("model.path: %s has no config.json; give a Hugging Face model directory", dir)
	}
	c.cfgHash = c.files[i].SHA256
	// Check the model as the nodes will load it, so that a broken one is
	// bad input now rather than a failure on every node after the wait.
	m := c.cfg.Model
	chk, err := hfspec.CheckDir(dir, data.Task(m.Task), m.NumLabels, m.Init == config.InitPretrained)
	if err != nil {
		return fmt.Errorf("model.path: %w", err)
	}
	c.params = chk.Layout.Numel()
	return nil
}

// event is something that happened to a session, delivered to Run's loop.
type event struct {
	s    *session
	m    *control.Msg
	err  error // session ended
	open bool  // session opened
	dead string
	// deadRing is the ring address the dead member announced, which tells
	// an old instance's death from the current session's (a node restarted
	// under the same name).
	deadRing string
}

// session is the coordinator's view of one node.
type session struct {
	id      string
	ring    string // the node's ring (and bulk) address, from gossip
	out     chan *control.Msg
	cancel  context.CancelFunc
	applied int  // committed steps the node's process holds (hello), -1: none
	gone    bool // the driver closed or released it
}

func (s *session) send(m *control.Msg) {
	m.V = control.Version
	select {
	case s.out <- m:
	default:
		// The node is not reading: treat it as lost rather than block.
		s.cancel()
	}
}

// Run trains to the end. ctx cancellation stops the run (nodes are told to
// leave) and returns context.Canceled.
func (c *Coordinator) Run(ctx context.Context) (err error) {
	defer c.Close()
	cfg := c.cfg.Cluster
	c.events = make(chan event, 1024)
	c.sessions = map[string]*session{}
	c.stats.start = time.Now()
	c.progress = newProgress(c.opts.Progress, c.total)

	lis, err := net.Listen("tcp", cfg.GRPC)
	if err != nil {
		return badInput(fmt.Errorf("cluster.grpc: listen on %s: %w", cfg.GRPC, err))
	}
	var serverTLS *tls.Config
	if c.tls != nil {
		serverTLS = c.tls.Server
	}
	gs := grpc.NewServer(control.ServerOptions(c.key, serverTLS)...)
	control.Register(gs, c.serveSession)
	// The bulk plane shares the control server and its options (auth, later
	// TLS): nodes pull model files and, after --resume, the checkpoint here.
	bs, err := bulk.NewServer(c.key, c.bulkSource, c.cfg.Cluster.BulkTimeout)
	if err != nil {
		_ = lis.Close()
		return err
	}
	bs.Register(gs)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	defer func() {
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second):
			gs.Stop()
		}
		<-served
	}()

	grpcAddr := lis.Addr().String()
	if h, p, _ := net.SplitHostPort(grpcAddr); net.ParseIP(h).IsUnspecified() {
		adv := cfg.Advertise
		if adv == "" {
			adv = cfg.Bind
		}
		ah, _, _ := net.SplitHostPort(adv)
		if ip := net.ParseIP(ah); ip == nil || ip.IsUnspecified() {
			ah = "127.0.0.1"
			if ip := control.FirstPrivateIP(); ip != "" {
				ah = ip
			}
		}
		grpcAddr = net.JoinHostPort(ah, p)
	}
	c.grpcAddr = grpcAddr
	meta, err := control.Meta{ID: control.CoordinatorID, Role: control.RoleCoordinator, GRPC: grpcAddr, Version: "ringtune/0.1", TLS: c.tlsMode}.Encode()
	if err != nil {
		return badInput(err)
	}
	ml, err := control.NewMemberlist(control.GossipConfig{Name: control.CoordinatorID, Bind: cfg.Bind, Advertise: cfg.Advertise, Label: cfg.Label, Key: c.key, Delegate: control.StaticMeta(meta), Events: gossipEvents{c.events}})
	if err != nil {
		return badInput(fmt.Errorf("cluster.bind: %w", err))
	}
	c.ml = ml
	defer func() { _ = ml.Shutdown() }()
	c.log.Info("coordinator up", "gossip", fmt.Sprintf("%s:%d", ml.LocalNode().Addr, ml.LocalNode().Port), "grpc", grpcAddr, "steps", c.total, "train", len(c.train), "eval", len(c.eval))

	if c.cfg.Metrics.Address != "" {
		stop, err := c.serveMetrics()
		if err != nil {
			return badInput(err)
		}
		defer stop()
	}
	if c.cfg.Metrics.Dashboard != "" {
		c.dash = newDashboard(c.job.RunID, c.cfg.Model.Task, c.total)
		stop, err := c.serveDashboard()
		if err != nil {
			return badInput(err)
		}
		defer stop()
	}

	// The stop message says whether the run failed, so that a node of a
	// failed run (replicas diverged, too many aborts) does not exit 0.
	defer func() { c.stopAll(err) }()
	err = c.safeTrain(ctx)
	c.progress.finish()
	return err
}

// safeTrain is drive with a panic turned into an ExitPanic error, so that
// the deferred stop still tells every node that the run failed (a panic
// must never read as a finished run on the nodes).
func (c *Coordinator) safeTrain(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = PanicError(p)
		}
	}()
	return c.drive(ctx)
}

// PanicError turns a recovered panic value into an error carrying
// ExitPanic and the stack of the panicking goroutine.
func PanicError(p any) error {
	return &Error{Code: ExitPanic, Err: fmt.Errorf("internal error (a bug; please report it with this message): panic: %v\n%s", p, debug.Stack())}
}

type gossipEvents struct{ ch chan<- event }

func (g gossipEvents) NotifyJoin(*memberlist.Node)   {}
func (g gossipEvents) NotifyUpdate(*memberlist.Node) {}
func (g gossipEvents) NotifyLeave(n *memberlist.Node) {
	ev := event{dead: n.Name}
	if meta, err := control.DecodeMeta(n.Meta); err == nil {
		ev.deadRing = meta.GRPC
	}
	select {
	case g.ch <- ev:
	default:
	}
}

// serveSession is the gRPC handler of one node's session: it reads the
// hello, then relays messages both ways until either side ends.
func (c *Coordinator) serveSession(st control.Stream) (err error) {
	// gRPC does not recover handler panics: one here would kill the
	// process. It ends this session only.
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("session handler panicked", "err", PanicError(p))
			err = errors.New("internal error in the coordinator's session handler")
		}
	}()
	first, err := st.Recv()
	if err != nil {
		return err
	}
	if first.Type != control.TypeHello {
		return fmt.Errorf("first message must be hello, got %q", first.Type)
	}
	h := first.Hello
	if h.Proto != control.Version {
		return fmt.Errorf("node %s speaks protocol %d, coordinator %d", h.ID, h.Proto, control.Version)
	}
	if err := control.CheckNodeID(h.ID); err != nil {
		c.log.Warn("session refused", "node", h.ID, "err", err)
		return err
	}
	// Single-use credentials: the session is bound to a challenge-response
	// over nonces of both sides, so a replayed hello cannot open it.
	if err := control.ServerHandshake(st, c.key, first); err != nil {
		c.log.Warn("session refused", "node", h.ID, "err", err)
		return err
	}
	// The node's gossip join may still be propagating when its session
	// arrives: look for it for a few seconds before refusing.
	ring := ""
	for wait := time.Now().Add(5 * time.Second); ring == "" && time.Now().Before(wait); {
		for _, m := range c.ml.Members() {
			if m.Name == h.ID {
				// Only a member announcing itself as a node: the
				// coordinator's own entry or another role is no node.
				if meta, err := control.DecodeMeta(m.Meta); err == nil && meta.Role == control.RoleNode && meta.ID == h.ID {
					ring = meta.GRPC
				}
			}
		}
		if ring == "" {
			select {
			case <-st.Context().Done():
				return st.Context().Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if ring == "" {
		c.log.Warn("session refused", "node", h.ID, "err", "not a node of the gossip cluster")
		return fmt.Errorf("node %s is not a node of the gossip cluster; join it first", h.ID)
	}
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	s := &session{id: h.ID, ring: ring, out: make(chan *control.Msg, c.cfg.Cluster.QueueDepth), cancel: cancel, applied: h.Applied}
	c.events <- event{s: s, open: true}
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			c.events <- event{s: s, m: m}
		}
	}()
	for {
		select {
		case m := <-s.out:
			if err := st.Send(m); err != nil {
				c.events <- event{s: s, err: fmt.Errorf("send to node %s: %w", s.id, err)}
				return err
			}
		case err := <-recvErr:
			c.events <- event{s: s, err: recvEnd(s.id, err)}
			return nil
		case <-ctx.Done():
			if st.Context().Err() != nil {
				// The node hung up. What it sent last (a failure report,
				// say) may still be on its way through the reader: the
				// session's end must not overtake it.
				c.events <- event{s: s, err: recvEnd(s.id, <-recvErr)}
				return nil
			}
			c.events <- event{s: s, err: fmt.Errorf("node %s dropped by the coordinator", s.id)}
			return errors.New("dropped by the coordinator")
		}
	}
}

// recvEnd says why a session's reader stopped.
func recvEnd(id string, err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("node %s left", id)
	}
	return fmt.Errorf("node %s: %w", id, err)
}

// stopAll tells every node that the run is over; failure, when not nil, is
// why the run failed.
func (c *Coordinator) stopAll(failure error) {
	m := control.Msg{Type: control.TypeStop, Reason: "run over"}
	if failure != nil {
		m.Reason, m.Error = "run failed", failure.Error()
	}
	for _, s := range c.sessions {
		mm := m // send sets fields; each session's sender reads its own copy
		s.send(&mm)
	}
	// Give the stop messages a moment to leave before the server stops.
	deadline := time.After(2 * time.Second)
	for _, s := range c.sessions {
		for len(s.out) > 0 {
			select {
			case <-deadline:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}

// testHookCommitted, when set (by tests only), runs after each commit on
// Run's goroutine, e.g. to inject a panic.
var testHookCommitted func(step int)

// clientTLS is the TLS configuration for dialing nodes' servers (the bulk
// plane), nil when cluster.tls.enabled is false.
func (c *Coordinator) clientTLS() *tls.Config {
	if c.tls == nil {
		return nil
	}
	return c.tls.Client
}

func checkExportName(n string) error {
	if n == "" || n != filepath.Base(n) || n[0] == '.' {
		return fmt.Errorf("export file name %q is not a plain file name", n)
	}
	return nil
}

// stepTimeout bounds one step: computing plus the ring's own deadline.
func (c *Coordinator) stepTimeout() time.Duration { return 2*c.cfg.AllReduce.Timeout + 30*time.Second }

func (c *Coordinator) account(g int) {
	var loss, n float64
	samples := 0
	var optMax int64
	for id, r := range c.reduced {
		loss += r.LossSum
		n += float64(r.Count)
		samples += r.Samples
		c.metrics.optimizer(id, r.OptimizerBytes)
		optMax = max(optMax, r.OptimizerBytes)
	}
	c.stats.samples += samples
	el := time.Since(c.stats.start).Seconds()
	rate := float64(c.stats.samples) / max(el, 1e-9)
	mean := loss / max(n, 1)
	epoch, _, _ := c.sched.Locate(g)
	c.metrics.step(c.applied, epoch, mean, rate, samples)
	c.dash.Step(c.applied, epoch, mean, rate, samples)
	if c.dash != nil || c.metrics != nil {
		for id, r := range c.reduced {
			m := nodeMetrics(r)
			c.metrics.node(id, m)
			c.dash.NodeStep(id, g, m)
		}
	}
	c.progress.update(c.applied, epoch, mean, rate)
	ph := phasesOf(c.reduced)
	c.metrics.stepPhases(ph)
	c.log.Debug("step committed", "step", g, "loss", mean, "comm_ms", ph.CommMS, "overlapped_comm_ms", ph.OverlappedMS,
		"exposed_comm_ms", ph.ExposedMS, "apply_ms", ph.ApplyMS, "buckets", ph.Buckets, "optimizer_bytes_max", optMax)
}

// reportEval logs, shows and exports the evaluation sums of every rank
// after c.applied committed steps.
func (c *Coordinator) reportEval(sum control.EvalSums) {
	res := Metrics(c.task, c.cfg.Model.NumLabels, sum)
	keys := make([]string, 0, len(res))
	for k := range res {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []any{"applied", c.applied}
	var line strings.Builder
	fmt.Fprintf(&line, "eval after step %d:", c.applied)
	for _, k := range keys {
		args = append(args, k, res[k])
		c.metrics.eval(k, res[k])
		if k == "count" {
			continue
		}
		fmt.Fprintf(&line, " %s %.4g", k, res[k])
	}
	unit := "examples"
	if c.task == data.CausalLM || c.task == data.MaskedLM || c.task == data.TokenClassification {
		unit = "tokens" // the loss and metrics count tokens, not sentences
	}
	fmt.Fprintf(&line, " (%d %s)", int(res["count"]), unit)
	c.log.Info("evaluation", args...)
	c.dash.Eval(c.applied, res)
	c.progress.note(line.String())
}

// pullDir fetches files of export req from the node at addr into a fresh
// temporary directory next to dir and renames it into place. A transfer
// error comes back as err, a local file-system error as diskErr; either way
// the temporary directory is removed and dir is left as it was.
func pullDir(ctx context.Context, dir, addr string, key auth.Key, tlsConf *tls.Config, req int, files []control.FileInfo, chunk int, timeout time.Duration) (diskErr, err error) {
	for _, f := range files {
		if err := checkExportName(f.Name); err != nil {
			return nil, err
		}
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err, nil
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return err, nil
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err, nil
	}
	cc, err := bulk.Dial(addr, key, tlsConf)
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	for _, f := range files {
		out, err := os.OpenFile(filepath.Join(tmp, f.Name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err, nil
		}
		if err := out.Chmod(0o644); err != nil { // whatever the umask
			_ = out.Close()
			return err, nil
		}
		// The file is written on the sink's goroutine while the next
		// chunks arrive and are hashed (see bulk.FileSink).
		sink, err := bulk.NewFileSink(out, 0)
		if err != nil {
			_ = out.Close()
			return err, nil
		}
		// CRC-32C on the wire, the file's SHA-256 checked here alone (the
		// node hashed the file when it wrote the export).
		_, ferr := bulk.Fetch(ctx, cc, bulk.Request{Kind: bulk.KindExport, Name: f.Name, Req: req, ChunkBytes: chunk, Sum: bulk.SumCRC32C}, sink, timeout, f.SHA256)
		if err := sink.Close(); err != nil {
			_ = out.Close()
			return err, nil // a write error: the sink names the file
		}
		if ferr != nil {
			_ = out.Close()
			return nil, ferr
		}
		if err := out.Sync(); err != nil {
			_ = out.Close()
			return err, nil
		}
		if err := out.Close(); err != nil {
			return err, nil
		}
	}
	if err := replaceDir(tmp, dir); err != nil {
		return err, nil
	}
	ok = true
	return nil, nil
}

// replaceDir renames the complete directory tmp to dir, replacing an older
// dir (moved aside first, removed after).
func replaceDir(tmp, dir string) error {
	old := ""
	if _, err := os.Stat(dir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	if old != "" {
		_ = os.RemoveAll(old)
	}
	if d, err := os.Open(filepath.Dir(dir)); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

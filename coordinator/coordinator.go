// Package coordinator runs a ringtune training job: it loads and tokenizes
// the dataset once, discovers nodes by gossip, forms generations (ordered
// rings of nodes), streams every rank its micro-batches step by step,
// commits a step only when every rank has all-reduced it, handles failures
// by aborting the step and forming a new generation from the survivors,
// compares parameter digests, evaluates, checkpoints and exports the model.
//
// The protocol rules (world formation, the commit rule, the ledger) live in
// logic.go and are tested without a network; this file is the thin event
// loop around them.
package coordinator

import (
	"bufio"
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
	"sync"
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
	// MaxAborts bounds consecutive aborts of one step (default 10).
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

	// loop state, touched only by Run's goroutine
	events   chan event
	sessions map[string]*session
	changed  time.Time // last membership change
	gen      uint64
	world    []*session
	applied  int
	round    *Round
	reduced  map[string]*control.Reduced
	digests  map[int]map[string]string
	fatal    error
	req      int
	answers  map[string]*control.Msg // per-request answers (eval)
	loaded   map[string]*control.Msg // answers to pull, by node
	// pulling holds the ranks the outstanding pull (request pullReq) went
	// to: only they may answer it, once each.
	pulling  map[string]bool
	pullReq  int
	exported *control.Msg // answer to the export request c.req
	// exportFrom is the session the export request is outstanding with
	// (nil when none): answers from others are dropped.
	exportFrom *session
	resumed    *Checkpoint // the checkpoint --resume started from, or the run rolled back to
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
	// setupFailed holds the nodes that failed to set up the model before the
	// first generation, with their errors: when every node fails, the model
	// or job is bad and waiting for more nodes is pointless.
	setupFailed map[string]string

	mu sync.Mutex // guards sessions for the gRPC handlers
	ml *memberlist.Memberlist
}

type stats struct {
	lossSum, count float64
	samples        int
	start          time.Time
	lastEval       string
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
	ring    string
	out     chan *control.Msg
	cancel  context.CancelFunc
	ready   bool // trainer set up
	applied int
	gone    bool
	rank    int
	// leaving: the node asked to leave (SIGTERM); it gets no new
	// generation and is released at the next step boundary.
	leaving bool
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
	c.digests = map[int]map[string]string{}
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

// safeTrain is train1 with a panic turned into an ExitPanic error, so that
// the deferred stop still tells every node that the run failed (a panic
// must never read as a finished run on the nodes).
func (c *Coordinator) safeTrain(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = PanicError(p)
		}
	}()
	return c.train1(ctx)
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
	s := &session{id: h.ID, ring: ring, out: make(chan *control.Msg, c.cfg.Cluster.QueueDepth), cancel: cancel, applied: h.Applied, rank: -1}
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
// the run loop, e.g. to inject a panic.
var testHookCommitted func(step int)

// errBroken means the current world lost a rank; the caller forms a new
// generation.
var errBroken = errors.New("world broken")

// pump handles events until done() is true, the world breaks (if watch),
// the deadline passes (returns the silent-node error), or ctx ends.
func (c *Coordinator) pump(ctx context.Context, timeout time.Duration, watch bool, done func() bool) error {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	for {
		if c.fatal != nil {
			return c.fatal
		}
		if done() {
			return nil
		}
		if watch && c.worldBroken() {
			return errBroken
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errTimeout
		case ev := <-c.events:
			c.handle(ev)
		}
	}
}

var errTimeout = errors.New("deadline passed")

func (c *Coordinator) worldBroken() bool {
	for _, s := range c.world {
		if s.gone {
			return true
		}
	}
	return false
}

func (c *Coordinator) handle(ev event) {
	switch {
	case ev.open:
		if old, ok := c.sessions[ev.s.id]; ok && !old.gone {
			c.log.Warn("duplicate node id refused", "node", ev.s.id)
			ev.s.cancel()
			return
		}
		c.sessions[ev.s.id] = ev.s
		c.changed = time.Now()
		c.log.Info("node connected", "node", ev.s.id, "ring", ev.s.ring)
		ev.s.send(&control.Msg{Type: control.TypeJob, Job: c.job})
		c.dash.Connected(ev.s.id)
	case ev.dead != "":
		s, ok := c.sessions[ev.dead]
		switch {
		case !ok || s.gone:
		case ev.deadRing != "" && ev.deadRing != s.ring:
			// The death of an earlier instance of this name, reported
			// after a restarted node opened its session: the live session
			// stays (issue 11, defect 13).
			c.log.Info("gossip reports an earlier instance dead; its restarted session stays", "node", ev.dead, "dead_ring", ev.deadRing, "ring", s.ring)
		default:
			c.log.Warn("gossip reports node dead", "node", ev.dead)
			c.lose(s)
		}
	case ev.err != nil:
		if c.sessions[ev.s.id] == ev.s && !ev.s.gone {
			c.log.Warn("session ended", "node", ev.s.id, "err", ev.err)
			c.lose(ev.s)
		}
	case ev.m != nil:
		if c.sessions[ev.s.id] != ev.s || ev.s.gone {
			return
		}
		if err := c.onMsg(ev.s, ev.m); err != nil {
			c.log.Warn("bad message from node", "node", ev.s.id, "type", ev.m.Type, "err", err)
		}
	}
}

func (c *Coordinator) lose(s *session) {
	s.gone = true
	s.cancel()
	delete(c.sessions, s.id)
	c.changed = time.Now()
	if r := c.round; r != nil {
		r.Lost(s.id)
		// A step in flight cannot commit without this rank: tell the
		// others now, so that they cancel their all-reduce instead of
		// waiting for the ring's own deadline (issue 11, defect 12).
		if r.Kind == StepRound && r.Gen == c.gen && !r.AbortSent && r.rank(s.id) >= 0 {
			r.AbortSent = true
			for _, o := range c.world {
				if !o.gone {
					o.send(&control.Msg{Type: control.TypeAbort, Gen: r.Gen, Step: r.Step})
				}
			}
		}
	}
	c.metrics.lost(s.id)
	c.dash.Lost(s.id)
}

// onMsg applies one message of session s. Every message is checked against
// what the coordinator expects now (the phase, the outstanding request and
// its id, the sender's place in the current generation, the generation)
// before it touches any state: a message that fails a check changes nothing
// and comes back as an error, which handle logs with the sender and drops.
func (c *Coordinator) onMsg(s *session, m *control.Msg) error {
	switch m.Type {
	case control.TypeLeave:
		if s.leaving {
			return errors.New("a second leave on one session")
		}
		s.leaving = true
		c.log.Info("node asks to leave", "node", s.id, "in_world", slices.Contains(c.world, s))
		if !slices.Contains(c.world, s) {
			c.release(s) // a spare or a node setting up: nothing to wait for
		}
	case control.TypeReady:
		if m.Gen == 0 {
			if s.ready {
				return errors.New("a second ready (set up) message on one session")
			}
			s.ready = true
			s.applied = m.Ready.Applied
			c.changed = time.Now()
			c.log.Info("node ready", "node", s.id, "params", m.Ready.Params)
			return nil
		}
		if c.round == nil || c.round.Kind != ReadyRound {
			return fmt.Errorf("ready for generation %d while no generation is forming", m.Gen)
		}
		if err := c.round.ReportReady(s.id, m.Gen); err != nil {
			return err
		}
		s.applied = m.Ready.Applied
	case control.TypeReduced, control.TypeFailed:
		if m.Type == control.TypeFailed && m.Gen == 0 {
			// The node could not set up or failed outside a generation.
			c.log.Error("node failed", "node", s.id, "err", m.Error)
			c.onSetupFailed(s, m.Error)
			return nil
		}
		if c.round == nil {
			return fmt.Errorf("%s for step %d with no step in flight", m.Type, m.Step)
		}
		failure := m.Error
		if m.Type == control.TypeFailed && failure == "" {
			// An empty reason must not read as success.
			failure = "failed (no reason given)"
		}
		if m.Type == control.TypeReduced && c.round.Kind == ReadyRound {
			return fmt.Errorf("reduced for step %d while generation %d is forming", m.Step, c.round.Gen)
		}
		if err := c.round.Report(s.id, m.Gen, m.Step, failure); err != nil {
			return err
		}
		if m.Reduced != nil && c.reduced != nil {
			c.reduced[s.id] = m.Reduced
		}
	case control.TypeDigest:
		if err := control.CheckGen(s.id, c.gen, m.Gen); err != nil {
			return err
		}
		if !slices.Contains(c.world, s) {
			return fmt.Errorf("digest from %s, which is not a rank of generation %d", s.id, c.gen)
		}
		if m.Step < 0 || m.Step > c.applied {
			return fmt.Errorf("digest after step %d, but %d steps are committed", m.Step, c.applied)
		}
		if c.digests[m.Step][s.id] != "" {
			return fmt.Errorf("second digest after step %d", m.Step)
		}
		d := c.digests[m.Step]
		if d == nil {
			d = map[string]string{}
			c.digests[m.Step] = d
		}
		d[s.id] = m.Sum
		ids := c.worldIDs()
		if len(d) == len(ids) {
			delete(c.digests, m.Step)
			if err := CompareDigests(m.Step, ids, d); err != nil {
				c.fatal = &Error{Code: ExitDiverged, Err: err}
				return err
			}
			c.log.Info("replicas identical", "applied", m.Step, "digest", m.Sum[:min(16, len(m.Sum))])
		}
	case control.TypeEval:
		if c.answers == nil {
			return errors.New("evaluation result with no evaluation in flight")
		}
		if err := c.checkAnswer(s, m, c.req); err != nil {
			return err
		}
		if c.answers[s.id] != nil {
			return fmt.Errorf("second evaluation result for request %d", m.Req)
		}
		c.answers[s.id] = m
	case control.TypeLoaded:
		if m.Gen != c.gen || c.loaded == nil {
			return nil // the answer to a pull of an older generation
		}
		if !slices.Contains(c.world, s) {
			return fmt.Errorf("pull answer from %s, which is not a rank of generation %d", s.id, c.gen)
		}
		// An answer from a rank that was not asked, or a second one, would
		// let the wait end without a stale rank's answer (issue 11,
		// defect 4). Agents older than the request id send Req 0.
		if !c.pulling[s.id] {
			return fmt.Errorf("pull answer from %s, which was not asked to pull", s.id)
		}
		if c.loaded[s.id] != nil {
			return fmt.Errorf("second pull answer from %s", s.id)
		}
		if m.Req != 0 && m.Req != c.pullReq {
			return fmt.Errorf("pull answer from %s to request %d, the outstanding pull is request %d", s.id, m.Req, c.pullReq)
		}
		c.loaded[s.id] = m
	case control.TypeExported:
		if c.exportFrom != s {
			return errors.New("export answer that was not requested from this node")
		}
		if err := c.checkAnswer(s, m, c.req); err != nil {
			return err
		}
		c.exported = m
	default:
		return fmt.Errorf("unexpected message type %q", m.Type)
	}
	return nil
}

// onSetupFailed records a node's failure to set up the model. Before the
// first generation, once min_nodes nodes have failed and no connected node
// is left that might still succeed, the run ends as bad input (exit 2): the
// nodes all received the same model and job, so they would all fail again.
func (c *Coordinator) onSetupFailed(s *session, why string) {
	if c.gen > 0 {
		return
	}
	if c.setupFailed == nil {
		c.setupFailed = map[string]string{}
	}
	c.setupFailed[s.id] = why
	if len(c.setupFailed) < c.cfg.Cluster.MinNodes {
		return
	}
	for id, o := range c.sessions {
		if _, failed := c.setupFailed[id]; !failed && !o.gone {
			return
		}
	}
	ids := make([]string, 0, len(c.setupFailed))
	for id := range c.setupFailed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	c.fatal = badInput(fmt.Errorf("every node failed to set up the model (%d: %s); check model.path and the job settings. Node %s: %s",
		len(ids), strings.Join(ids, ", "), ids[0], c.setupFailed[ids[0]]))
}

// clientTLS is the TLS configuration for dialing nodes' servers (the bulk
// plane), nil when cluster.tls.enabled is false.
func (c *Coordinator) clientTLS() *tls.Config {
	if c.tls == nil {
		return nil
	}
	return c.tls.Client
}

// checkAnswer checks that m answers request req of the current generation.
func (c *Coordinator) checkAnswer(s *session, m *control.Msg, req int) error {
	if m.Req != req {
		return fmt.Errorf("answer to request %d, the outstanding request is %d", m.Req, req)
	}
	if err := control.CheckGen(s.id, c.gen, m.Gen); err != nil {
		return err
	}
	if !slices.Contains(c.world, s) {
		return fmt.Errorf("answer from %s, which is not a rank of generation %d", s.id, c.gen)
	}
	return nil
}

func checkExportName(n string) error {
	if n == "" || n != filepath.Base(n) || n[0] == '.' {
		return fmt.Errorf("export file name %q is not a plain file name", n)
	}
	return nil
}

func (c *Coordinator) worldIDs() []string {
	ids := make([]string, len(c.world))
	for i, s := range c.world {
		ids[i] = s.id
	}
	return ids
}

// formWorld waits for enough set-up nodes and a quiet membership, then
// freezes a new generation, and brings every rank to the committed state.
func (c *Coordinator) formWorld(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		if attempt >= c.opts.MaxAborts {
			return fmt.Errorf("could not form a working generation in %d attempts", attempt)
		}
		need := c.cfg.Cluster.MinNodes
		if c.gen > 0 {
			need = 1 // survivors carry on; min_nodes gates only the first world
		}
		c.world = nil
		c.metrics.world(0, c.gen)
		c.dash.World(c.gen, nil)
		c.log.Info("waiting for nodes", "need", need, "settle", c.cfg.Cluster.Settle, "wait_timeout", c.cfg.Cluster.WaitTimeout)
		tick := time.NewTicker(50 * time.Millisecond)
		giveUp := time.Now().Add(c.cfg.Cluster.WaitTimeout)
		enough := func() bool {
			return len(c.readyCandidates()) >= need && time.Since(c.changed) >= c.cfg.Cluster.Settle
		}
		err := c.pumpTick(ctx, tick, func() bool { return enough() || time.Now().After(giveUp) })
		tick.Stop()
		if err != nil {
			return err
		}
		if !enough() {
			return &Error{Code: ExitNoNodes, Err: fmt.Errorf("waited cluster.wait_timeout (%s) for %d ready node(s), have %d; %s", c.cfg.Cluster.WaitTimeout, need, len(c.readyCandidates()), c.resumeAdvice())}
		}
		members, spares := FormWorld(c.readyCandidates(), c.cfg.Cluster.MaxNodes)
		c.gen++
		// Digests still awaited from the broken generation can never
		// complete: keeping them would make the end of the run wait out
		// drainDigests' deadline.
		clear(c.digests)
		c.world = nil
		peers := make([]string, len(members))
		ids := make([]string, len(members))
		for i, m := range members {
			peers[i], ids[i] = m.Ring, m.ID
			s := c.sessions[m.ID]
			s.rank = i
			c.world = append(c.world, s)
		}
		firstCheck := c.applied == 0 && c.gen == 1 && c.cfg.Train.DigestEvery > 0
		for i, s := range c.world {
			s.send(&control.Msg{Type: control.TypeGen, Gen: c.gen, Digest: firstCheck, World: &control.World{Generation: c.gen, Rank: i, Peers: peers, IDs: ids, Applied: c.applied}})
		}
		c.round = NewReadyRound(c.gen, ids)
		err = c.pump(ctx, 60*time.Second, true, c.round.Answered)
		c.round = nil
		if errors.Is(err, errBroken) || errors.Is(err, errTimeout) {
			c.log.Warn("generation failed to form", "gen", c.gen, "err", err)
			continue
		}
		if err != nil {
			return err
		}
		c.log.Info("generation formed", "gen", c.gen, "size", len(ids), "nodes", ids, "spares", len(spares), "applied", c.applied)
		c.metrics.world(len(ids), c.gen)
		c.dash.World(c.gen, ids)
		if err := c.syncState(ctx); err != nil {
			if errors.Is(err, errBroken) || errors.Is(err, errTimeout) {
				continue
			}
			return err
		}
		return nil
	}
}

// pumpTick is pump with a ticker so that time-based conditions are
// re-evaluated without events.
func (c *Coordinator) pumpTick(ctx context.Context, t *time.Ticker, done func() bool) error {
	for {
		if c.fatal != nil {
			return c.fatal
		}
		if done() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case ev := <-c.events:
			c.handle(ev)
		}
	}
}

func (c *Coordinator) readyCandidates() []Candidate {
	var out []Candidate
	for _, s := range c.sessions {
		if s.ready && !s.gone && !s.leaving {
			out = append(out, Candidate{ID: s.id, Ring: s.ring})
		}
	}
	return out
}

// pullTimeout bounds the wait for stale ranks to load a state. The bulk
// plane's per-chunk deadline is what detects a stalled transfer; this only
// caps a transfer that keeps moving, and is far above any real one.
const pullTimeout = 2 * time.Hour

// syncState brings ranks that lack the committed state up to date. The
// coordinator never holds the state: it names a source and each stale rank
// pulls from it on the bulk plane. The source is a live rank that holds the
// committed step when there is one (so after --resume, once ranks have
// trained past the checkpoint, a new rank gets the current state and not
// the checkpoint's), else the checkpoint --resume loaded, served by the
// coordinator.
func (c *Coordinator) syncState(ctx context.Context) error {
	var stale []*session
	var source *session
	for _, s := range c.world {
		if s.applied == c.applied {
			if source == nil {
				source = s
			}
		} else {
			stale = append(stale, s)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	var pull control.Pull
	switch {
	case source != nil:
		pull = control.Pull{Addr: source.ring, Kind: bulk.KindState, Step: c.applied}
	case c.resumed != nil && c.resumed.Applied == c.applied:
		pull = control.Pull{Addr: c.grpcAddr, Kind: bulk.KindCheckpoint, Step: c.applied, SHA256: c.resumed.SHA256}
	default:
		if c.rollback(stale) {
			// Once: the rolled-back state now has a source.
			return c.syncState(ctx)
		}
		return &Error{Code: ExitNoNodes, Err: fmt.Errorf("no node holds the state of step %d (every node that did is gone) and no checkpoint of it was loaded; %s", c.applied, c.resumeAdvice())}
	}
	c.loaded = map[string]*control.Msg{}
	c.req++
	c.pullReq = c.req
	c.pulling = map[string]bool{}
	defer func() { c.loaded, c.pulling = nil, nil }()
	for _, s := range stale {
		c.log.Info("node pulls state", "node", s.id, "applied", c.applied, "from", pull.Addr, "kind", pull.Kind)
		pm := pull
		c.pulling[s.id] = true
		s.send(&control.Msg{Type: control.TypePull, Gen: c.gen, Step: c.applied, Req: c.pullReq, Pull: &pm})
	}
	err := c.pump(ctx, pullTimeout, true, func() bool { return len(c.loaded) == len(stale) })
	if err != nil {
		return err
	}
	var failed []string
	for _, s := range stale {
		m := c.loaded[s.id]
		if m.Error != "" {
			s.applied = -1
			failed = append(failed, fmt.Sprintf("%s: %s", s.id, m.Error))
			continue
		}
		s.applied = c.applied
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: state pull failed on %s", errBroken, strings.Join(failed, "; "))
	}
	return nil
}

// rollback is the run's answer to losing every replica of the committed
// state (issue 11, defect 11): the run goes back to the newest checkpoint
// this run wrote or resumed from, which the stale ranks then load; without
// one, to the initial state when a rank holds it (a fresh node's is a
// function of the job). The steps after it are undone: their samples
// return to the schedule and are trained again. It reports false when
// there is nothing to go back to.
func (c *Coordinator) rollback(stale []*session) bool {
	if c.lastCkpt != "" {
		ck, err := VerifyCheckpoint(c.lastCkpt)
		if err != nil {
			c.log.Warn("no node holds the committed state and the newest checkpoint is unreadable", "checkpoint", c.lastCkpt, "err", err)
			return false
		}
		if ck.Applied > c.applied {
			return false
		}
		// A checkpoint of the committed step itself undoes nothing.
		c.log.Warn("no node holds the committed state: rolling back to the newest checkpoint", "checkpoint", ck.Path, "applied", ck.Applied, "undone", c.applied-ck.Applied)
		c.applied, c.resumed = ck.Applied, ck
		c.served.Store(ck)
		c.sched.Reset()
		return true
	}
	for _, s := range stale {
		if s.applied == 0 && c.applied > 0 {
			c.log.Warn("no node holds the committed state and no checkpoint was written: starting again from the initial state", "undone", c.applied)
			c.applied = 0
			c.sched.Reset()
			return true
		}
	}
	return false
}

// transfer runs f, a bulk transfer, in a goroutine while the event loop
// goes on (gossip, sessions, digests). When src (if not nil) is lost
// meanwhile, f's context is cancelled and transfer returns an error that
// names it. f must not touch the loop's state.
func (c *Coordinator) transfer(ctx context.Context, src *session, f func(ctx context.Context) error) error {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f(tctx) }()
	for {
		select {
		case err := <-done:
			return err
		case ev := <-c.events:
			c.handle(ev)
			if src != nil && src.gone {
				cancel()
				err := <-done
				return fmt.Errorf("node %s was lost during the transfer: %w", src.id, err)
			}
		case <-ctx.Done():
			cancel()
			<-done
			return ctx.Err()
		}
	}
}

// someoneLeaving reports whether a rank of the world asked to leave.
func (c *Coordinator) someoneLeaving() bool {
	for _, s := range c.world {
		if s.leaving && !s.gone {
			return true
		}
	}
	return false
}

// release lets a node that asked to leave go: it is told the run is over
// for it (a clean exit) and drops out of the coordinator's sessions, as a
// lost node would, but without counting as a loss. Its stream closes when
// the node hangs up, or after a grace period.
func (c *Coordinator) release(s *session) {
	s.gone = true
	delete(c.sessions, s.id)
	c.changed = time.Now()
	s.send(&control.Msg{Type: control.TypeStop, Reason: "left on request"})
	time.AfterFunc(10*time.Second, s.cancel)
	c.log.Info("node left", "node", s.id)
}

// releaseLeavers releases every node that asked to leave. Called between
// two steps only: the next generation is formed without them.
func (c *Coordinator) releaseLeavers() {
	for _, s := range c.sessions {
		if s.leaving {
			c.release(s)
		}
	}
}

// canGrow reports whether a ready node outside the world could enter it:
// the world is below cluster.max_nodes and membership has been quiet for
// cluster.settle, so that a burst of joins enters as one generation.
func (c *Coordinator) canGrow() bool {
	max := c.cfg.Cluster.MaxNodes
	return len(c.readyCandidates()) > len(c.world) && (max <= 0 || len(c.world) < max) &&
		time.Since(c.changed) >= c.cfg.Cluster.Settle
}

// stepTimeout bounds one step: computing plus the ring's own deadline.
func (c *Coordinator) stepTimeout() time.Duration { return 2*c.cfg.AllReduce.Timeout + 30*time.Second }

// train1 is the run: world, steps, evaluation, checkpoints, export.
func (c *Coordinator) train1(ctx context.Context) error {
	if err := c.formWorld(ctx); err != nil {
		return err
	}
	// Throughput and ETA count from the first step, not from the wait.
	c.stats.start = time.Now()
	if c.progress != nil {
		c.progress.start = c.stats.start
	}
	pad := c.pad
	aborts := 0
	for c.applied < c.total {
		switch {
		case c.someoneLeaving():
			// A node leaving on a signal leaves here, between two steps:
			// its leave costs no aborted step (issue 11, defect 9).
			c.log.Info("shrinking the world at a step boundary: a node leaves", "gen", c.gen, "size", len(c.world), "applied", c.applied)
			c.releaseLeavers()
			if err := c.formWorld(ctx); err != nil {
				return err
			}
		case c.worldBroken():
			// A rank was lost between steps (during a checkpoint, say):
			// form the next generation now rather than wait for the
			// step to time out on the lost rank.
			c.log.Warn("world lost a rank between steps", "gen", c.gen, "applied", c.applied)
			if err := c.formWorld(ctx); err != nil {
				return err
			}
		case c.canGrow():
			// A node that joined (or a spare, once there is room) enters
			// at this step boundary, with the state from a live replica.
			c.log.Info("growing the world at a step boundary", "gen", c.gen, "size", len(c.world), "ready", len(c.readyCandidates()), "applied", c.applied)
			if err := c.formWorld(ctx); err != nil {
				return err
			}
		}
		g := c.applied
		sb, err := c.sched.Begin(g)
		if err != nil {
			return err
		}
		enc, indices, err := c.stepSamples(g, sb.Indices)
		if err != nil {
			return err
		}
		count := GlobalCount(c.task, enc, indices)
		ids := c.worldIDs()
		c.round = NewRound(c.gen, g, ids)
		c.reduced = map[string]*control.Reduced{}
		for r, s := range c.world {
			bs, err := RankBatches(enc, indices, len(c.world), r, c.cfg.Train.MicroBatch, c.task, pad)
			if err != nil {
				return err
			}
			s.send(&control.Msg{Type: control.TypeStep, Gen: c.gen, Step: g, Batches: bs, Count: count})
		}
		err = c.pump(ctx, c.stepTimeout(), false, c.round.Answered)
		if err != nil && !errors.Is(err, errTimeout) {
			return err
		}
		round := c.round
		c.round = nil
		if err == nil && round.Committable() {
			if err := checkCount(g, count, c.reduced); err != nil {
				return err
			}
			aborts = 0
			epochDone, err := c.sched.Commit(g)
			if err != nil {
				return err
			}
			if epochDone {
				l := c.sched.Ledger()
				c.log.Info("epoch complete", "epoch", c.sched.epoch.Index, "committed", l.Committed(), "missing", len(l.Missing()), "samples", c.sched.N)
			}
			digest := c.cfg.Train.DigestEvery > 0 && (g+1)%c.cfg.Train.DigestEvery == 0
			for _, s := range c.world {
				s.send(&control.Msg{Type: control.TypeCommit, Gen: c.gen, Step: g, Count: count, Digest: digest})
				// The node applies it on receipt; a state request for
				// g+1 that overtakes the commit waits for it there.
				s.applied = g + 1
			}
			c.applied = g + 1
			if testHookCommitted != nil {
				testHookCommitted(g)
			}
			c.account(g)
			if err := c.afterCommit(ctx, epochDone); err != nil {
				return err
			}
			continue
		}
		// Abort: put the samples back, drop the ranks that failed to
		// answer, and form a new generation from the survivors.
		aborts++
		why := round.Failed()
		if errors.Is(err, errTimeout) {
			why += fmt.Sprintf("; silent past %s: %v", c.stepTimeout(), round.Silent())
			for _, id := range round.Silent() {
				if s, ok := c.sessions[id]; ok {
					c.lose(s)
				}
			}
		}
		c.log.Warn("step aborted", "step", g, "gen", c.gen, "why", why)
		c.metrics.abort()
		c.dash.Abort()
		if err := c.sched.Abort(g); err != nil {
			return err
		}
		for _, s := range c.world {
			if !s.gone && !round.AbortSent {
				s.send(&control.Msg{Type: control.TypeAbort, Gen: c.gen, Step: g})
			}
		}
		if aborts >= c.opts.MaxAborts {
			return fmt.Errorf("step %d aborted %d times in a row, last: %s", g, aborts, why)
		}
		if err := c.formWorld(ctx); err != nil {
			return err
		}
	}
	if err := c.drainDigests(ctx); err != nil {
		return err
	}
	if len(c.eval) > 0 && c.stats.lastEval != fmt.Sprint(c.applied) {
		if err := c.withWorld(ctx, c.evaluate); err != nil {
			return err
		}
	}
	if err := c.withWorld(ctx, c.checkpoint); err != nil {
		return err
	}
	return c.withWorld(ctx, c.export)
}

// withWorld runs f, forming a new generation and retrying when the world
// breaks under it.
func (c *Coordinator) withWorld(ctx context.Context, f func(context.Context) error) error {
	for i := 0; ; i++ {
		err := f(ctx)
		if !errors.Is(err, errBroken) && !errors.Is(err, errTimeout) {
			return err
		}
		if i >= c.opts.MaxAborts {
			return fmt.Errorf("gave up after %d new generations: %w", i, err)
		}
		if err := c.formWorld(ctx); err != nil {
			return err
		}
	}
}

// drainDigests waits for digests that are due, so that a divergence in the
// last steps is not missed.
func (c *Coordinator) drainDigests(ctx context.Context) error {
	err := c.pump(ctx, 30*time.Second, true, func() bool { return len(c.digests) == 0 })
	if errors.Is(err, errBroken) || errors.Is(err, errTimeout) {
		return nil // the world changed; the digests of a broken world are moot
	}
	return err
}

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

func (c *Coordinator) afterCommit(ctx context.Context, epochDone bool) error {
	t := c.cfg.Train
	if len(c.eval) > 0 && ((t.EvalEvery > 0 && c.applied%t.EvalEvery == 0) || (t.EvalEvery == 0 && epochDone)) {
		if err := c.withWorld(ctx, c.evaluate); err != nil {
			return err
		}
	}
	if ce := c.cfg.Checkpoint.Every; ce > 0 && c.applied%ce == 0 && c.applied < c.total {
		if err := c.withWorld(ctx, c.checkpoint); err != nil {
			return err
		}
	}
	return nil
}

// evaluate shards the eval set over the world and adds the ranks' sums.
func (c *Coordinator) evaluate(ctx context.Context) error {
	idx := make([]int, len(c.eval))
	for i := range idx {
		idx[i] = i
	}
	c.req++
	c.answers = map[string]*control.Msg{}
	answers := c.answers
	defer func() { c.answers = nil }()
	pad := c.pad
	for r, s := range c.world {
		bs, err := RankBatches(c.eval, idx, len(c.world), r, c.cfg.Train.MicroBatch, c.task, pad)
		if err != nil {
			return err
		}
		s.send(&control.Msg{Type: control.TypeEvalReq, Gen: c.gen, Req: c.req, Batches: bs})
	}
	if err := c.pump(ctx, c.stepTimeout(), true, func() bool { return len(c.answers) == len(c.world) }); err != nil {
		return err
	}
	var sum control.EvalSums
	for _, m := range answers {
		sum.Add(*m.Eval)
	}
	res := Metrics(c.task, c.cfg.Model.NumLabels, sum)
	c.stats.lastEval = fmt.Sprint(c.applied)
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
	return nil
}

// export asks rank 0 to write the model and pulls its files on the bulk
// plane straight into a temporary directory next to output.dir, renamed
// into place once every file is complete and verified.
func (c *Coordinator) export(ctx context.Context) error {
	c.req++
	c.exported = nil
	src := c.world[0]
	c.exportFrom = src
	defer func() { c.exportFrom = nil }()
	src.send(&control.Msg{Type: control.TypeExport, Gen: c.gen, Req: c.req})
	if err := c.pump(ctx, 10*time.Minute, true, func() bool { return c.exported != nil }); err != nil {
		return err
	}
	files, req := c.exported.Files, c.req
	c.exported = nil
	var diskErr error
	err := c.transfer(ctx, src, func(tctx context.Context) error {
		var err error
		diskErr, err = pullDir(tctx, c.cfg.Output.Dir, src.ring, c.key, c.clientTLS(), req, files, c.cfg.Cluster.BulkChunkBytes, c.cfg.Cluster.BulkTimeout)
		return err
	})
	if diskErr != nil {
		return fmt.Errorf("output.dir: %w", diskErr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Another generation (or the same nodes again) retries it.
		c.log.Warn("export transfer failed", "node", src.id, "err", err)
		return fmt.Errorf("%w: export from %s: %v", errBroken, src.id, err)
	}
	c.log.Info("model written", "dir", c.cfg.Output.Dir, "files", len(files))
	return nil
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
		w := &errWriter{w: bufio.NewWriterSize(out, 1<<20)}
		_, ferr := bulk.Fetch(ctx, cc, bulk.Request{Kind: bulk.KindExport, Name: f.Name, Req: req, ChunkBytes: chunk}, w, timeout, f.SHA256)
		if w.err != nil {
			_ = out.Close()
			return w.err, nil
		}
		if ferr != nil {
			_ = out.Close()
			return nil, ferr
		}
		if err := w.w.Flush(); err != nil {
			_ = out.Close()
			return err, nil
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

// errWriter remembers a write error, so that a full disk is told apart from
// a failed transfer.
type errWriter struct {
	w   *bufio.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
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

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
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
)

// Exit codes of the coordinator command (see ExitCode).
const (
	ExitOK          = 0   // training finished and the model was written
	ExitFailure     = 1   // the run failed (too many aborts, I/O error, ...)
	ExitBadInput    = 2   // bad config, key, model directory or dataset, or an address in use
	ExitDiverged    = 3   // replicas' parameter digests disagree
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
	cfg   *config.Config
	opts  Options
	log   *slog.Logger
	key   auth.Key
	task  data.Task
	mask  *data.MaskConfig // masked_lm only
	tok   *data.Tokenizer
	train []data.Encoded
	eval  []data.Encoded
	files []control.FileInfo
	paths map[string]string // sha256 → path
	sched *Schedule
	total int
	job   *control.Job

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
	blob     []byte                  // state being received
	blobDone bool
	outFiles map[string][]byte
	outDone  bool
	resumed  []byte // state loaded from a checkpoint, for applied
	stats    stats
	metrics  *metrics
	dash     *dashboard // nil without metrics.dashboard
	progress *progress

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
		return nil, badInput(errors.New("cluster.key_file: required: nodes authenticate with it (create one with `coordinator keygen FILE`)"))
	}
	key, err := auth.LoadKeyFile(cfg.Cluster.KeyFile)
	if err != nil {
		return nil, badInput(fmt.Errorf("cluster.key_file: %w", err))
	}
	c.key = key
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
			Betas: t.Betas, Eps: t.Eps, Momentum: t.Momentum, MaxGradNorm: t.MaxGradNorm, Precision: t.Precision, Threads: t.Threads},
		TotalSteps: c.total, Files: c.files, ChunkBytes: cfg.AllReduce.ChunkBytes, Wire: cfg.AllReduce.Wire, TimeoutMS: cfg.AllReduce.Timeout.Milliseconds(),
		Transport: cfg.AllReduce.Transport,
	}
	if opts.Resume {
		if err := c.loadCheckpoint(); err != nil {
			return nil, err
		}
	}
	return c, nil
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
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("model.path: %w", err)
		}
		sum := sha256.Sum256(b)
		h := hex.EncodeToString(sum[:])
		c.files = append(c.files, control.FileInfo{Name: e.Name(), Size: int64(len(b)), SHA256: h})
		c.paths[h] = p
	}
	if !slices.ContainsFunc(c.files, func(f control.FileInfo) bool { return f.Name == "config.json" }) {
		return fmt.Errorf("model.path: %s has no config.json; give a Hugging Face model directory", dir)
	}
	return nil
}

func (c *Coordinator) loadData() error {
	d := c.cfg.Data
	f := data.Fields{Text: d.TextField, TextPair: d.TextPairField, Label: d.LabelField, Task: c.task, Labels: c.cfg.Model.Labels, NumLabels: c.cfg.Model.NumLabels}
	tok, err := data.LoadTokenizer(d.Tokenizer)
	if err != nil {
		return fmt.Errorf("data.tokenizer: %w", err)
	}
	c.tok = tok
	load := func(key, path string) ([]data.Encoded, error) {
		if c.task == data.TokenClassification {
			return loadWords(tok, key, path, c.cfg)
		}
		exs, err := data.ReadFile(path, d.Format, f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		enc, err := tok.EncodeAll(path, exs, d.MaxLength)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		return enc, nil
	}
	if c.train, err = load("data.train_file", d.TrainFile); err != nil {
		return err
	}
	if d.EvalFile != "" {
		if c.eval, err = load("data.eval_file", d.EvalFile); err != nil {
			return err
		}
	}
	return c.setupMasking()
}

// event is something that happened to a session, delivered to Run's loop.
type event struct {
	s    *session
	m    *control.Msg
	err  error // session ended
	open bool  // session opened
	dead string
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
	gs := grpc.NewServer(control.ServerOptions(c.key)...)
	control.Register(gs, c.serveSession)
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
	meta, err := control.Meta{ID: "coordinator", Role: control.RoleCoordinator, GRPC: grpcAddr, Version: "ringtune/0.1"}.Encode()
	if err != nil {
		return badInput(err)
	}
	ml, err := control.NewMemberlist(control.GossipConfig{Name: "coordinator", Bind: cfg.Bind, Advertise: cfg.Advertise, Label: cfg.Label, Key: c.key, Delegate: control.StaticMeta(meta), Events: gossipEvents{c.events}})
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
	err = c.train1(ctx)
	c.progress.finish()
	return err
}

type gossipEvents struct{ ch chan<- event }

func (g gossipEvents) NotifyJoin(*memberlist.Node)   {}
func (g gossipEvents) NotifyUpdate(*memberlist.Node) {}
func (g gossipEvents) NotifyLeave(n *memberlist.Node) {
	select {
	case g.ch <- event{dead: n.Name}:
	default:
	}
}

// serveSession is the gRPC handler of one node's session: it reads the
// hello, then relays messages both ways until either side ends.
func (c *Coordinator) serveSession(st control.Stream) error {
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
	// The node's gossip join may still be propagating when its session
	// arrives: look for it for a few seconds before refusing.
	ring := ""
	for wait := time.Now().Add(5 * time.Second); ring == "" && time.Now().Before(wait); {
		for _, m := range c.ml.Members() {
			if m.Name == h.ID {
				if meta, err := control.DecodeMeta(m.Meta); err == nil {
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
		return fmt.Errorf("node %s is not a member of the gossip cluster; join it first", h.ID)
	}
	ctx, cancel := context.WithCancel(st.Context())
	defer cancel()
	s := &session{id: h.ID, ring: ring, out: make(chan *control.Msg, 4096), cancel: cancel, applied: h.Applied, rank: -1}
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
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("node %s left", s.id)
			} else {
				err = fmt.Errorf("node %s: %w", s.id, err)
			}
			c.events <- event{s: s, err: err}
			return nil
		case <-ctx.Done():
			c.events <- event{s: s, err: fmt.Errorf("node %s dropped by the coordinator", s.id)}
			return errors.New("dropped by the coordinator")
		}
	}
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
	case ev.dead != "":
		if s, ok := c.sessions[ev.dead]; ok && !s.gone {
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
	if c.round != nil {
		c.round.Lost(s.id)
	}
	c.metrics.lost()
	c.dash.lost()
}

func (c *Coordinator) onMsg(s *session, m *control.Msg) error {
	switch m.Type {
	case control.TypeNeed:
		for _, h := range m.Need {
			p, ok := c.paths[h]
			if !ok {
				return fmt.Errorf("node %s asks for unknown model file %s", s.id, h)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				c.fatal = fmt.Errorf("model.path: %w", err)
				return c.fatal
			}
			for off := 0; ; off += control.ChunkSize {
				end := min(off+control.ChunkSize, len(b))
				s.send(&control.Msg{Type: control.TypeFile, Chunk: &control.Chunk{Name: h, Offset: int64(off), Total: int64(len(b)), Data: b[off:end]}})
				if end == len(b) {
					break
				}
			}
		}
		s.send(&control.Msg{Type: control.TypeDone})
	case control.TypeReady:
		if m.Gen == 0 {
			s.ready = true
			s.applied = m.Ready.Applied
			c.changed = time.Now()
			c.log.Info("node ready", "node", s.id, "params", m.Ready.Params)
			return nil
		}
		s.applied = m.Ready.Applied
		if c.round != nil && c.round.Gen == m.Gen && c.round.Step == -1 {
			return c.round.Report(s.id, m.Gen, -1, "")
		}
		return control.CheckGen(s.id, c.gen, m.Gen)
	case control.TypeReduced, control.TypeFailed:
		if m.Type == control.TypeFailed && m.Gen == 0 {
			// The node could not set up or failed outside a generation.
			c.log.Error("node failed", "node", s.id, "err", m.Error)
			return nil
		}
		if c.round == nil {
			return fmt.Errorf("%s for step %d with no step in flight", m.Type, m.Step)
		}
		if err := c.round.Report(s.id, m.Gen, m.Step, m.Error); err != nil {
			return err
		}
		if m.Reduced != nil {
			c.reduced[s.id] = m.Reduced
		}
	case control.TypeDigest:
		if err := control.CheckGen(s.id, c.gen, m.Gen); err != nil {
			return err
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
			c.log.Info("replicas identical", "applied", m.Step, "digest", m.Sum[:16])
		}
	case control.TypeEval:
		c.answers[s.id] = m
	case control.TypeState:
		c.blob = append(c.blob, m.Chunk.Data...)
		c.blobDone = int64(len(c.blob)) >= m.Chunk.Total
	case control.TypeFile:
		if c.outFiles == nil {
			return fmt.Errorf("unrequested export file %s", m.Chunk.Name)
		}
		if err := checkExportName(m.Chunk.Name); err != nil {
			return err
		}
		c.outFiles[m.Chunk.Name] = append(c.outFiles[m.Chunk.Name], m.Chunk.Data...)
	case control.TypeDone:
		c.outDone = true
	default:
		return fmt.Errorf("unexpected message type %q", m.Type)
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
		c.dash.world(c.gen, nil)
		c.log.Info("waiting for nodes", "need", need, "settle", c.cfg.Cluster.Settle)
		tick := time.NewTicker(50 * time.Millisecond)
		err := c.pumpTick(ctx, tick, func() bool {
			return len(c.readyCandidates()) >= need && time.Since(c.changed) >= c.cfg.Cluster.Settle
		})
		tick.Stop()
		if err != nil {
			return err
		}
		members, spares := FormWorld(c.readyCandidates(), c.cfg.Cluster.MaxNodes)
		c.gen++
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
		c.round = NewRound(c.gen, -1, ids)
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
		c.dash.world(c.gen, ids)
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
		if s.ready && !s.gone {
			out = append(out, Candidate{ID: s.id, Ring: s.ring})
		}
	}
	return out
}

// syncState sends the committed state to ranks that lack it: from the
// checkpoint being resumed, or from a rank that holds it.
func (c *Coordinator) syncState(ctx context.Context) error {
	var stale []*session
	var source *session
	for _, s := range c.world {
		if s.applied == c.applied {
			source = s
		} else {
			stale = append(stale, s)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	blob := c.resumed
	if blob == nil {
		if source == nil {
			return fmt.Errorf("no node holds the state of step %d and no checkpoint was loaded", c.applied)
		}
		var err error
		if blob, err = c.fetchState(ctx, source); err != nil {
			return err
		}
	}
	for _, s := range stale {
		c.log.Info("sending state", "node", s.id, "applied", c.applied, "bytes", len(blob))
		for off := 0; ; off += control.ChunkSize {
			end := min(off+control.ChunkSize, len(blob))
			s.send(&control.Msg{Type: control.TypeSetState, Gen: c.gen, Step: c.applied, Chunk: &control.Chunk{Offset: int64(off), Total: int64(len(blob)), Data: blob[off:end]}})
			if end == len(blob) {
				break
			}
		}
		s.applied = c.applied
	}
	return nil
}

// fetchState asks s for its state and waits for all of it.
func (c *Coordinator) fetchState(ctx context.Context, s *session) ([]byte, error) {
	c.req++
	c.blob, c.blobDone = nil, false
	s.send(&control.Msg{Type: control.TypeGetState, Gen: c.gen, Req: c.req})
	if err := c.pump(ctx, 5*time.Minute, true, func() bool { return c.blobDone }); err != nil {
		return nil, err
	}
	b := c.blob
	c.blob = nil
	return b, nil
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
	pad := max(c.tok.PAD, 0)
	aborts := 0
	for c.applied < c.total {
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
			}
			c.applied = g + 1
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
		c.dash.abort()
		if err := c.sched.Abort(g); err != nil {
			return err
		}
		for _, s := range c.world {
			if !s.gone {
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
	for _, r := range c.reduced {
		loss += r.LossSum
		n += float64(r.Count)
		samples += r.Samples
	}
	c.stats.samples += samples
	el := time.Since(c.stats.start).Seconds()
	rate := float64(c.stats.samples) / max(el, 1e-9)
	mean := loss / max(n, 1)
	epoch, _, _ := c.sched.Locate(g)
	c.metrics.step(c.applied, epoch, mean, rate, samples)
	c.dash.step(c.applied, epoch, mean, rate)
	c.progress.update(c.applied, epoch, mean, rate)
	c.log.Debug("step committed", "step", g, "loss", mean)
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
	pad := max(c.tok.PAD, 0)
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
	for _, m := range c.answers {
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
	c.dash.eval(c.applied, res)
	c.progress.note(line.String())
	return nil
}

// export asks rank 0 for the model directory and writes it to output.dir.
func (c *Coordinator) export(ctx context.Context) error {
	c.req++
	c.outFiles, c.outDone = map[string][]byte{}, false
	c.world[0].send(&control.Msg{Type: control.TypeExport, Gen: c.gen, Req: c.req})
	if err := c.pump(ctx, 10*time.Minute, true, func() bool { return c.outDone }); err != nil {
		return err
	}
	files := c.outFiles
	c.outFiles = nil
	return writeDirAtomic(c.cfg.Output.Dir, files)
}

// writeDirAtomic replaces dir with files: written into a sibling temporary
// directory, then renamed into place.
func writeDirAtomic(dir string, files map[string][]byte) error {
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("output.dir: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return fmt.Errorf("output.dir: %w", err)
	}
	for name, b := range files {
		if err := writeFileSync(filepath.Join(tmp, name), b); err != nil {
			_ = os.RemoveAll(tmp)
			return fmt.Errorf("output.dir: %w", err)
		}
	}
	old := ""
	if _, err := os.Stat(dir); err == nil {
		old = tmp + ".old"
		if err := os.Rename(dir, old); err != nil {
			_ = os.RemoveAll(tmp)
			return fmt.Errorf("output.dir: %w", err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("output.dir: %w", err)
	}
	if old != "" {
		_ = os.RemoveAll(old)
	}
	return nil
}

func writeFileSync(path string, b []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

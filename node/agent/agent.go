// Package agent is the node side of ringtune's protocol, in pure Go: it
// joins the gossip cluster, serves the ring's gRPC service, opens the control
// session to the coordinator, receives the job, the model files and each
// generation, and drives a Trainer through the steps. cmd/node links it with
// the libtorch trainer; tests link it with a pure-Go one.
package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/control"
)

// Version is reported in gossip metadata and the session hello.
const Version = "ringtune/0.1"

// Config configures an agent. Zero values of optional fields pick the
// documented defaults.
type Config struct {
	// Coordinator is the coordinator's gossip address (host:port).
	Coordinator string
	// Key is the cluster key (see auth.LoadKeyFile).
	Key auth.Key
	// Device is passed to the trainer and gossiped (e.g. cpu, cuda:0).
	Device string
	// Bind is the gossip listener (default 0.0.0.0:7946; port 0 picks one).
	Bind string
	// Advertise is the gossip address others use, when not Bind's.
	Advertise string
	// RingAddr is where the ring's gRPC server listens (default: Bind's
	// host, any port). Its advertised form goes into the gossip metadata.
	RingAddr string
	// Name is the node id, unique in the cluster (default host-pid-random).
	Name string
	// CacheDir keeps model files by content hash (default
	// $XDG_CACHE_HOME/ringtune/blobs).
	CacheDir string
	// Label is the gossip label; it must equal the coordinator's
	// cluster.label (default "ringtune").
	Label string
	// JoinTimeout bounds joining the gossip cluster and reaching the
	// coordinator (default 30s).
	JoinTimeout time.Duration
	// CommitTimeout bounds the wait for a commit or abort after reporting a
	// step reduced (default 2 minutes); past it the node gives up.
	CommitTimeout time.Duration
	// Log receives the agent's log (default: discard).
	Log *slog.Logger
}

func (c *Config) defaults() error {
	if c.Coordinator == "" {
		return errors.New("agent: --coordinator is required: the coordinator's gossip address host:port")
	}
	if err := c.Key.Validate(); err != nil {
		return fmt.Errorf("agent: cluster key: %w", err)
	}
	if c.Bind == "" {
		c.Bind = "0.0.0.0:7946"
	}
	if c.Name == "" {
		h, _ := os.Hostname()
		var r [3]byte
		_, _ = rand.Read(r[:])
		c.Name = fmt.Sprintf("%s-%d-%x", h, os.Getpid(), r)
	}
	if c.Device == "" {
		c.Device = "cpu"
	}
	if c.Label == "" {
		c.Label = "ringtune"
	}
	if c.CacheDir == "" {
		d, err := os.UserCacheDir()
		if err != nil {
			return fmt.Errorf("agent: no cache directory (%w); pass --cache-dir", err)
		}
		c.CacheDir = filepath.Join(d, "ringtune", "blobs")
	}
	if c.JoinTimeout <= 0 {
		c.JoinTimeout = 30 * time.Second
	}
	if c.CommitTimeout <= 0 {
		c.CommitTimeout = 2 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Agent is one node.
type Agent struct {
	cfg     Config
	factory Factory
	log     *slog.Logger
}

// New validates cfg; Run does the work.
func New(cfg Config, factory Factory) (*Agent, error) {
	if factory == nil {
		return nil, errors.New("agent: nil trainer factory")
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, factory: factory, log: cfg.Log.With("node", cfg.Name)}, nil
}

// ErrStopped is returned by Run when the coordinator ended the run normally.
var ErrStopped = errors.New("agent: the coordinator ended the run")

// Run joins the cluster and trains until the coordinator sends stop (nil
// error, or the run's error when the run failed), the session breaks, or ctx is cancelled: then the node leaves at
// the next step boundary (a step it has reported reduced is finished first)
// and Run returns ctx's error.
func (a *Agent) Run(ctx context.Context) (err error) {
	c := a.cfg
	ringHost, _, err := net.SplitHostPort(c.Bind)
	if err != nil {
		return fmt.Errorf("agent: --bind %q is not host:port: %w", c.Bind, err)
	}
	if c.RingAddr == "" {
		c.RingAddr = net.JoinHostPort(ringHost, "0")
	}
	lis, err := net.Listen("tcp", c.RingAddr)
	if err != nil {
		return fmt.Errorf("agent: ring listener on %s: %w", c.RingAddr, err)
	}
	ringSrv, err := allreduce.NewServer(c.Key)
	if err != nil {
		_ = lis.Close()
		return err
	}
	gs := grpc.NewServer(allreduce.ServerOptions(c.Key, nil)...)
	ringSrv.Register(gs)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); <-served }()

	ringAddr := lis.Addr().String()
	if c.Advertise != "" {
		// Peers reach the ring on the advertised host.
		ah, _, _ := net.SplitHostPort(c.Advertise)
		_, p, _ := net.SplitHostPort(ringAddr)
		ringAddr = net.JoinHostPort(ah, p)
	} else if h, p, _ := net.SplitHostPort(ringAddr); net.ParseIP(h).IsUnspecified() {
		if ip := control.FirstPrivateIP(); ip != "" {
			ringAddr = net.JoinHostPort(ip, p)
		}
	}
	meta, err := control.Meta{ID: c.Name, Role: control.RoleNode, GRPC: ringAddr, Device: c.Device, Version: Version}.Encode()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	ml, err := control.NewMemberlist(control.GossipConfig{Name: c.Name, Bind: c.Bind, Advertise: c.Advertise, Label: c.Label, Key: c.Key, Delegate: control.StaticMeta(meta)})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer func() {
		_ = ml.Leave(time.Second)
		_ = ml.Shutdown()
	}()
	coordAddr, err := a.join(ctx, ml)
	if err != nil {
		return err
	}
	a.log.Info("joined cluster", "coordinator", coordAddr, "ring", ringAddr)

	cc, err := control.Dial(coordAddr, c.Key)
	if err != nil {
		return err
	}
	defer cc.Close()
	sctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := control.OpenSession(sctx, cc)
	if err != nil {
		return err
	}
	s := &session{a: a, st: st, ringSrv: ringSrv, applied: -1}
	defer s.close()
	return s.run(ctx)
}

// join joins the gossip cluster through the coordinator's address and
// returns the coordinator's control address from its metadata.
func (a *Agent) join(ctx context.Context, ml *memberlist.Memberlist) (string, error) {
	deadline := time.Now().Add(a.cfg.JoinTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		if _, err := ml.Join([]string{a.cfg.Coordinator}); err != nil {
			lastErr = err
		} else {
			for _, m := range ml.Members() {
				meta, err := control.DecodeMeta(m.Meta)
				if err == nil && meta.Role == control.RoleCoordinator && meta.GRPC != "" {
					return meta.GRPC, nil
				}
			}
			lastErr = errors.New("joined, but no member announces itself as coordinator")
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("agent: could not join the cluster through coordinator %s within %s: %w (check the address, that the key file matches the coordinator's and that cluster.label is the same)", a.cfg.Coordinator, a.cfg.JoinTimeout, lastErr)
}

// inbound is one received message or the session's end.
type inbound struct {
	m   *control.Msg
	err error
}

// session is the node's state for one run. All of it is touched only by the
// goroutine in run, which is also the only one calling the trainer.
type session struct {
	a       *Agent
	st      control.Stream
	ringSrv *allreduce.Server

	tr      Trainer
	job     *control.Job
	params  int
	applied int // committed steps in the trainer's state, -1 before setup

	gen      uint64
	world    *control.World
	ring     *allreduce.Ring
	inStep   bool // reduced sent, commit/abort pending
	stepDone time.Time
	// timing of the step in flight, for the debug log that shows where a
	// step's wall time goes (compute, ring, waiting for the commit, apply,
	// waiting for the next step's batches).
	tm stepTiming

	need    map[string]bool // model files still to receive
	partial map[string][]byte
	fetched int64  // bytes of model files received, not taken from the cache
	stateIn []byte // SetState chunks
	// modelDir is the job's model directory, laid out from the cache.
	modelDir string
}

func (s *session) send(m *control.Msg) error {
	m.V = control.Version
	if err := s.st.Send(m); err != nil {
		return fmt.Errorf("agent: send %s to coordinator: %w", m.Type, err)
	}
	return nil
}

func (s *session) close() {
	if s.ring != nil {
		_ = s.ring.Close()
		s.ring = nil
	}
	if s.tr != nil {
		_ = s.tr.Close()
		s.tr = nil
	}
	if s.modelDir != "" {
		_ = os.RemoveAll(s.modelDir) // the cache keeps the files
	}
	if cs, ok := s.st.(interface{ CloseSend() error }); ok {
		_ = cs.CloseSend()
	}
}

func (s *session) run(ctx context.Context) error {
	c := s.a.cfg
	if err := s.send(&control.Msg{Type: control.TypeHello, Hello: &control.Hello{ID: c.Name, Device: c.Device, Version: Version, Proto: control.Version, Applied: s.applied}}); err != nil {
		return err
	}
	in := make(chan inbound, 64)
	quit := make(chan struct{})
	defer close(quit)
	go func() {
		for {
			m, err := s.st.Recv()
			select {
			case in <- inbound{m, err}:
			case <-quit:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	stopping := false
	for {
		if stopping && !s.inStep {
			s.a.log.Info("leaving at a step boundary")
			return ctx.Err()
		}
		var timeout <-chan time.Time
		if s.inStep {
			timeout = time.After(time.Until(s.stepDone.Add(c.CommitTimeout)))
		}
		var done <-chan struct{}
		if !stopping {
			done = ctx.Done()
		}
		select {
		case <-done:
			stopping = true
		case <-timeout:
			return fmt.Errorf("agent: no commit or abort of step from the coordinator within %s", c.CommitTimeout)
		case ib := <-in:
			if ib.err != nil {
				if errors.Is(ib.err, io.EOF) {
					return errors.New("agent: the coordinator closed the session")
				}
				return fmt.Errorf("agent: session with coordinator: %w", ib.err)
			}
			if ib.m.Type == control.TypeStop {
				if ib.m.Error != "" {
					// The run failed on the coordinator: this node's
					// exit status must say so too.
					return fmt.Errorf("agent: the coordinator stopped the run: %s", ib.m.Error)
				}
				s.a.log.Info("run finished", "reason", ib.m.Reason)
				return nil
			}
			if err := s.handle(ib.m); err != nil {
				// A local failure: tell the coordinator (it forms a new
				// generation without us if needed) and leave.
				_ = s.send(&control.Msg{Type: control.TypeFailed, Gen: s.gen, Step: ib.m.Step, Error: err.Error()})
				return err
			}
		}
	}
}

// handle processes one message; an error is fatal for this node.
func (s *session) handle(m *control.Msg) error {
	switch m.Type {
	case control.TypeJob:
		return s.onJob(m.Job)
	case control.TypeFile:
		return s.onFile(m.Chunk)
	case control.TypeDone:
		if s.need != nil {
			return s.onFilesDone()
		}
		return nil
	case control.TypeGen:
		return s.onGen(m)
	case control.TypeSetState:
		s.stateIn = append(s.stateIn, m.Chunk.Data...)
		if int64(len(s.stateIn)) < m.Chunk.Total {
			return nil
		}
		p, o, n, err := control.DecodeState(s.stateIn)
		s.stateIn = nil
		if err != nil {
			return fmt.Errorf("agent: state from coordinator: %w", err)
		}
		if err := s.tr.SetState(State{Params: p, Optim: o, Steps: n}); err != nil {
			return fmt.Errorf("agent: load state: %w", err)
		}
		s.applied = m.Step
		s.a.log.Info("state loaded", "applied", s.applied)
		return s.digest(m.Gen, m.Step, m.Digest)
	case control.TypeStep:
		return s.onStep(m)
	case control.TypeCommit:
		if err := control.CheckGen("coordinator", s.gen, m.Gen); err != nil {
			return err
		}
		if !s.inStep {
			return fmt.Errorf("agent: commit of step %d, but no step is pending", m.Step)
		}
		s.inStep = false
		s.tm.commit = time.Now()
		if err := s.tr.Apply(m.Step, m.Count); err != nil {
			return fmt.Errorf("agent: apply step %d: %w", m.Step, err)
		}
		s.applied = m.Step + 1
		s.tm.applied = time.Now()
		s.tm.log(s.a.log, m.Step)
		return s.digest(m.Gen, m.Step, m.Digest)
	case control.TypeAbort:
		// An abort may name an older generation: the coordinator aborts a
		// step and then forms a new one.
		s.inStep = false
		if s.tr != nil {
			if err := s.tr.Discard(); err != nil {
				return fmt.Errorf("agent: discard step %d: %w", m.Step, err)
			}
		}
		return nil
	case control.TypeGetState:
		st, err := s.tr.State()
		if err != nil {
			return fmt.Errorf("agent: state: %w", err)
		}
		b := control.EncodeState(st.Params, st.Optim, st.Steps)
		return s.sendBytes(control.TypeState, m.Req, "", b, s.applied)
	case control.TypeEvalReq:
		var sum control.EvalSums
		for i, b := range m.Batches {
			r, err := s.tr.Evaluate(b)
			if err != nil {
				return fmt.Errorf("agent: evaluate batch %d: %w", i, err)
			}
			sum.Add(r)
		}
		return s.send(&control.Msg{Type: control.TypeEval, Gen: s.gen, Req: m.Req, Eval: &sum})
	case control.TypeExport:
		return s.onExport(m.Req)
	}
	return fmt.Errorf("agent: unexpected %q message from the coordinator", m.Type)
}

func (s *session) digest(gen uint64, step int, want bool) error {
	if !want {
		return nil
	}
	d, err := s.tr.Digest()
	if err != nil {
		return fmt.Errorf("agent: digest: %w", err)
	}
	return s.send(&control.Msg{Type: control.TypeDigest, Gen: gen, Step: s.applied, Sum: hex.EncodeToString(d)})
}

func (s *session) sendBytes(typ string, req int, name string, b []byte, step int) error {
	for off := 0; off < len(b) || off == 0; off += control.ChunkSize {
		end := min(off+control.ChunkSize, len(b))
		if err := s.send(&control.Msg{Type: typ, Gen: s.gen, Req: req, Step: step, Chunk: &control.Chunk{Name: name, Offset: int64(off), Total: int64(len(b)), Data: b[off:end]}}); err != nil {
			return err
		}
		if end == len(b) {
			break
		}
	}
	return nil
}

func (s *session) onJob(j *control.Job) error {
	if s.job != nil {
		return errors.New("agent: a second job on one session")
	}
	s.job = j
	s.need = map[string]bool{}
	s.partial = map[string][]byte{}
	var missing []string
	cached := 0
	for _, f := range j.Files {
		if err := checkName(f.Name); err != nil {
			return err
		}
		if s.need[f.SHA256] {
			continue // two names, one content: asked for once
		}
		ok, err := s.cachedOK(f.SHA256)
		if ok {
			cached++
			continue
		}
		if err != nil {
			// A cached copy that does not match its hash (a disk error, a
			// crash mid-write by an older version, a hand edit) must not
			// be trained on: fetch the file again.
			s.a.log.Warn("cached model file is corrupt; fetching it again", "file", f.Name, "path", s.blob(f.SHA256), "err", err)
		}
		missing = append(missing, f.SHA256)
		s.need[f.SHA256] = true
	}
	s.a.log.Info("job received", "files", len(j.Files), "cached", cached, "missing", len(missing))
	return s.send(&control.Msg{Type: control.TypeNeed, Need: missing})
}

// cachedOK reports whether the cache holds the file with content hash sum
// intact; the error says why a present copy is unusable.
func (s *session) cachedOK(sum string) (bool, error) {
	f, err := os.Open(s.blob(sum))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return false, fmt.Errorf("content hash is %s", got)
	}
	return true, nil
}

func checkName(n string) error {
	if n == "" || n != filepath.Base(n) || strings.HasPrefix(n, ".") {
		return fmt.Errorf("agent: model file name %q is not a plain file name", n)
	}
	return nil
}

func (s *session) blob(sum string) string { return filepath.Join(s.a.cfg.CacheDir, sum) }

func (s *session) onFile(ch *control.Chunk) error {
	if !s.need[ch.Name] {
		return fmt.Errorf("agent: unrequested model file %s", ch.Name)
	}
	s.partial[ch.Name] = append(s.partial[ch.Name], ch.Data...)
	if int64(len(s.partial[ch.Name])) < ch.Total {
		return nil
	}
	b := s.partial[ch.Name]
	delete(s.partial, ch.Name)
	s.fetched += int64(len(b))
	got := sha256.Sum256(b)
	if hex.EncodeToString(got[:]) != ch.Name {
		return fmt.Errorf("agent: model file with hash %s arrived corrupt (hash %x)", ch.Name, got)
	}
	if err := os.MkdirAll(s.a.cfg.CacheDir, 0o755); err != nil {
		return fmt.Errorf("agent: cache dir: %w", err)
	}
	tmp := s.blob(ch.Name) + fmt.Sprintf(".tmp%d", os.Getpid())
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("agent: cache model file: %w", err)
	}
	if err := os.Rename(tmp, s.blob(ch.Name)); err != nil {
		return fmt.Errorf("agent: cache model file: %w", err)
	}
	delete(s.need, ch.Name)
	return nil
}

// onFilesDone lays out the model directory from the cache and sets up the
// trainer.
func (s *session) onFilesDone() error {
	if len(s.need) > 0 {
		return fmt.Errorf("agent: the coordinator finished sending model files but %d are missing", len(s.need))
	}
	s.need = nil
	s.a.log.Info("model files ready", "fetched_bytes", s.fetched)
	j := s.job
	dir, err := os.MkdirTemp("", "ringtune-model-")
	if err != nil {
		return fmt.Errorf("agent: model dir: %w", err)
	}
	s.modelDir = dir
	for _, f := range j.Files {
		b, err := os.ReadFile(s.blob(f.SHA256))
		if err != nil {
			return fmt.Errorf("agent: cached model file %s: %w", f.Name, err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != f.SHA256 {
			return fmt.Errorf("agent: cached model file %s (%s) is corrupt; delete it", f.Name, s.blob(f.SHA256))
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), b, 0o644); err != nil {
			return fmt.Errorf("agent: model dir: %w", err)
		}
	}
	tr, err := s.a.factory()
	if err != nil {
		return fmt.Errorf("agent: trainer: %w", err)
	}
	s.tr = tr
	n, err := tr.Setup(Job{ModelDir: dir, Task: j.Task, NumLabels: j.NumLabels, Labels: j.Labels, Init: j.Init, Seed: j.Seed, Device: s.a.cfg.Device, Train: j.Train, TotalSteps: j.TotalSteps})
	if err != nil {
		return fmt.Errorf("agent: set up the model from %s: %w", dir, err)
	}
	s.params = n
	s.applied = 0
	s.a.log.Info("trainer ready", "params", n)
	if lr, ok := tr.(LoadReporter); ok {
		if rep := lr.LoadReport(); rep != "" {
			s.a.log.Info("pretrained weights", "report", rep)
		}
	}
	return s.send(&control.Msg{Type: control.TypeReady, Ready: &control.Ready{Params: n, Applied: s.applied}})
}

func (s *session) onGen(m *control.Msg) error {
	if s.tr == nil {
		return errors.New("agent: generation before the job was set up")
	}
	if m.Gen <= s.gen {
		return fmt.Errorf("agent: stale generation %d, current generation is %d", m.Gen, s.gen)
	}
	if s.ring != nil {
		_ = s.ring.Close()
		s.ring = nil
	}
	if s.inStep {
		s.inStep = false
		if err := s.tr.Discard(); err != nil {
			return err
		}
	}
	w := m.World
	j := s.job
	wire := allreduce.Float32
	if j.Wire == "bf16" {
		wire = allreduce.BFloat16
	}
	transport, err := allreduce.ParseTransport(j.Transport)
	if err != nil {
		return fmt.Errorf("agent: job from the coordinator: %w", err)
	}
	r, err := allreduce.New(allreduce.Config{Generation: w.Generation, Rank: w.Rank, Peers: w.Peers, Server: s.ringSrv, Key: s.a.cfg.Key, ChunkBytes: j.ChunkBytes, Wire: wire, Transport: transport, Timeout: time.Duration(j.TimeoutMS) * time.Millisecond})
	if err != nil {
		return fmt.Errorf("agent: ring of generation %d: %w", w.Generation, err)
	}
	s.ring, s.gen, s.world = r, w.Generation, w
	s.a.log.Info("generation", "gen", w.Generation, "rank", w.Rank, "size", len(w.Peers), "transport", transport.String())
	if err := s.send(&control.Msg{Type: control.TypeReady, Gen: s.gen, Ready: &control.Ready{Params: s.params, Applied: s.applied}}); err != nil {
		return err
	}
	return s.digest(m.Gen, 0, m.Digest && s.applied == w.Applied)
}

func (s *session) onStep(m *control.Msg) error {
	if err := control.CheckGen("coordinator", s.gen, m.Gen); err != nil {
		// Not fatal: tell the coordinator and wait for the current world.
		return s.send(&control.Msg{Type: control.TypeFailed, Gen: m.Gen, Step: m.Step, Error: err.Error()})
	}
	if s.applied != m.Step {
		return fmt.Errorf("agent: step %d requested but the trainer holds %d committed steps", m.Step, s.applied)
	}
	start := time.Now()
	s.tm.start = start
	red := &control.Reduced{}
	for i, b := range m.Batches {
		loss, n, err := s.tr.Accumulate(b)
		if err != nil {
			return fmt.Errorf("agent: step %d micro-batch %d: %w", m.Step, i, err)
		}
		red.LossSum += loss
		red.Count += n
		red.Samples += b.Size
		red.Tokens += b.Tokens
	}
	s.inStep = true
	s.stepDone = time.Now()
	s.tm.computed = s.stepDone
	grads, err := s.tr.Gradients()
	if err != nil {
		return fmt.Errorf("agent: step %d: gradients: %w", m.Step, err)
	}
	if err := s.ring.AllReduce(context.Background(), grads); err != nil {
		// The ring is broken for good; the coordinator will abort the step
		// and form a new generation.
		s.a.log.Warn("all-reduce failed", "step", m.Step, "err", err)
		return s.send(&control.Msg{Type: control.TypeFailed, Gen: m.Gen, Step: m.Step, Error: err.Error()})
	}
	red.Seconds = time.Since(start).Seconds()
	s.stepDone = time.Now()
	s.tm.reduced = s.stepDone
	return s.send(&control.Msg{Type: control.TypeReduced, Gen: m.Gen, Step: m.Step, Reduced: red})
}

func (s *session) onExport(req int) error {
	dir, err := os.MkdirTemp("", "ringtune-export-")
	if err != nil {
		return fmt.Errorf("agent: export dir: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := s.tr.Export(dir); err != nil {
		return fmt.Errorf("agent: export: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("agent: export: %w", err)
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("agent: export: %w", err)
		}
		if err := s.sendBytes(control.TypeFile, req, e.Name(), b, s.applied); err != nil {
			return err
		}
	}
	return s.send(&control.Msg{Type: control.TypeDone, Gen: s.gen, Req: req})
}

// stepTiming holds the moments of one step on this node.
type stepTiming struct {
	start, computed, reduced, commit, applied time.Time
	prevApplied                               time.Time // end of the previous step
}

// log writes the step's phases at debug level and starts the next step's
// idle clock. idle_ms is the time between applying the previous step and
// starting this one: the node had nothing to do.
func (t *stepTiming) log(l *slog.Logger, step int) {
	ms := func(a, b time.Time) float64 { return float64(b.Sub(a).Microseconds()) / 1000 }
	idle := 0.0
	if !t.prevApplied.IsZero() {
		idle = ms(t.prevApplied, t.start)
	}
	l.Debug("step timing", "step", step, "idle_ms", idle, "compute_ms", ms(t.start, t.computed),
		"allreduce_ms", ms(t.computed, t.reduced), "commit_wait_ms", ms(t.reduced, t.commit), "apply_ms", ms(t.commit, t.applied))
	*t = stepTiming{prevApplied: t.applied}
}

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
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	am "github.com/ringtune/ringtune/node/agent/machine"
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
	// step reduced (default 2 minutes); past it the node treats the
	// session as lost (see RejoinTimeout).
	CommitTimeout time.Duration
	// RejoinTimeout bounds how long a node whose session with the
	// coordinator broke (the coordinator died and is being restarted, or
	// it dropped this node on a false suspicion) keeps trying to join
	// again (default 2 minutes). Meanwhile the node keeps its trainer
	// state, so a restarted coordinator (`--resume`) or the same one can
	// take it back without restarting the process. Past it the node exits
	// non-zero. Negative: never rejoin, exit when the session breaks.
	RejoinTimeout time.Duration
	// TLSCert, TLSKey and TLSCA are PEM files (certificate, its key, the
	// CA), needed only when the coordinator uses cluster.tls files; by
	// default the node derives its certificates from Key, as the
	// coordinator does, and follows the coordinator's TLS mode.
	TLSCert, TLSKey, TLSCA string
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
	if err := control.CheckNodeID(c.Name); err != nil {
		return fmt.Errorf("agent: --name: %w", err)
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
	if c.RejoinTimeout == 0 {
		c.RejoinTimeout = 2 * time.Minute
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
	// The ring's gRPC server starts once the coordinator's TLS mode is
	// known (after joining); until then peers' connections wait in the
	// listener's backlog.
	// The bulk plane shares the ring's server, and so its options (auth,
	// TLS): peers and the coordinator pull state and export files here.
	h := newHub()
	bulkSrv, err := bulk.NewServer(c.Key, h.source, 0)
	if err != nil {
		_ = lis.Close()
		return err
	}
	served := make(chan struct{})
	var gs *grpc.Server
	defer func() {
		if gs == nil {
			_ = lis.Close()
			return
		}
		gs.Stop()
		<-served
	}()

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
	coord, err := a.join(ctx, ml, a.cfg.JoinTimeout)
	if err != nil {
		return err
	}
	tlsMode := coord.TLS
	tc, err := a.tlsFor(tlsMode)
	if err != nil {
		return err
	}
	var serverTLS, clientTLS *tls.Config
	if tc != nil {
		serverTLS, clientTLS = tc.Server, tc.Client
	}
	a.log.Info("joined cluster", "coordinator", coord.GRPC, "ring", ringAddr, "tls", coord.TLS)
	ringSrv, err := allreduce.NewServer(c.Key)
	if err != nil {
		return err
	}
	gs = grpc.NewServer(allreduce.ServerOptions(c.Key, serverTLS)...)
	ringSrv.Register(gs)
	bulkSrv.Register(gs)
	go func() { defer close(served); _ = gs.Serve(lis) }()

	// One session per connection to a coordinator, and one protocol
	// machine for the node's life: when an established session is lost
	// (not ended by the coordinator, by a signal or by a local failure),
	// the machine keeps the trainer's state and asks to join again, until
	// its rejoin deadline (--rejoin-timeout after the loss) has passed.
	mach, t0, err := a.newMachine()
	if err != nil {
		return err
	}
	var keep *carried
	var lastLoss error
	var lostAt time.Time
	for {
		s, err := a.connect(coord.GRPC, clientTLS, ringSrv, h, bulkSrv, keep)
		if err == nil {
			s.m, s.t0 = mach, t0
			if mach.Phase() == am.Rejoining {
				a.log.Info("reconnected to the coordinator", "coordinator", coord.GRPC, "applied", s.applied, "after", time.Since(lostAt).Round(time.Millisecond))
			}
			err = s.run(ctx)
			keep = s.release(err)
		}
		opened := s != nil && s.established
		switch ph := mach.Phase(); {
		case !opened && (ph == am.Connecting || ph == am.Rejoining):
			// No session opened: the dial or the handshake failed.
			stepClock(mach, t0)
			mach.Step(am.Event{Kind: am.ConnectFailed, Error: err.Error()})
		case opened && ph != am.Done && ph != am.Rejoining && IsSessionLost(err):
			// The session broke outside the machine's sight (a send
			// failed): the machine decides whether to rejoin.
			stepClock(mach, t0)
			mach.Step(am.Event{Kind: am.Lost, Error: err.Error()})
		}
		if opened {
			lostAt, lastLoss = time.Now(), err
		}
		for _, n := range mach.Ready().Notes {
			a.log.Debug(n)
		}
		mach.Advance() // release dropped the step in flight and closed the session
		if mach.Phase() != am.Rejoining || ctx.Err() != nil {
			keep.close()
			if o, _ := mach.Outcome(); o == am.Failure && lastLoss != nil && IsSessionLost(err) {
				return fmt.Errorf("agent: lost the session with the coordinator (%v) and could not rejoin within --rejoin-timeout %s: %w", lastLoss, c.RejoinTimeout, err)
			}
			return err
		}
		dl, _ := mach.Deadline()
		until := time.Until(t0.Add(time.Duration(dl) * tick))
		a.log.Warn("session with the coordinator lost; joining again, keeping the trainer state", "err", err, "applied", keep.appliedOr(-1), "gives_up_in", until.Round(time.Second))
		select {
		case <-ctx.Done():
			keep.close()
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		coord, err = a.join(ctx, ml, time.Until(t0.Add(time.Duration(dl)*tick)))
		if err != nil {
			keep.close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("agent: lost the session with the coordinator (%v) and could not rejoin within --rejoin-timeout %s: %w", lastLoss, c.RejoinTimeout, err)
		}
		if coord.TLS != tlsMode {
			keep.close()
			return fmt.Errorf("agent: the coordinator came back with TLS mode %q, but this node serves its ring with %q; restart the node", coord.TLS, tlsMode)
		}
	}
}

// connect dials the coordinator's control and bulk services and opens a
// session that adopts keep (the trainer of a lost session, or nil).
// Errors reaching the coordinator are session losses (IsSessionLost).
func (a *Agent) connect(addr string, clientTLS *tls.Config, ringSrv *allreduce.Server, h *hub, bulkSrv *bulk.Server, keep *carried) (*session, error) {
	cc, err := control.Dial(addr, a.cfg.Key, clientTLS)
	if err != nil {
		return nil, lost(err)
	}
	// Model files come from the coordinator's bulk service, on the same
	// server as the session but on a connection of its own, so that a big
	// file does not share flow control with the session.
	bc, err := bulk.Dial(addr, a.cfg.Key, clientTLS)
	if err != nil {
		_ = cc.Close()
		return nil, lost(err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	st, err := control.OpenSession(sctx, cc)
	if err != nil {
		cancel()
		_ = bc.Close()
		_ = cc.Close()
		return nil, lost(err)
	}
	s := &session{a: a, st: st, ringSrv: ringSrv, hub: h, bulkSrv: bulkSrv, coord: bc, clientTLS: clientTLS, applied: -1, watch: newRingWatch()}
	s.conns = func() { cancel(); _ = bc.Close(); _ = cc.Close() }
	s.adopt(keep)
	return s, nil
}

// tlsFor returns the TLS configurations for the coordinator's TLS mode
// (control.TLSDerived, TLSFiles, or "" for none).
func (a *Agent) tlsFor(mode string) (*auth.TLSConfigs, error) {
	c := a.cfg
	switch mode {
	case "":
		if c.TLSCert != "" {
			return nil, errors.New("agent: --tls-cert is given but the coordinator runs without TLS (cluster.tls.enabled: false); drop the --tls-* flags or enable TLS on the coordinator")
		}
		return nil, nil
	case control.TLSDerived:
		if c.TLSCert != "" {
			return nil, errors.New("agent: --tls-cert is given but the coordinator derives its certificates from the cluster key (no cluster.tls.cert); drop the --tls-* flags")
		}
		return auth.DerivedTLS(c.Key)
	case control.TLSFiles:
		if c.TLSCert == "" || c.TLSKey == "" || c.TLSCA == "" {
			return nil, errors.New("agent: the coordinator uses TLS certificates from files (cluster.tls.cert/key/ca): pass this node's --tls-cert, --tls-key and the cluster's --tls-ca")
		}
		tc, err := auth.FileTLS(c.TLSCert, c.TLSKey, c.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("agent: --tls-cert/--tls-key/--tls-ca: %w", err)
		}
		return tc, nil
	}
	return nil, fmt.Errorf("agent: the coordinator announces TLS mode %q, which this node (%s) does not know; upgrade it", mode, Version)
}

// join joins the gossip cluster through the coordinator's address and
// returns the coordinator's metadata (control address, TLS mode).
func (a *Agent) join(ctx context.Context, ml *memberlist.Memberlist, within time.Duration) (control.Meta, error) {
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		if _, err := ml.Join([]string{a.cfg.Coordinator}); err != nil {
			lastErr = err
		} else {
			for _, m := range ml.Members() {
				meta, err := control.DecodeMeta(m.Meta)
				if err == nil && meta.Role == control.RoleCoordinator && meta.GRPC != "" {
					return meta, nil
				}
			}
			lastErr = errors.New("joined, but no member announces itself as coordinator")
		}
		select {
		case <-ctx.Done():
			return control.Meta{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no time left to try")
	}
	return control.Meta{}, fmt.Errorf("agent: could not join the cluster through coordinator %s within %s: %w (check the address, that the key file matches the coordinator's and that cluster.label is the same)", a.cfg.Coordinator, within.Round(time.Millisecond), lastErr)
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
	hub     *hub
	// noView: the trainer's state cannot be published as a view (not a
	// StateViewer, or on CUDA); publish stops asking until a new trainer.
	noView  bool
	bulkSrv *bulk.Server
	coord   *grpc.ClientConn // the coordinator's bulk service
	// clientTLS dials the ring's peers (nil without TLS).
	clientTLS *tls.Config

	tr      Trainer
	job     *control.Job
	params  int
	applied int // committed steps in the trainer's state, -1 before setup

	gen   uint64
	world *control.World
	ring  *allreduce.Ring
	// m is the session's protocol machine (drive.go): it decides which
	// message the node takes when, and every deadline; t0 is its tick 0.
	m  *am.Machine
	t0 time.Time
	// ctx is Run's (SIGTERM cancels it); stopReason is the stop's reason;
	// lostErr the session's loss and fatal this node's failure, for the
	// run's outcome.
	ctx        context.Context
	stopReason string
	lostErr    error
	fatal      error
	// timing of the step in flight, for the debug log that shows where a
	// step's wall time goes (compute, ring, waiting for the commit, apply,
	// waiting for the next step's batches).
	tm stepTiming

	fetched int64 // bytes of model files received, not taken from the cache
	// stateWaits are state requests for a step not applied yet.
	stateWaits []stateReq
	// watch lets the reader goroutine cancel an aborted step's all-reduce.
	watch *ringWatch
	// modelDir is the job's model directory, laid out from the cache.
	modelDir string

	// established is set once the coordinator accepted the handshake.
	established bool
	// kept is a lost session's trainer, adopted until the job says
	// whether it may continue.
	kept *carried
	// conns closes the session's connections to the coordinator.
	conns func()
	// plan cuts the gradient into the buckets each step reduces; ov is the
	// trainer when it can report ready gradients during backward and the
	// job asks for overlap (nil otherwise).
	plan *bucket.Plan
	ov   Overlapper
	// applyMS is the duration of the last optimizer step, reported with the
	// next step's reduced.
	applyMS float64
	// shard is the trainer under train.shard_optimizer zero1 (nil under
	// none) and z what it holds (see zero1.go).
	shard ShardTrainer
	z     zeroState
}

func (s *session) send(m *control.Msg) error {
	m.V = control.Version
	if err := s.st.Send(m); err != nil {
		return lost(fmt.Errorf("agent: send %s to coordinator: %w", m.Type, err))
	}
	return nil
}

// release ends the session's connections and its generation. After a
// lost session (IsSessionLost(err)) it hands back the trainer, without the
// gradients of any step in flight, for the next session to adopt; otherwise
// it closes the trainer and returns nil.
func (s *session) release(err error) *carried {
	s.hub.seal("the node's session ended")
	s.dropPending()
	if s.ring != nil {
		_ = s.ring.Close()
		s.ring = nil
	}
	s.hub.setExport(0, "")
	if cs, ok := s.st.(interface{ CloseSend() error }); ok {
		_ = cs.CloseSend()
	}
	if s.conns != nil {
		s.conns()
	}
	keep := s.kept // the job never came: hand the adopted trainer on
	s.kept = nil
	if s.tr != nil {
		keep = &carried{tr: s.tr, job: s.job, params: s.params, applied: s.applied, modelDir: s.modelDir}
		s.tr, s.modelDir = nil, ""
		if IsSessionLost(err) && s.a.cfg.RejoinTimeout >= 0 {
			// A step in flight is redone by the next generation: its
			// gradients must not leak into it.
			if derr := keep.tr.Discard(); derr != nil {
				s.a.log.Warn("cannot keep the trainer state: discarding the step in flight failed", "err", derr)
				keep.close()
				return nil
			}
		}
	}
	if !IsSessionLost(err) || s.a.cfg.RejoinTimeout < 0 {
		keep.close()
		return nil
	}
	return keep
}

// carried is what a node keeps from a lost session: the trainer, its state
// (applied committed steps of the run the job names) and its model
// directory.
type carried struct {
	tr       Trainer
	job      *control.Job
	params   int
	applied  int
	modelDir string
}

func (k *carried) close() {
	if k == nil {
		return
	}
	if k.tr != nil {
		_ = k.tr.Close()
	}
	if k.modelDir != "" {
		_ = os.RemoveAll(k.modelDir) // the cache keeps the files
	}
}

func (k *carried) appliedOr(none int) int {
	if k == nil {
		return none
	}
	return k.applied
}

// adopt takes a lost session's trainer: the hello announces its state, and
// the job decides whether it is kept (sameRun) or set up afresh.
func (s *session) adopt(k *carried) {
	if k == nil {
		return
	}
	s.kept = k
	s.applied = k.applied
}

// sameRun reports whether a trainer set up for job a may continue under
// job b: the same run (its id survives a coordinator's --resume), model
// files and training settings. Transfer and timeout settings may differ.
func sameRun(a, b *control.Job) bool {
	if a == nil || b == nil {
		return false
	}
	x, y := *a, *b
	for _, j := range []*control.Job{&x, &y} {
		j.ChunkBytes, j.Wire, j.TimeoutMS, j.Transport, j.StepTimeoutMS, j.BulkChunkBytes, j.BulkTimeoutMS = 0, "", 0, "", 0, 0, 0
	}
	return reflect.DeepEqual(x, y)
}

// SessionLostError is a failure of the session with the coordinator itself
// (the stream broke, a send failed, the coordinator went silent), as
// opposed to a failure of this node: the node may join again.
type SessionLostError struct{ Err error }

func (e *SessionLostError) Error() string { return e.Err.Error() }
func (e *SessionLostError) Unwrap() error { return e.Err }

func lost(err error) error {
	if err == nil || IsSessionLost(err) {
		return err
	}
	return &SessionLostError{Err: err}
}

// IsSessionLost reports whether err is (or wraps) a SessionLostError.
func IsSessionLost(err error) bool {
	var l *SessionLostError
	return errors.As(err, &l)
}

func (s *session) run(ctx context.Context) (err error) {
	// A panic in the protocol or the trainer must end the node with its own
	// exit code, and the coordinator must hear that the node failed.
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
			step := 0
			if s.m != nil {
				step, _ = s.m.InStep()
			}
			_ = s.send(&control.Msg{Type: control.TypeFailed, Gen: s.gen, Step: step, Error: err.Error()})
		}
	}()
	c := s.a.cfg
	if err := control.ClientHandshake(s.st, c.Key, control.Hello{ID: c.Name, Device: c.Device, Version: Version, Applied: s.applied}); err != nil {
		return lost(fmt.Errorf("agent: %w", err))
	}
	s.established = true
	s.ctx = ctx
	if err := s.startMachine(); err != nil || s.m.Phase() == am.Done {
		return err
	}
	in := make(chan inbound, 64)
	quit := make(chan struct{})
	defer close(quit)
	watch := s.watch
	go func() {
		for {
			m, err := s.st.Recv()
			if err == nil && m.Type == control.TypeAbort {
				// The loop may be inside the step's all-reduce: cancel it
				// now (the machine also asks for it, when its turn comes).
				watch.abort(m.Gen, m.Step)
			}
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
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	// On a signal the machine asks the coordinator to release the node and
	// goes on training until it is: the coordinator forms the next
	// generation without it between two steps, so the leave aborts no
	// step (issue 11, defect 9).
	termed := false
	for {
		// A state request waits for nothing else: with the state published
		// it streams off the loop while the next step runs; a request the
		// loop must serve itself is served before the next step starts.
		s.publish()
		select {
		case r := <-s.hub.states:
			s.serveState(r)
			continue
		default:
		}
		var done <-chan struct{}
		if !termed {
			done = ctx.Done()
		}
		select {
		case r := <-s.hub.states:
			s.serveState(r)
			continue
		case <-done:
			termed = true
			s.clock()
			s.m.Step(am.Event{Kind: am.Term})
		case <-ticker.C:
			s.clock()
		case ib := <-in:
			if ib.err != nil {
				s.lostErr = lost(fmt.Errorf("agent: session with coordinator: %w", ib.err))
				if errors.Is(ib.err, io.EOF) {
					s.lostErr = lost(errors.New("agent: the coordinator closed the session"))
				}
				s.m.Step(am.Event{Kind: am.Lost, Error: s.lostErr.Error()})
				if err := s.flush(); err != nil || s.m.Phase() == am.Done {
					return err
				}
				return s.lostErr
			}
			err := s.deliver(ib.m)
			if err != nil || s.m.Phase() == am.Done {
				return err
			}
			s.servePending()
			continue
		}
		if err := s.flush(); err != nil || s.m.Phase() == am.Done {
			return err
		}
		s.servePending()
	}
}

// commitTimeout is how long the node waits for the commit or abort of a
// step it reported: Config.CommitTimeout, but always past the
// coordinator's own step deadline (from the job) plus a margin, so that a
// silent rank makes the coordinator abort the step before any survivor
// gives up and exits.
func (s *session) commitTimeout() time.Duration {
	t := s.a.cfg.CommitTimeout
	if s.job != nil && s.job.StepTimeoutMS > 0 {
		t = max(t, time.Duration(s.job.StepTimeoutMS)*time.Millisecond+30*time.Second)
	}
	return t
}

func (s *session) onJob(j *control.Job) error {
	if s.job != nil {
		return errors.New("agent: a second job on one session")
	}
	if k := s.kept; k != nil {
		s.kept = nil
		// A zero1 trainer holds only its slices of the optimizer state, cut
		// for a world that is gone: it sets up afresh and loads the state.
		if sameRun(k.job, j) && j.Train.ShardOptimizer != config.ShardZero1 {
			s.job, s.tr, s.params, s.applied, s.modelDir = j, k.tr, k.params, k.applied, k.modelDir
			s.bulkSrv.SetChunkTimeout(s.bulkTimeout())
			s.hub.setLoopWait(s.bulkTimeout())
			if err := s.planBuckets(); err != nil {
				return err
			}
			s.a.log.Info("job of the same run: keeping the trainer state", "run", j.RunID, "applied", s.applied)
			return nil
		}
		s.a.log.Info("job of another run: setting up afresh", "run", j.RunID, "kept_run", k.job.RunID)
		k.close()
		s.applied = -1
	}
	s.job = j
	s.bulkSrv.SetChunkTimeout(s.bulkTimeout())
	s.hub.setLoopWait(s.bulkTimeout())
	need := map[string]bool{}
	var missing []string
	cached := 0
	for _, f := range j.Files {
		if err := checkName(f.Name); err != nil {
			return err
		}
		if need[f.SHA256] {
			continue // two names, one content: fetched once
		}
		if f.Size < 0 {
			return fmt.Errorf("agent: model file %s has size %d in the job", f.Name, f.Size)
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
		need[f.SHA256] = true
	}
	s.a.log.Info("job received", "files", len(j.Files), "cached", cached, "missing", len(missing))
	for _, sum := range missing {
		n, err := s.fetchModelFile(context.Background(), sum)
		if err != nil {
			return err
		}
		s.fetched += n
	}
	return s.setupTrainer()
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

// setupTrainer lays out the model directory from the cache and sets up the
// trainer.
func (s *session) setupTrainer() error {
	s.a.log.Info("model files ready", "fetched_bytes", s.fetched)
	j := s.job
	dir, err := os.MkdirTemp("", "ringtune-model-")
	if err != nil {
		return fmt.Errorf("agent: model dir: %w", err)
	}
	s.modelDir = dir
	for _, f := range j.Files {
		if err := linkOrCopy(s.blob(f.SHA256), filepath.Join(dir, f.Name)); err != nil {
			return fmt.Errorf("agent: model dir from cached model file %s (%s): %w", f.Name, s.blob(f.SHA256), err)
		}
	}
	tr, err := s.a.factory()
	if err != nil {
		return fmt.Errorf("agent: trainer: %w", err)
	}
	s.tr = tr
	n, err := tr.Setup(Job{ModelDir: dir, Task: j.Task, NumLabels: j.NumLabels, Labels: j.Labels, Init: j.Init, Seed: j.Seed, Device: s.a.cfg.Device,
		Train: splitTrain(j), SplitMinBytes: j.BucketBytes, TotalSteps: j.TotalSteps})
	if err != nil {
		return fmt.Errorf("agent: set up the model from %s: %w", dir, err)
	}
	s.params = n
	s.applied = 0
	if j.Train.ShardOptimizer == config.ShardZero1 {
		st, ok := tr.(ShardTrainer)
		if !ok {
			return fmt.Errorf("agent: train.shard_optimizer is zero1 but this node's trainer (%T) cannot shard the optimizer", tr)
		}
		s.shard = st
	}
	if err := s.planBuckets(); err != nil {
		return err
	}
	s.a.log.Info("trainer ready", "params", n, "shard_optimizer", j.Train.ShardOptimizer)
	if lr, ok := tr.(LoadReporter); ok {
		if rep := lr.LoadReport(); rep != "" {
			s.a.log.Info("pretrained weights", "report", rep)
		}
	}
	return nil
}

// splitTrain is the job's training settings for the trainer: with one
// all-reduce of the whole gradient (allreduce.bucket_bytes 0) the split
// embedding has no bucket to leave its matrix out of, so its two extra
// ring operations would buy nothing, and it is off.
func splitTrain(j *control.Job) control.TrainSpec {
	t := j.Train
	if j.BucketBytes == 0 {
		t.SparseEmbedding = false
	}
	return t
}

// planBuckets cuts the gradient into the job's buckets: by parameter when
// the trainer describes its gradient (Overlapper), else one bucket.
//
// A gradient no bigger than one bucket is reduced whole, in one operation
// after backward, as with allreduce.bucket_bytes 0. Cut by parameter
// groups (the embeddings apart, the weight-decayed block apart from the
// rest), it would make four or so buckets that all become final in the
// last layers of backward, so overlap would hide next to nothing, while
// each extra operation adds the ring's latency, 2(N-1) hops, to the step
// (scripts/bench.sh train's 5.4M-parameter model: 21 MB in 4 buckets).
func (s *session) planBuckets() error {
	j := s.job
	if j.BucketBytes < 0 {
		return fmt.Errorf("agent: job from the coordinator: allreduce.bucket_bytes is %d; want 0 or more", j.BucketBytes)
	}
	bytes := j.BucketBytes
	if int64(s.params)*4 <= int64(bytes) {
		bytes = 0
	}
	segs := []bucket.Segment{{Off: 0, Len: s.params}}
	s.ov = nil
	ov, ok := s.tr.(Overlapper)
	if ok {
		segs = ov.GradSegments()
		// One bucket is final only when backward ends: nothing to
		// overlap, and no hooks to call.
		if j.Overlap && bytes > 0 {
			s.ov = ov
		}
	}
	p, err := bucket.NewPlan(s.params, segs, bytes)
	if err != nil {
		return fmt.Errorf("agent: gradient buckets of the model: %w", err)
	}
	s.plan = p
	rows := 0
	if rs, ok := s.tr.(RowSplitter); ok {
		rows = rs.SplitRows()
	}
	s.a.log.Info("gradient buckets", "buckets", len(p.Buckets), "bucket_bytes", j.BucketBytes, "overlap", s.ov != nil, "split_embedding_rows", rows)
	return nil
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
	// (The step in flight of the old generation, if any, was discarded:
	// the machine asks for that before the join.)
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
	r, err := allreduce.New(allreduce.Config{Generation: w.Generation, Rank: w.Rank, Peers: w.Peers, Server: s.ringSrv, ClientTLS: s.clientTLS, Key: s.a.cfg.Key, ChunkBytes: j.ChunkBytes, Wire: wire, Transport: transport, Timeout: time.Duration(j.TimeoutMS) * time.Millisecond,
		Logf: func(format string, args ...any) {
			s.a.log.Warn("all-reduce link", "gen", w.Generation, "detail", fmt.Sprintf(format, args...))
		}})
	if err != nil {
		return fmt.Errorf("agent: ring of generation %d: %w", w.Generation, err)
	}
	s.ring, s.gen, s.world = r, w.Generation, w
	s.a.log.Info("generation", "gen", w.Generation, "rank", w.Rank, "size", len(w.Peers), "transport", transport.String())
	if s.shard != nil {
		s.reslice(w)
	}
	return nil
}

// onStep runs step m and its all-reduce. A failure of the ring is
// ringErr (the step is lost, the node is fine); err is this node's own.
func (s *session) onStep(m *control.Msg) (red *control.Reduced, ringErr, err error) {
	s.tm.start = time.Now()
	// The abort of this step (read by the reader goroutine) cancels its
	// reductions, which may start during the last micro-batch.
	ctx := s.watch.begin(m.Gen, m.Step)
	defer s.watch.end()
	spec := StepSpec{Trainer: s.tr, Plan: s.plan, Overlap: s.ov != nil, Ring: s.ring}
	if s.shard != nil {
		// zero1: the buckets are reduce-scattered (with the buddy's copy),
		// then the gradient's global sum of squares.
		spec.Shard = func(ctx context.Context) (err error) {
			s.z.sumsq, err = ShardedSumSq(ctx, s.ring, s.shard)
			return err
		}
	}
	res, err := RunStep(ctx, spec, m.Batches)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: step %d: %w", m.Step, err)
	}
	s.tm.computed = res.Computed
	s.tm.comm = res.Comm
	if res.RingErr != nil {
		// The ring is broken for good; the coordinator will abort the step
		// and form a new generation.
		s.a.log.Warn("all-reduce failed", "step", m.Step, "err", res.RingErr)
		return nil, res.RingErr, nil
	}
	r := res.Reduced
	r.ApplyMS = s.applyMS
	r.OptimizerBytes = s.optimizerBytes()
	s.tm.reduced = time.Now()
	r.Metrics = s.tm.report()
	return &r, nil, nil
}

// onCommit applies committed step m. gathered is false when zero1 could
// not gather the parameters after the update (not fatal: the next
// generation re-slices them), so no digest can be taken now.
func (s *session) onCommit(m *control.Msg) (gathered bool, err error) {
	s.tm.commit = time.Now()
	if s.shard != nil {
		return s.applyShard(m)
	}
	if err := s.tr.Apply(m.Step, m.Count); err != nil {
		return false, fmt.Errorf("agent: apply step %d: %w", m.Step, err)
	}
	s.applied = m.Step + 1
	s.tm.applied = time.Now()
	s.applyMS = ms(s.tm.applied.Sub(s.tm.commit))
	s.tm.log(s.a.log, m.Step, s.optimizerBytes())
	return true, nil
}

// StepSpec is what RunStep needs of a node.
type StepSpec struct {
	Trainer Trainer
	// Plan cuts the gradient into buckets (from the trainer's
	// GradSegments, or one segment when it has none).
	Plan *bucket.Plan
	// Overlap starts the buckets during the last micro-batch's backward;
	// Trainer must then implement Overlapper.
	Overlap bool
	Ring    bucket.Starter
	// Shard, when set, makes the step zero1's (train.shard_optimizer):
	// each bucket is reduce-scattered with the buddy hop as a window of
	// the whole gradient (bucket.Plan.BeginWindows; Ring must then be a
	// bucket.WindowStarter), during the last backward with Overlap as the
	// all-reduce is, so each rank ends with the sums of its own and its
	// buddy's slices of the whole gradient, bit-identical to one
	// reduce-scatter of it. A split embedding's rows are all-reduced after
	// the buckets. Shard runs once every operation is done (the global sum
	// of squares); its time counts as exposed communication and its error
	// as the ring's.
	Shard func(ctx context.Context) error
}

// StepResult is one step's outcome on a node.
type StepResult struct {
	// Reduced is the node's report (LossSum, Count, Samples, Tokens,
	// Seconds and the communication figures).
	Reduced control.Reduced
	// Comm says where the communication went.
	Comm bucket.Stats
	// Computed is when the last backward ended.
	Computed time.Time
	// RingErr is the all-reduce's failure: the step is lost but the node is
	// fine (the coordinator aborts the step and forms a new generation).
	RingErr error
}

// RunStep runs one step on a node: Accumulate on each micro-batch, then the
// all-reduce (zero1: reduce-scatter, see StepSpec.Shard) of the gradient in
// the plan's buckets, started during the last backward with Overlap, else
// after it. The returned error is a local failure (the trainer's); a
// failure of the ring is StepResult.RingErr. The agent's protocol loop
// calls it for each step; tests call it to run real trainers on real rings
// without a coordinator.
func RunStep(ctx context.Context, sp StepSpec, batches []*data.Batch) (StepResult, error) {
	var res StepResult
	start := time.Now()
	red := &res.Reduced
	var ov Overlapper
	if sp.Overlap {
		var ok bool
		if ov, ok = sp.Trainer.(Overlapper); !ok {
			return res, errors.New("overlap asked of a trainer that cannot report ready gradients")
		}
	}
	begin := func(buf []float32, overlap bool) (*bucket.Reduce, error) {
		return sp.Plan.Begin(ctx, sp.Ring, buf, overlap)
	}
	if sp.Shard != nil {
		ws, ok := sp.Ring.(bucket.WindowStarter)
		if !ok {
			return res, fmt.Errorf("zero1 step on a ring (%T) that cannot reduce windows of the gradient", sp.Ring)
		}
		begin = func(buf []float32, overlap bool) (*bucket.Reduce, error) {
			return sp.Plan.BeginWindows(ctx, ws, allreduce.KindReduceScatterBuddy, buf, overlap)
		}
	}
	// A split embedding's rows (rows.go): agreed on before the first
	// forward, reduced after the buckets.
	rows, ringErr, err := beginRows(ctx, sp, batches)
	if err != nil {
		return res, err
	}
	if ringErr != nil {
		res.RingErr = ringErr
		return res, nil
	}
	var op *bucket.Reduce
	for i, b := range batches {
		var loss float64
		var n int
		var err error
		if ov != nil && i == len(batches)-1 {
			// The last micro-batch: buckets start as backward finishes
			// them.
			if op, err = begin(ov.GradBuffer(), true); err != nil {
				return res, err
			}
			loss, n, err = ov.AccumulateReady(b, op.Ready)
			if err != nil {
				op.Abandon()
			}
		} else {
			loss, n, err = sp.Trainer.Accumulate(b)
		}
		if err != nil {
			return res, fmt.Errorf("micro-batch %d: %w", i, err)
		}
		red.LossSum += loss
		red.Count += n
		red.Samples += b.Size
		red.Tokens += b.Tokens
	}
	res.Computed = time.Now()
	if op == nil {
		// No overlap (or no micro-batch): the same buckets, all started
		// now.
		grads, err := sp.Trainer.Gradients()
		if err != nil {
			return res, fmt.Errorf("gradients: %w", err)
		}
		if op, err = begin(grads, false); err != nil {
			return res, err
		}
		for i := range sp.Plan.Segments() {
			op.Ready(i)
		}
	}
	rowGrads, err := rows.grads()
	if err != nil {
		op.Abandon()
		return res, err
	}
	err = op.BackwardDone()
	if err == nil && rowGrads != nil {
		err = op.Append(rowGrads)
	}
	st, werr := op.Wait()
	if err == nil {
		err = werr
	}
	if err == nil && sp.Shard != nil {
		// Nothing of it can start before the last bucket is done: it is
		// exposed, like the wait for that bucket.
		t0 := time.Now()
		err = sp.Shard(ctx)
		took := time.Since(t0)
		st.Comm += took
		st.Exposed += took
	}
	rows.account(&st)
	res.Comm = st
	res.RingErr = err
	red.Seconds = time.Since(start).Seconds()
	red.CommMS, red.OverlappedMS, red.ExposedMS, red.Buckets = ms(st.Comm), ms(st.Overlapped), ms(st.Exposed), st.Buckets
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// onExport writes the model into a fresh directory, which the node's bulk
// service then serves, and lists its files for the coordinator to pull.
func (s *session) onExport(req int) ([]control.FileInfo, error) {
	dir, err := os.MkdirTemp("", "ringtune-export-")
	if err != nil {
		return nil, fmt.Errorf("agent: export dir: %w", err)
	}
	if err := s.tr.Export(dir); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("agent: export: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("agent: export: %w", err)
	}
	var files []control.FileInfo
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		sum, n, err := hashFile(filepath.Join(dir, e.Name()))
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("agent: export: %w", err)
		}
		files = append(files, control.FileInfo{Name: e.Name(), Size: n, SHA256: sum})
	}
	s.hub.setExport(req, dir)
	return files, nil
}

// linkOrCopy makes dst a copy of src: a hard link when both are on one
// file system, else a streamed copy (never a whole-file buffer).
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// stepTiming holds the moments of one step on this node.
type stepTiming struct {
	start, computed, reduced, commit, applied time.Time
	prevApplied                               time.Time // end of the previous step
	// prevApply is how long the previous step's apply took; 0 before the
	// first one.
	prevApply time.Duration
	comm      bucket.Stats
	// updated: zero1 only, the end of the slices' update; apply_ms then
	// splits into update_ms and the parameters' all-gather, gather_ms.
	updated time.Time
	// prevCPU is the process's CPU time at the end of the previous step
	// (processCPU; 0 before the first), so that cpu_ms covers a whole
	// step cycle, the idle wait and the coordinator's messages included.
	prevCPU time.Duration
}

// report is the step's control.Reduced.Metrics: its phases so far, the
// previous step's apply (this step's comes after the commit, so after the
// report) and the process's resident memory.
func (t *stepTiming) report() map[string]float64 {
	m := map[string]float64{
		control.MetricComputeMS:        ms(t.computed.Sub(t.start)),
		control.MetricExposedCommMS:    ms(t.comm.Exposed),
		control.MetricOverlappedCommMS: ms(t.comm.Overlapped),
		control.MetricCommMS:           ms(t.comm.Comm),
	}
	if t.prevApply > 0 {
		m[control.MetricApplyMS] = ms(t.prevApply)
	}
	if rss, ok := residentBytes(); ok {
		m[control.MetricRSSMB] = float64(rss) / (1 << 20)
	}
	return m
}

// residentBytes reads the process's resident set size from
// /proc/self/statm. Where there is no /proc (not Linux) the report just
// lacks it, so a failure is not an error.
func residentBytes() (int64, bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// log writes the step's phases at debug level and starts the next step's
// idle clock. idle_ms is the time between applying the previous step and
// starting this one: the node had nothing to do.
// optBytes is the optimizer state held on this node (-1: not reported).
func (t *stepTiming) log(l *slog.Logger, step int, optBytes int64) {
	ms := func(a, b time.Time) float64 { return float64(b.Sub(a).Microseconds()) / 1000 }
	msOf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	idle := 0.0
	if !t.prevApplied.IsZero() {
		idle = ms(t.prevApplied, t.start)
	}
	cpu, cpuOK := processCPU()
	cpuMS := -1.0 // not measured
	if cpuOK && t.prevCPU > 0 {
		cpuMS = msOf(cpu - t.prevCPU)
	}
	l.Debug("step timing", "step", step, "idle_ms", idle, "compute_ms", ms(t.start, t.computed),
		"allreduce_ms", ms(t.computed, t.reduced), "exposed_comm_ms", msOf(t.comm.Exposed), "overlapped_comm_ms", msOf(t.comm.Overlapped),
		"comm_ms", msOf(t.comm.Comm), "buckets", t.comm.Buckets,
		"commit_wait_ms", ms(t.reduced, t.commit), "apply_ms", ms(t.commit, t.applied), "optimizer_bytes", optBytes,
		// The process's CPU time (all threads) since the previous step's
		// end: what a step costs the host, independent of its load.
		"cpu_ms", cpuMS,
		// The wall clock of sending reduced and of taking the commit: on
		// one host, the nodes' moments line up, so the commit latency
		// (the last rank's reduced to every node's commit) can be read
		// off the logs (scripts/bench.sh control).
		"reduced_at_us", t.reduced.UnixMicro(), "commit_at_us", t.commit.UnixMicro())
	if !t.updated.IsZero() {
		l.Debug("zero1 apply", "step", step, "update_ms", ms(t.commit, t.updated), "gather_ms", ms(t.updated, t.applied))
	}
	*t = stepTiming{prevApplied: t.applied, prevApply: t.applied.Sub(t.commit), prevCPU: cpu}
}

// Exit codes of `node join` (see ExitCode).
const (
	ExitOK      = 0  // the run ended, or the node left on SIGTERM/SIGINT
	ExitFailure = 1  // the run or the node failed
	ExitPanic   = 70 // a bug: the node panicked (EX_SOFTWARE)
)

// PanicError is a recovered panic of the node's protocol loop or trainer.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("agent: internal error (a bug; please report it with this message): panic: %v\n%s", e.Value, e.Stack)
}

// ExitCode maps an error of Command or Run to the process exit code.
func ExitCode(err error) int {
	var p *PanicError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &p):
		return ExitPanic
	}
	return ExitFailure
}

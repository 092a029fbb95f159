package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
)

// hub connects the node's bulk service (gRPC handler goroutines) to the
// session loop, the only goroutine that may change the trainer's state.
//
// A state request is streamed through a pipe, which the handler sends out
// chunk by chunk. When the loop has published a view of its committed
// state (a trainer whose state is host memory: StateViewer), a goroutine
// writes the pipe from that view while the loop goes on with the next
// step's forward and backward: the loop seals the view, ending every read
// of it, before it changes the state (an applied step, a loaded state, a
// re-slice, a new trainer), so a reader never sees a step half applied.
// Otherwise the request is handed to the loop, which checks that the
// trainer holds the committed step asked for and runs WriteState into the
// pipe, busy for the whole transfer. A consumer that vanishes closes the
// pipe, which ends the writer with an error.
//
// Export files are served from the directory of the newest export, without
// the loop.
type hub struct {
	states chan stateReq

	mu        sync.Mutex
	exportReq int
	exportDir string

	// vmu guards the published view and its reads in progress; vcond
	// signals a read's end (seal waits on it).
	vmu    sync.Mutex
	vcond  sync.Cond
	view   *stateView
	leases map[*lease]struct{}
	pub    chan struct{} // closed at the next publish (nextView)

	// loopWait bounds how long a request the loop must serve waits for
	// it (cluster.bulk_timeout, from the job): a loop in the middle of a
	// step answers after it.
	loopWait atomic.Int64
}

// setLoopWait sets loopWait (0: bulk.DefaultChunkTimeout).
func (h *hub) setLoopWait(d time.Duration) { h.loopWait.Store(int64(d)) }

type stateReq struct {
	step int
	w    *io.PipeWriter
	// shard is a KindShard request (zero1): block (0, 1) and whether the
	// buddy slice is asked for; block is -1 for a whole state. gen is the
	// generation whose layout the requester expects (0: any).
	block int
	buddy bool
	gen   uint64
}

func newHub() *hub {
	h := &hub{states: make(chan stateReq)}
	h.vcond.L = &h.vmu
	return h
}

// source is the bulk.Source of a node.
func (h *hub) source(ctx context.Context, r bulk.Request) (io.ReadCloser, error) {
	switch r.Kind {
	case bulk.KindState, bulk.KindShard:
		pr, pw := io.Pipe()
		sr := stateReq{step: r.Step, w: pw, block: -1}
		if r.Kind == bulk.KindShard {
			sr.block, sr.buddy, sr.gen = r.Req, r.Name == "buddy", r.Gen
		}
		// The loop may publish the view while this waits for it (it
		// applies the step asked for, then starts the next one): the
		// request then streams from the view at once, instead of waiting
		// for the loop to finish that step.
		wait := time.Duration(h.loopWait.Load())
		if wait <= 0 {
			wait = bulk.DefaultChunkTimeout
		}
		busy := time.NewTimer(wait)
		defer busy.Stop()
		for {
			published := h.nextView()
			if h.serveView(sr) {
				return pr, nil
			}
			select {
			case h.states <- sr:
				return pr, nil
			case <-published:
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-busy.C:
				return nil, fmt.Errorf("node busy: the state of step %d was not served within %s (this node serves its state from its loop, which was in a longer step; raise cluster.bulk_timeout above the step time, or set checkpoint.background: false)", r.Step, wait)
			}
		}
	case bulk.KindExport:
		if err := checkName(r.Name); err != nil {
			return nil, err
		}
		h.mu.Lock()
		dir, req := h.exportDir, h.exportReq
		h.mu.Unlock()
		if dir == "" || req != r.Req {
			return nil, fmt.Errorf("no export %d on this node (newest is %d)", r.Req, req)
		}
		return os.Open(filepath.Join(dir, r.Name))
	}
	return nil, fmt.Errorf("a node serves state and export files, not %q", r.Kind)
}

// setExport makes dir the served export req, removing the previous one.
func (h *hub) setExport(req int, dir string) {
	h.mu.Lock()
	old := h.exportDir
	h.exportReq, h.exportDir = req, dir
	h.mu.Unlock()
	if old != "" && old != dir {
		_ = os.RemoveAll(old)
	}
}

// serveState answers one state request on the session loop. A request for
// a step the node has not applied yet waits (see servePending): the bulk
// request travels on its own connection and can overtake the commit on the
// session.
func (s *session) serveState(r stateReq) {
	var err error
	switch {
	case s.tr == nil || s.applied < 0:
		err = errors.New("this node holds no trainer state")
	case s.applied < r.step:
		s.stateWaits = append(s.stateWaits, r)
		return
	case s.applied != r.step:
		err = fmt.Errorf("this node holds the state of step %d, not %d", s.applied, r.step)
	case s.serveFromView(r):
		return // streamed off the loop
	case r.block >= 0:
		err = s.serveShard(r)
	case s.shard != nil:
		start := time.Now()
		err = s.writeAssembled(r.w)
		if err == nil {
			s.a.log.Info("assembled zero1 state served", "applied", s.applied, "seconds", time.Since(start).Seconds())
		}
	default:
		start := time.Now()
		err = s.tr.WriteState(r.w)
		if err == nil {
			s.a.log.Info("state served", "applied", s.applied, "seconds", time.Since(start).Seconds())
		}
	}
	if err != nil {
		s.a.log.Warn("state request failed", "step", r.step, "err", err)
	}
	_ = r.w.CloseWithError(err) // nil: the reader sees EOF
}

// servePending serves waiting state requests whose step is now applied
// and fails those the node has moved past.
func (s *session) servePending() {
	if len(s.stateWaits) == 0 {
		return
	}
	reqs := s.stateWaits
	s.stateWaits = nil
	for _, r := range reqs {
		s.serveState(r)
	}
}

// dropPending fails every waiting state request (the session ends).
func (s *session) dropPending() {
	for _, r := range s.stateWaits {
		_ = r.w.CloseWithError(errors.New("the node is leaving"))
	}
	s.stateWaits = nil
}

func (s *session) bulkTimeout() time.Duration {
	if s.job != nil && s.job.BulkTimeoutMS > 0 {
		return time.Duration(s.job.BulkTimeoutMS) * time.Millisecond
	}
	return bulk.DefaultChunkTimeout
}

func (s *session) bulkChunk() int {
	if s.job != nil {
		return s.job.BulkChunkBytes
	}
	return 0
}

// fetchModelFile pulls the model file with content hash sum from the
// coordinator into the cache: streamed to a temporary file, verified, then
// renamed, so the cache never holds a partial or corrupt file under its
// hash.
func (s *session) fetchModelFile(ctx context.Context, sum string) (int64, error) {
	if err := os.MkdirAll(s.a.cfg.CacheDir, 0o755); err != nil {
		return 0, fmt.Errorf("agent: cache dir: %w", err)
	}
	f, err := os.CreateTemp(s.a.cfg.CacheDir, "."+sum+".tmp-")
	if err != nil {
		return 0, fmt.Errorf("agent: cache model file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	res, err := bulk.Fetch(ctx, s.coord, bulk.Request{Kind: bulk.KindModel, Name: sum, ChunkBytes: s.bulkChunk()}, f, s.bulkTimeout(), sum)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("agent: model file %s from the coordinator: %w", sum, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return 0, fmt.Errorf("agent: cache model file: %w", err)
	}
	if err := os.Rename(tmp, s.blob(sum)); err != nil {
		return 0, fmt.Errorf("agent: cache model file: %w", err)
	}
	return res.Bytes, nil
}

// onPull loads the committed state from the bulk source the coordinator
// named, straight into the trainer. On failure the node holds no committed
// state (the coordinator treats it as stale); the machine answers loaded
// with the error.
func (s *session) onPull(m *control.Msg) error {
	p := m.Pull
	start := time.Now()
	if err := s.pullState(p); err != nil {
		s.applied = -1
		s.z.valid = false
		s.a.log.Warn("state pull failed", "from", p.Addr, "kind", p.Kind, "step", p.Step, "err", err)
		return err
	}
	s.applied = p.Step
	if s.shard != nil {
		// ReadState kept this rank's slices of the current layout.
		s.z = zeroState{valid: true, gen: s.gen, rank: s.world.Rank, size: len(s.world.Peers)}
	}
	s.a.log.Info("state loaded", "applied", s.applied, "from", p.Addr, "kind", p.Kind, "seconds", time.Since(start).Seconds())
	return nil
}

func (s *session) pullState(p *control.Pull) error {
	cc, err := bulk.Dial(p.Addr, s.a.cfg.Key, s.clientTLS)
	if err != nil {
		return err
	}
	defer cc.Close()
	kind := bulk.KindState
	if p.Kind == "checkpoint" {
		kind = bulk.KindCheckpoint
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	fetched := make(chan error, 1)
	go func() {
		_, err := bulk.Fetch(ctx, cc, bulk.Request{Kind: kind, Step: p.Step, ChunkBytes: s.bulkChunk()}, pw, s.bulkTimeout(), p.SHA256)
		_ = pw.CloseWithError(err)
		fetched <- err
	}()
	err = s.tr.ReadState(pr)
	if err == nil {
		// The whole state is in; the stream must end here, and only
		// ends once the transfer's checksum has been verified.
		err = control.ExpectEOF(pr)
	}
	if err != nil {
		cancel()
	}
	_ = pr.CloseWithError(errors.New("agent: state reader closed"))
	if ferr := <-fetched; ferr != nil {
		return ferr
	}
	return err
}

// hashFile is the SHA-256 (hex) and size of a file, read streaming.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

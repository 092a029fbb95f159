package agent

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/ringtune/ringtune/control"
)

// StateViewer is implemented by trainers whose committed state is host
// memory that only the agent's state-changing calls write (Setup, Apply,
// ApplyShard, ReadState, Reshard, SetHeldMoments). The agent then streams
// that state to the bulk plane from the bulk handler's goroutine while its
// loop runs the next step's forward and backward (a background
// checkpoint: checkpoint.background), and it ends every such read before
// it makes one of those calls (hub.seal).
type StateViewer interface {
	// StateView returns the committed state as slices of the trainer's
	// own memory, valid until the next state-changing call. ok is false
	// when the state does not live in host memory (CUDA): the agent then
	// serves it from its loop, as WriteState.
	StateView() (v StateView, ok bool, err error)
}

// StateView is a trainer's state as slices of its own memory.
type StateView struct {
	// Blocks is WriteState's layout: the parameters, then each optimizer
	// buffer whole. Under zero1 it holds the parameters only.
	Blocks [][]float32
	// Step is the optimizer's step count (the state header's).
	Step int64
	// Held is, under zero1, the moments this rank holds: [0] its own
	// slice's, [1] its buddy copy's, each [first moment, second moment].
	Held [2][2][]float32
}

// stateView is a committed state the bulk plane streams without the
// session loop: the loop publishes it when it holds a servable state
// (session.publish) and seals it before it changes that state.
type stateView struct {
	step int
	gen  uint64
	// whole streams the state in control.EncodeState's layout.
	whole func(ctx context.Context, w io.Writer) error
	// held streams one moment block of the own or buddy slice (KindShard);
	// nil under shard_optimizer none.
	held func(w io.Writer, buddy bool, block int) error
}

// lease is one read of the published view in progress.
type lease struct {
	w      *io.PipeWriter
	cancel context.CancelFunc
}

// serveView starts streaming r from the published view in a goroutine of
// its own and reports whether it did: false when no view is published or
// it holds another step (or, for a slice, another generation's layout);
// the request then goes to the loop.
func (h *hub) serveView(r stateReq) bool {
	h.vmu.Lock()
	v := h.view
	if v == nil || v.step != r.step || (r.block >= 0 && (v.held == nil || (r.gen != 0 && r.gen != v.gen))) {
		h.vmu.Unlock()
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &lease{w: r.w, cancel: cancel}
	if h.leases == nil {
		h.leases = map[*lease]struct{}{}
	}
	h.leases[l] = struct{}{}
	h.vmu.Unlock()
	go func() {
		var err error
		if r.block >= 0 {
			err = v.held(r.w, r.buddy, r.block)
		} else {
			err = v.whole(ctx, r.w)
		}
		_ = r.w.CloseWithError(err) // nil: the reader sees EOF
		cancel()
		h.vmu.Lock()
		delete(h.leases, l)
		h.vcond.Broadcast()
		h.vmu.Unlock()
	}()
	return true
}

// published reports whether a view is published.
func (h *hub) published() bool {
	h.vmu.Lock()
	defer h.vmu.Unlock()
	return h.view != nil
}

// publish makes v the view that requests are served from.
func (h *hub) publish(v *stateView) {
	h.vmu.Lock()
	h.view = v
	if h.pub != nil {
		close(h.pub)
		h.pub = nil
	}
	h.vmu.Unlock()
}

// nextView is closed when the next view is published.
func (h *hub) nextView() <-chan struct{} {
	h.vmu.Lock()
	defer h.vmu.Unlock()
	if h.pub == nil {
		h.pub = make(chan struct{})
	}
	return h.pub
}

// seal withdraws the view and ends every read of it in progress, waiting
// until none is left, so that the caller may change the state: a reader
// gets an error saying why (the checkpoint's transfer fails and the
// coordinator asks again). Under checkpoint.background the coordinator
// commits no step while its transfer runs, so a seal at a commit finds
// nothing to end; it guards against a reader the coordinator gave up.
func (h *hub) seal(why string) {
	h.vmu.Lock()
	defer h.vmu.Unlock()
	h.view = nil
	for l := range h.leases {
		l.cancel()
		_ = l.w.CloseWithError(fmt.Errorf("the node's state changed while it was being read (%s); ask again", why))
	}
	for len(h.leases) > 0 {
		h.vcond.Wait()
	}
}

// publish publishes the session's committed state, if it is servable and
// the trainer can be read from another goroutine. It runs on the loop, so
// the state cannot change meanwhile.
func (s *session) publish() {
	if s.tr == nil || s.applied < 0 || s.noView || s.hub.published() {
		return
	}
	sv, ok := s.tr.(StateViewer)
	if !ok {
		s.noView = true
		return
	}
	if s.shard != nil && (!s.z.valid || s.z.dirty || s.z.gen != s.gen || s.world == nil) {
		return // being re-sliced: no whole state to serve
	}
	tv, ok, err := sv.StateView()
	if err != nil {
		s.a.log.Warn("state view failed; the state is served from the loop", "applied", s.applied, "err", err)
		s.noView = true
		return
	}
	if !ok || len(tv.Blocks) == 0 {
		s.noView = true
		return
	}
	v := &stateView{step: s.applied, gen: s.gen}
	log := s.a.log
	if s.shard == nil {
		blocks, step, applied := tv.Blocks, tv.Step, s.applied
		v.whole = func(_ context.Context, w io.Writer) error {
			start := time.Now()
			if err := writeBlocks(w, blocks, step); err != nil {
				return err
			}
			log.Info("state served", "applied", applied, "seconds", time.Since(start).Seconds(), "off_loop", true)
			return nil
		}
	} else {
		held := tv.Held
		a := s.assembly(tv.Blocks[0], func(w io.Writer, buddy bool, block int) error {
			return writeHeldView(w, held, buddy, block)
		})
		v.held = a.writeHeld
		v.whole = func(ctx context.Context, w io.Writer) error {
			start := time.Now()
			if err := a.write(ctx, w); err != nil {
				return err
			}
			log.Info("assembled zero1 state served", "applied", a.applied, "seconds", time.Since(start).Seconds(), "off_loop", true)
			return nil
		}
	}
	s.hub.publish(v)
}

// writeBlocks writes a state in control.EncodeState's layout: the header,
// then the blocks (the parameters, then each optimizer buffer).
func writeBlocks(w io.Writer, blocks [][]float32, step int64) error {
	no := 0
	for _, b := range blocks[1:] {
		no += len(b)
	}
	if err := control.WriteStateHeader(w, len(blocks[0]), no, int(step)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	for _, b := range blocks {
		if err := control.WriteFloat32s(w, b); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
	}
	return nil
}

// writeHeldView writes a held moment block from a StateView.
func writeHeldView(w io.Writer, held [2][2][]float32, buddy bool, block int) error {
	if block < 0 || block > 1 {
		return fmt.Errorf("moment block %d (want 0 or 1)", block)
	}
	i := 0
	if buddy {
		i = 1
	}
	return control.WriteFloat32s(w, held[i][block])
}

// serveFromView publishes the state if it is not yet and streams r from
// the view; false when the state cannot be viewed.
func (s *session) serveFromView(r stateReq) bool {
	s.publish()
	return s.hub.serveView(r)
}

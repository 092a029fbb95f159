package agent

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
)

// viewOf publishes blocks (WriteState's layout) as the view of step.
func viewOf(h *hub, step int, blocks [][]float32) {
	h.publish(&stateView{step: step, whole: func(_ context.Context, w io.Writer) error {
		return writeBlocks(w, blocks, 7)
	}})
}

// TestViewServedOffTheLoop: with a view published, a state request is
// streamed without the loop (nothing reads hub.states), in WriteState's
// layout; a request for another step goes to the loop.
func TestViewServedOffTheLoop(t *testing.T) {
	h := newHub()
	p, m, v := []float32{1, 2, 3}, []float32{4, 5, 6}, []float32{7, 8, 9}
	viewOf(h, 5, [][]float32{p, m, v})
	rc, err := h.source(context.Background(), bulk.Request{Kind: bulk.KindState, Step: 5})
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	_ = rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	if err := control.WriteStateHeader(&want, 3, 6, 7); err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]float32{p, m, v} {
		want.Write(control.Float32Bytes(b))
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("streamed %d bytes, want WriteState's %d", len(got), want.Len())
	}

	// Step 6 is not the view's: the request is handed to the loop.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := h.source(ctx, bulk.Request{Kind: bulk.KindState, Step: 6})
		errc <- err
	}()
	select {
	case r := <-h.states:
		if r.step != 6 {
			t.Errorf("loop got a request for step %d, want 6", r.step)
		}
		_ = r.w.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the request for another step never reached the loop")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}

	// A slice request needs a view with slices and the requester's layout.
	h.publish(&stateView{step: 5, gen: 3, whole: func(context.Context, io.Writer) error { return nil },
		held: func(w io.Writer, buddy bool, block int) error {
			return writeHeldView(w, [2][2][]float32{{m, v}, {p, p}}, buddy, block)
		}})
	pr, pw := io.Pipe()
	if h.serveView(stateReq{step: 5, w: pw, block: 1, gen: 4}) {
		t.Error("a slice of generation 3's layout was served to a requester assembling generation 4's")
	}
	if !h.serveView(stateReq{step: 5, w: pw, block: 1, gen: 3}) {
		t.Fatal("slice request of the view's generation not served")
	}
	got, err = io.ReadAll(pr)
	if err != nil || !bytes.Equal(got, control.Float32Bytes(v)) {
		t.Fatalf("own slice's second moment: %v, %v; want %v", got, err, control.Float32Bytes(v))
	}
	h.seal("test done")
}

// TestSealEndsReads: sealing the view (the loop is about to change the
// state) ends a read in progress with an error that says why, waits until
// its writer returned, and later requests go to the loop.
func TestSealEndsReads(t *testing.T) {
	h := newHub()
	var writing atomic.Bool
	started := make(chan struct{})
	h.publish(&stateView{step: 2, whole: func(ctx context.Context, w io.Writer) error {
		writing.Store(true)
		defer writing.Store(false)
		close(started)
		buf := make([]byte, 1<<10)
		for {
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
	}})
	rc, err := h.source(context.Background(), bulk.Request{Kind: bulk.KindState, Step: 2})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	if _, err := io.ReadFull(rc, make([]byte, 4<<10)); err != nil {
		t.Fatal(err)
	}
	h.seal("step 2 applied")
	if writing.Load() {
		t.Fatal("seal returned while the view's writer still ran")
	}
	_, err = io.ReadAll(rc)
	if err == nil || !strings.Contains(err.Error(), "state changed while it was being read (step 2 applied)") {
		t.Fatalf("reader after seal: %v, want the state-changed error", err)
	}
	_ = rc.Close()
	if h.published() {
		t.Fatal("view still published after seal")
	}
	pr, pw := io.Pipe()
	defer pr.Close()
	if h.serveView(stateReq{step: 2, w: pw, block: -1}) {
		t.Fatal("a sealed view served a request")
	}
}

// TestRequestTakesViewPublishedMeanwhile: a request for a step the node has
// not applied yet, arriving while the loop is busy (nothing reads
// hub.states), streams from the view as soon as the loop publishes that
// step, without waiting for the loop to come back.
func TestRequestTakesViewPublishedMeanwhile(t *testing.T) {
	h := newHub()
	viewOf(h, 5, [][]float32{{1}, {2}, {3}})
	type res struct {
		rc  io.ReadCloser
		err error
	}
	got := make(chan res, 1)
	go func() {
		rc, err := h.source(context.Background(), bulk.Request{Kind: bulk.KindState, Step: 6})
		got <- res{rc, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("request for step 6 answered before step 6 was published: %v", r.err)
	case <-time.After(100 * time.Millisecond):
	}
	h.seal("step 5 applied")
	viewOf(h, 6, [][]float32{{4}, {5}, {6}})
	var r res
	select {
	case r = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the request did not take the view published meanwhile")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	b, err := io.ReadAll(r.rc)
	_ = r.rc.Close()
	if err != nil || len(b) != control.StateHeaderLen+12 || !bytes.Equal(b[control.StateHeaderLen:control.StateHeaderLen+4], control.Float32Bytes([]float32{4})) {
		t.Fatalf("streamed %v (%v), want step 6's state", b, err)
	}
	h.seal("test done")
}

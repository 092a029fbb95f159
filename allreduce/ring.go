package allreduce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
)

// maxInFlight bounds operations started but not finished.
const maxInFlight = 4096

// zeroCopyMin is the smallest payload sent straight from the caller's buffer;
// gRPC reports the end of its use of a buffer only for pooled buffers, and it
// never pools buffers below 1 KiB, so smaller payloads are copied.
const zeroCopyMin = 4 << 10

// closeGrace bounds how long Close waits for the right neighbour to drain.
const closeGrace = 2 * time.Second

// ErrClosed is the cause of errors of operations cut short by Close.
var ErrClosed = errors.New("ring closed")

// Ring is one rank of the all-reduce ring of one generation. After any error
// (a dead peer, a timeout, a cancelled context, a protocol violation) the
// ring is broken for good: every pending and later operation fails with that
// error, and the caller forms a new generation.
type Ring struct {
	cfg               Config
	size, left, right int
	srv               *Server
	ownSrv            *grpc.Server
	conn              *grpc.ClientConn

	ctx    context.Context // cancelled when the ring fails or closes
	cancel context.CancelFunc
	dead   chan struct{}
	once   sync.Once
	err    error // set before dead is closed

	mu       sync.Mutex
	closed   bool
	nextSeq  uint64
	pending  map[uint64]*Op
	sendQ    chan *Op
	recvQ    chan *Op
	hasLeft  bool
	leftGone bool // the left neighbour closed its stream cleanly
	last     *Op  // most recently started operation

	closing   atomic.Bool
	connected atomic.Bool   // the stream to the right neighbour is open
	shmSend   atomic.Bool   // payloads to the right neighbour go through shared memory
	shmRecv   atomic.Bool   // payloads from the left neighbour come through shared memory
	graceDone chan struct{} // closed by sendLoop after a clean CloseSend
	leftEOF   chan struct{} // closed by recvLoop when the left neighbour half-closes

	wg sync.WaitGroup
}

// New validates cfg and builds the ring: it starts serving (unless it is
// attached to a Server) and connecting to the right neighbour in the
// background. A ring of one rank does no networking at all.
func New(cfg Config) (*Ring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	size := len(cfg.Peers)
	r := &Ring{
		cfg: cfg, size: size,
		left: mod(cfg.Rank-1, size), right: mod(cfg.Rank+1, size),
		dead:      make(chan struct{}),
		graceDone: make(chan struct{}),
		leftEOF:   make(chan struct{}),
		pending:   map[uint64]*Op{},
		sendQ:     make(chan *Op, maxInFlight),
		recvQ:     make(chan *Op, maxInFlight),
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	if size == 1 {
		if cfg.Listener != nil {
			cfg.Listener.Close()
		}
		return r, nil
	}
	if cfg.Server != nil {
		r.srv = cfg.Server
	} else {
		lis := cfg.Listener
		if lis == nil {
			var err error
			if lis, err = net.Listen("tcp", cfg.Peers[cfg.Rank]); err != nil {
				r.cancel()
				return nil, fmt.Errorf("allreduce: %s: listen on Peers[%d]: %w", r.who(), cfg.Rank, err)
			}
		}
		srv, err := NewServer(cfg.Key)
		if err != nil {
			lis.Close()
			r.cancel()
			return nil, err
		}
		r.srv = srv
		r.ownSrv = grpc.NewServer(ServerOptions(cfg.Key, cfg.ServerTLS)...)
		srv.Register(r.ownSrv)
		r.wg.Go(func() { r.ownSrv.Serve(lis) })
	}
	if err := r.srv.attach(r); err != nil {
		r.shutdown()
		return nil, err
	}
	conn, err := grpc.NewClient(cfg.Peers[r.right], dialOptions(cfg.Key, cfg.ClientTLS)...)
	if err != nil {
		r.shutdown()
		return nil, fmt.Errorf("allreduce: %s: client for right neighbour rank %d (%s): %w", r.who(), r.right, cfg.Peers[r.right], err)
	}
	r.conn = conn
	r.wg.Go(r.sendLoop)
	return r, nil
}

func (r *Ring) who() string {
	return fmt.Sprintf("generation %d rank %d/%d", r.cfg.Generation, r.cfg.Rank, r.size)
}

func (r *Ring) peer(rank int) string {
	return fmt.Sprintf("rank %d (%s)", rank, r.cfg.Peers[rank])
}

// Size is the number of ranks in the ring.
func (r *Ring) Size() int { return r.size }

// Rank is this ring member's rank.
func (r *Ring) Rank() int { return r.cfg.Rank }

// Generation is the ring's generation.
func (r *Ring) Generation() uint64 { return r.cfg.Generation }

// Err returns the error that broke the ring, or nil while it is healthy.
func (r *Ring) Err() error {
	select {
	case <-r.dead:
		return r.err
	default:
		return nil
	}
}

// fail breaks the ring with err (first error wins) and fails every pending
// operation with it.
func (r *Ring) fail(err error) {
	r.once.Do(func() {
		r.err = err
		close(r.dead)
		r.cancel()
		r.mu.Lock()
		ops := make([]*Op, 0, len(r.pending))
		for _, op := range r.pending {
			ops = append(ops, op)
		}
		r.mu.Unlock()
		for _, op := range ops {
			op.finish(err)
		}
	})
}

// Close breaks the ring (pending operations fail with ErrClosed), stops its
// server or detaches from the shared one, and waits for its goroutines. A
// healthy idle ring first drains: it waits up to 2 s for its right neighbour
// to read the rest of its stream and for its left neighbour to close too, so
// all ranks should close at about the same time (as separate nodes do).
func (r *Ring) Close() error {
	r.mu.Lock()
	// A healthy idle ring half-closes its stream and waits for the right
	// neighbour to read to the end: otherwise the tail of the last
	// operation, still in gRPC's write buffer, could be cut off. It also
	// waits for the left neighbour to do the same, so that closing this
	// rank cannot break a neighbour still finishing that operation.
	graceful := r.size > 1 && !r.closed && r.Err() == nil && len(r.pending) == 0 && r.connected.Load()
	hasLeft := r.hasLeft
	r.closed = true
	r.closing.Store(true)
	if graceful {
		r.sendQ <- nil
	}
	r.mu.Unlock()
	if graceful {
		// One deadline for both waits: a timer's channel fires only once, so
		// a second select on it after the first timed out would never end.
		ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
		select {
		case <-r.graceDone:
		case <-r.dead:
		case <-ctx.Done():
		}
		if hasLeft {
			select {
			case <-r.leftEOF:
			case <-r.dead:
			case <-ctx.Done():
			}
		}
		cancel()
	}
	r.fail(fmt.Errorf("allreduce: %s: %w", r.who(), ErrClosed))
	r.shutdown()
	return nil
}

func (r *Ring) shutdown() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	if r.srv != nil {
		r.srv.detach(r)
	}
	if r.ownSrv != nil {
		r.ownSrv.Stop()
	}
	if r.conn != nil {
		r.conn.Close()
	}
	r.wg.Wait()
}

// AllReduce sums buf element-wise over all ranks, in place; every rank ends
// with bit-identical contents. It is Start followed by Wait.
func (r *Ring) AllReduce(ctx context.Context, buf []float32) error {
	op, err := r.Start(ctx, buf)
	if err != nil {
		return err
	}
	return op.Wait()
}

// Kind selects which part of the ring schedule an operation runs.
type Kind uint8

const (
	// KindAllReduce sums the buffer over all ranks (Start).
	KindAllReduce Kind = iota
	// KindReduceScatter leaves rank r the sum over all ranks of its own
	// slice, Slice(len(buf), size, r); the rest of buf holds partial sums
	// and is garbage to the caller. It moves (size-1)/size of the buffer
	// per rank in the ring's wire format.
	KindReduceScatter
	// KindReduceScatterBuddy is KindReduceScatter plus one more hop: rank r
	// also ends with the sum of its left neighbour's slice,
	// Slice(len(buf), size, r-1), bit-identical to the neighbour's own
	// copy. It is what a rank that keeps a buddy copy of its left
	// neighbour's optimizer state needs; it costs 1/size more bytes.
	KindReduceScatterBuddy
	// KindAllGather sends each rank's own slice, Slice(len(buf), size, r),
	// to every other rank, always in float32 (whatever the ring's Wire), so
	// every rank ends with bit-identical buffers.
	KindAllGather
	// KindAllReduceFloat32 is KindAllReduce in float32 whatever the ring's
	// Wire: a sum where every element has one non-zero contributor is then
	// exact (moving state rather than gradients).
	KindAllReduceFloat32
)

func (k Kind) String() string {
	switch k {
	case KindAllReduce:
		return "all-reduce"
	case KindReduceScatter:
		return "reduce-scatter"
	case KindReduceScatterBuddy:
		return "reduce-scatter+buddy"
	case KindAllGather:
		return "all-gather"
	case KindAllReduceFloat32:
		return "all-reduce (float32)"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Slice is the element range [lo, hi) of a buffer of n elements that rank
// owns in a ring of size ranks under ReduceScatter and AllGather: the ranks
// split the buffer into size contiguous ranges in rank order, rank r getting
// [r·n/size, (r+1)·n/size), so sizes differ by at most one element.
func Slice(n, size, rank int) (lo, hi int) {
	return segment(n, size, mod(rank, size))
}

// ReduceScatter sums buf over all ranks and leaves this rank the sum of its
// own slice (see Slice and KindReduceScatter). It is StartKind followed by
// Wait.
func (r *Ring) ReduceScatter(ctx context.Context, buf []float32) error {
	op, err := r.StartKind(ctx, KindReduceScatter, buf)
	if err != nil {
		return err
	}
	return op.Wait()
}

// AllGather spreads every rank's own slice of buf (see Slice) to all ranks,
// in float32. It is StartKind followed by Wait.
func (r *Ring) AllGather(ctx context.Context, buf []float32) error {
	op, err := r.StartKind(ctx, KindAllGather, buf)
	if err != nil {
		return err
	}
	return op.Wait()
}

// Start begins an all-reduce of buf and returns at once. Operations run and
// finish in the order they were started, and every rank must start the same
// sequence of operations with equal lengths. buf must not be touched until
// the operation is done. Cancelling ctx, or passing its deadline or the
// ring's Timeout, breaks the ring.
func (r *Ring) Start(ctx context.Context, buf []float32) (*Op, error) {
	return r.StartKind(ctx, KindAllReduce, buf)
}

// StartKind begins an operation of kind k on buf and returns at once; see
// Start for the rules shared by all kinds. Every rank must start the same
// kinds in the same order: a rank that runs another kind than its left
// neighbour fails the ring with an error naming both.
func (r *Ring) StartKind(ctx context.Context, k Kind, buf []float32) (*Op, error) {
	return r.StartWindow(ctx, k, buf, 0, len(buf))
}

// StartWindow begins an operation of kind k on buf, which is the window
// [off, off+len(buf)) of a virtual block of total elements; see StartKind
// for the rules shared by all operations. The ring's segments are the
// whole block's, each cut to the window, so the ranks' slices stay those
// of the block: after a reduce-scatter of every window of a block, rank r
// holds the sum of Slice(total, size, r) (and with the buddy hop of
// Slice(total, size, r-1)) bit-identical to a reduce-scatter of the whole
// block; a window holds the parts of those slices that fall in it. This is
// how zero1 reduces its gradient in buckets as backward finishes them.
// Every rank must start the same windows (off, total and length) in the
// same order; a neighbour that disagrees fails the ring with an error
// saying so. StartWindow(ctx, k, buf, 0, len(buf)) is StartKind.
func (r *Ring) StartWindow(ctx context.Context, k Kind, buf []float32, off, total int) (*Op, error) {
	if k > KindAllReduceFloat32 {
		return nil, fmt.Errorf("allreduce: %s: unknown operation kind %d", r.who(), k)
	}
	if off < 0 || total < 0 || off > total || len(buf) > total-off {
		return nil, fmt.Errorf("allreduce: %s: window [%d, %d) does not fit a block of %d elements", r.who(), off, off+len(buf), total)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("allreduce: %s: start: %w", r.who(), err)
	}
	if total > 1<<40 {
		return nil, fmt.Errorf("allreduce: %s: block of %d elements is too large", r.who(), total)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.Err(); err != nil {
		return nil, err
	}
	if r.closed {
		return nil, fmt.Errorf("allreduce: %s: %w", r.who(), ErrClosed)
	}
	if r.leftGone {
		return nil, fmt.Errorf("allreduce: %s: left neighbour %s closed the ring; form a new generation", r.who(), r.peer(r.left))
	}
	op := &Op{r: r, seq: r.nextSeq, kind: k, wire: r.cfg.Wire, buf: buf, done: make(chan struct{}), progress: make(chan struct{})}
	if k == KindAllGather || k == KindAllReduceFloat32 {
		op.wire = Float32
	}
	r.nextSeq++
	if r.size == 1 {
		close(op.done)
		return op, nil
	}
	if len(r.pending) >= maxInFlight {
		return nil, fmt.Errorf("allreduce: %s: %d operations already in flight; Wait for some first", r.who(), maxInFlight)
	}
	op.plan = opPlan(k, len(buf), r.size, r.cfg.Rank, r.cfg.ChunkBytes/4, off, total)
	op.remaining.Store(int64(op.plan.totalRecv() + op.plan.totalSend() + 1))
	if len(buf) == 0 {
		op.remaining.Store(1)
	}
	deadline := time.Now().Add(r.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	op.limit = time.Until(deadline)
	op.timer = time.AfterFunc(op.limit, func() {
		select {
		case <-op.done:
		default:
			r.fail(op.stallErr())
		}
	})
	op.stopCtx = context.AfterFunc(ctx, func() {
		r.fail(fmt.Errorf("allreduce: %s: operation %d: caller's context ended: %w", r.who(), op.seq, context.Cause(ctx)))
	})
	r.pending[op.seq] = op
	prev := r.last
	r.last = op
	if op.plan.totalRecv() == 0 {
		// Nothing to receive (an empty buffer, or a reduce-scatter or
		// all-gather whose segments for this rank are all empty): the
		// receive loop never sees it, so its completion token is dropped
		// after its predecessor finishes, keeping completion in start order.
		r.wg.Go(func() {
			if prev != nil {
				<-prev.done
			}
			op.partDone()
		})
	} else {
		r.recvQ <- op
	}
	if op.plan.totalSend() > 0 {
		r.sendQ <- op
	}
	return op, nil
}

// opPlan is the schedule of one operation of kind k on the window
// [off, off+n) of a block of total elements (off 0 and total n: a whole
// buffer).
func opPlan(k Kind, n, size, rank, chunk, off, total int) plan {
	half := size - 1
	switch k {
	case KindReduceScatter:
		return newWindowPlan(n, size, rank, chunk, 0, half, -1, off, total)
	case KindReduceScatterBuddy:
		return newWindowPlan(n, size, rank, chunk, 0, half+1, -1, off, total)
	case KindAllGather:
		return newWindowPlan(n, size, rank, chunk, half, 2*half, -1, off, total)
	}
	return newWindowPlan(n, size, rank, chunk, 0, 2*half, 0, off, total)
}

// Op is one ring operation in flight.
type Op struct {
	r    *Ring
	seq  uint64
	kind Kind
	wire Wire // payload format of its messages: the ring's, or Float32 for an all-gather
	buf  []float32
	plan plan

	// remaining counts what is left: received chunks, sent chunks not yet
	// released by gRPC, and one token the receive loop drops after the
	// operation's last chunk (which keeps completion in start order).
	remaining atomic.Int64
	recvd     atomic.Int64 // chunks received and applied, in receive order
	sent      atomic.Int64 // chunks handed to gRPC
	progMu    sync.Mutex
	progress  chan struct{} // closed and replaced when recvd grows

	timer   *time.Timer
	stopCtx func() bool
	limit   time.Duration

	once sync.Once
	err  error
	done chan struct{}
}

// Seq is the operation's sequence number in its ring (0, 1, 2, ...).
func (o *Op) Seq() uint64 { return o.seq }

// Done is closed when the operation has finished.
func (o *Op) Done() <-chan struct{} { return o.done }

// Wait blocks until the operation finishes and returns its error.
func (o *Op) Wait() error {
	<-o.done
	return o.err
}

func (o *Op) finish(err error) {
	o.once.Do(func() {
		if o.timer != nil {
			o.timer.Stop()
		}
		if o.stopCtx != nil {
			o.stopCtx()
		}
		if err != nil {
			o.err = fmt.Errorf("allreduce: operation %d (%v of %d floats): %w", o.seq, o.kind, len(o.buf), err)
		}
		o.r.mu.Lock()
		delete(o.r.pending, o.seq)
		o.r.mu.Unlock()
		close(o.done)
	})
}

func (o *Op) partDone() {
	if o.remaining.Add(-1) == 0 {
		o.finish(nil)
	}
}

// stallErr describes where the operation stood when its deadline passed.
func (o *Op) stallErr() error {
	r, p := o.r, o.plan
	got := int(o.recvd.Load())
	where := "after its last chunk (waiting for gRPC to release sent data)"
	if got < p.totalRecv() {
		t := p.stepOf(got)
		ph, st := p.phaseStep(t)
		where = fmt.Sprintf("waiting for %v step %d chunk %d from left neighbour %s", ph, st, got-p.recvStart[t-p.t0], r.peer(r.left))
	}
	return fmt.Errorf("allreduce: %s: operation %d timed out after %v %s; %d of %d chunks received, %d of %d sent to right neighbour %s; a peer is dead or stalled, form a new generation",
		r.who(), o.seq, o.limit.Round(time.Millisecond), where, got, p.totalRecv(), o.sent.Load(), p.totalSend(), r.peer(r.right))
}

// waitRecv blocks until at least n chunks of o have been received.
func (o *Op) waitRecv(n int) error {
	for {
		o.progMu.Lock()
		ch := o.progress
		o.progMu.Unlock()
		if int(o.recvd.Load()) >= n {
			return nil
		}
		select {
		case <-ch:
		case <-o.r.dead:
			return o.r.err
		}
	}
}

func (o *Op) advance() {
	o.recvd.Add(1)
	o.progMu.Lock()
	close(o.progress)
	o.progress = make(chan struct{})
	o.progMu.Unlock()
}

// sentPool is handed to gRPC with zero-copy payloads: gRPC "returns" the
// bytes to it once they are written to the transport, which is exactly when
// the caller's buffer is no longer needed for that chunk.
type sentPool struct{ op *Op }

func (p sentPool) Get(int) *[]byte { return new([]byte) } // gRPC only Puts buffers it was given
func (p sentPool) Put(*[]byte)     { p.op.partDone() }

// sendLoop owns the stream to the right neighbour (and, with the TCP
// transport, the data connection to it).
func (r *Ring) sendLoop() {
	stream, err := r.conn.NewStream(r.ctx, &serviceDesc.Streams[0], streamMethod,
		grpc.WaitForReady(true), grpc.ForceCodecV2(rawCodec{}),
		// gRPC keeps sent messages for transparent retry until the stream
		// commits; a zero budget commits on the hello, so chunks are
		// released (and operations complete) as soon as they are written.
		grpc.MaxRetryRPCBufferSize(0))
	if err != nil {
		r.fail(fmt.Errorf("allreduce: %s: open stream to right neighbour %s: %w", r.who(), r.peer(r.right), err))
		return
	}
	tcp := r.cfg.Transport != GRPC // TCP or SHM: a data connection
	hello := header{Kind: kindHello, Wire: r.cfg.Wire, Gen: r.cfg.Generation, From: uint32(r.cfg.Rank), Step: uint32(r.size), Chunk: uint32(r.cfg.Transport)}
	hb := make([]byte, headerLen)
	hello.encode(hb)
	recvDone := make(chan struct{})
	offer := make(chan header, 1)
	r.wg.Go(func() {
		defer close(recvDone)
		if tcp {
			in := inMsg{expect: kindOffer}
			if err := stream.RecvMsg(&in); err != nil {
				r.fail(fmt.Errorf("allreduce: %s: right neighbour %s ended the ring stream before offering a data connection: %w", r.who(), r.peer(r.right), err))
				return
			}
			offer <- in.hdr
		}
		var in inMsg
		err := stream.RecvMsg(&in)
		if errors.Is(err, io.EOF) && r.closing.Load() {
			return // the right neighbour read our half-close: clean end
		}
		if err == nil {
			err = errors.New("unexpected message on the return path")
		}
		r.fail(fmt.Errorf("allreduce: %s: right neighbour %s ended the ring stream: %w", r.who(), r.peer(r.right), err))
	})
	err = stream.SendMsg(&outMsg{hdr: hb})
	var tx chunkSender = grpcSender{stream}
	var conn *net.TCPConn
	if err == nil && tcp {
		select {
		case h := <-offer:
			conn, err = r.dialData(h)
		case <-r.dead:
			return
		}
		if err != nil {
			r.fail(err)
			return
		}
		defer conn.Close()
		// A failed or closed ring must unblock a write in progress.
		stop := context.AfterFunc(r.ctx, func() { conn.Close() })
		defer stop()
		if tx, err = r.newDataSender(conn); err != nil {
			r.fail(err)
			return
		}
		defer tx.(dataSender).release()
	}
	r.connected.Store(err == nil)
	for err == nil {
		select {
		case op := <-r.sendQ:
			if op == nil { // Close: half-close and let the neighbour drain
				if conn != nil {
					err = tx.(dataSender).closeWrite()
				}
				if err == nil {
					err = stream.CloseSend()
				}
				if err == nil {
					select {
					case <-recvDone:
					case <-r.dead:
					}
				}
				close(r.graceDone)
				return
			}
			err = r.sendOp(tx, op)
		case <-r.dead:
			return
		}
	}
	if errors.Is(err, io.EOF) {
		<-recvDone // the receive side holds the real status
		return
	}
	if conn != nil {
		// The right neighbour's gRPC status usually says why it hung up
		// on the data connection; prefer it to "connection reset".
		t := time.NewTimer(statusWait)
		select {
		case <-r.dead:
		case <-t.C:
		}
		t.Stop()
	}
	r.fail(fmt.Errorf("allreduce: %s: sending to right neighbour %s: %w", r.who(), r.peer(r.right), err))
}

// chunkSender writes one chunk of op, the elements [a, b) of its buffer,
// under header h, and calls op.partDone once the caller's buffer is no
// longer needed for it.
type chunkSender interface {
	send(op *Op, h *header, a, b int) error
}

// grpcSender sends chunks as messages of the ring stream.
type grpcSender struct{ stream grpc.ClientStream }

func (g grpcSender) send(op *Op, h *header, a, b int) error {
	m := outMsg{hdr: make([]byte, headerLen)}
	h.encode(m.hdr)
	copied := true
	switch {
	case h.Wire == BFloat16:
		pool := mem.DefaultBufferPool()
		buf := pool.Get(2 * (b - a))
		encodeBF16(*buf, op.buf[a:b])
		m.payload = mem.NewBuffer(buf, pool)
	case 4*(b-a) >= zeroCopyMin:
		view := f32bytes(op.buf[a:b])
		m.payload = mem.NewBuffer(&view, sentPool{op})
		copied = false
	default:
		m.payload = mem.SliceBuffer(append([]byte(nil), f32bytes(op.buf[a:b])...))
	}
	if err := g.stream.SendMsg(&m); err != nil {
		return err
	}
	if copied {
		op.partDone()
	}
	return nil
}

func (r *Ring) sendOp(tx chunkSender, op *Op) error {
	p := op.plan
	for t := p.t0; t < p.t1; t++ {
		lo, hi := p.sendSeg(t)
		ph, st := p.phaseStep(t)
		for c := range numChunks(hi-lo, p.chunk) {
			if t > p.t0 {
				// The chunk we forward at step t is the one received at t-1.
				if err := op.waitRecv(p.recvStart[t-1-p.t0] + c + 1); err != nil {
					return err
				}
			}
			a, b := p.chunkRange(lo, hi, c)
			h := header{Kind: kindData, Wire: op.wire, Phase: ph, Gen: r.cfg.Generation, Seq: op.seq,
				From: uint32(r.cfg.Rank), Step: uint32(st), Chunk: uint32(c), Count: uint32(b - a), Window: p.tag()}
			op.sent.Add(1)
			if err := tx.send(op, &h, a, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// serveLeft runs the receiving half of the ring on the stream from the left
// neighbour, inside that stream's gRPC handler.
func (r *Ring) serveLeft(ss grpc.ServerStream, hello header) error {
	switch {
	case int(hello.From) != r.left:
		return status.Errorf(codes.FailedPrecondition, "allreduce: %s: stream from rank %d rejected: left neighbour is %s", r.who(), hello.From, r.peer(r.left))
	case int(hello.Step) != r.size:
		return status.Errorf(codes.FailedPrecondition, "allreduce: %s: rank %d thinks the ring has %d ranks, this ring has %d", r.who(), hello.From, hello.Step, r.size)
	case hello.Wire != r.cfg.Wire:
		return status.Errorf(codes.FailedPrecondition, "allreduce: %s: rank %d sends %v, this ring uses %v", r.who(), hello.From, hello.Wire, r.cfg.Wire)
	case Transport(hello.Chunk) != r.cfg.Transport:
		return status.Errorf(codes.FailedPrecondition, "allreduce: %s: rank %d uses the %v transport, this ring uses %v; configure every rank alike", r.who(), hello.From, Transport(hello.Chunk), r.cfg.Transport)
	}
	r.mu.Lock()
	if r.closed || r.hasLeft {
		r.mu.Unlock()
		return status.Errorf(codes.FailedPrecondition, "allreduce: %s: stream from %s rejected: ring closed or already connected", r.who(), r.peer(r.left))
	}
	r.hasLeft = true
	errc := make(chan error, 1)
	ctlErr := make(chan error, 1)
	if r.cfg.Transport != GRPC {
		r.wg.Go(func() { errc <- r.serveLeftTCP(ss) })
		// The left neighbour sends nothing more on the stream; a break of
		// it (its process died) fails the ring even before TCP notices.
		// A half-close is its clean Close and is ignored.
		r.wg.Go(func() {
			var in inMsg
			err := ss.RecvMsg(&in)
			if err == nil {
				err = errors.New("unexpected message on the control stream")
			}
			if !errors.Is(err, io.EOF) {
				ctlErr <- fmt.Errorf("allreduce: %s: control stream from left neighbour %s broke: %w", r.who(), r.peer(r.left), err)
			}
		})
	} else {
		r.wg.Go(func() { errc <- r.recvLoop(ss) })
	}
	r.mu.Unlock()
	select {
	case err := <-errc:
		if err == nil {
			return nil // clean half-close by the left neighbour
		}
		r.fail(err)
	case err := <-ctlErr:
		r.fail(err)
	case <-r.dead:
	}
	// Returning ends the stream; the left neighbour sees why.
	return status.Error(codes.Aborted, r.Err().Error())
}

// serveLeftTCP offers a data listener to the left neighbour, accepts its
// authenticated connection and reads it.
func (r *Ring) serveLeftTCP(ss grpc.ServerStream) error {
	lis, err := net.Listen("tcp", net.JoinHostPort(dataHost(r.cfg.Peers[r.cfg.Rank]), "0"))
	if err != nil {
		return fmt.Errorf("allreduce: %s: listen for the data connection of left neighbour %s: %w", r.who(), r.peer(r.left), err)
	}
	offer := header{Kind: kindOffer, Wire: r.cfg.Wire, Gen: r.cfg.Generation, From: uint32(r.cfg.Rank), Step: uint32(r.size),
		Chunk: uint32(lis.Addr().(*net.TCPAddr).Port)}
	m := outMsg{hdr: make([]byte, headerLen)}
	offer.encode(m.hdr)
	if err := ss.SendMsg(&m); err != nil {
		lis.Close()
		return fmt.Errorf("allreduce: %s: offering a data connection to left neighbour %s: %w", r.who(), r.peer(r.left), err)
	}
	conn, err := r.acceptData(lis)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(r.ctx, func() { conn.Close() })
	defer stop()
	return r.recvData(conn)
}

// recvCursor walks the receive schedule of the operations in start order:
// which message comes next, and where its payload goes.
type recvCursor struct {
	r    *Ring
	cur  *Op
	i, t int    // chunk index of cur in receive order, and its step
	want header // the message expected next
}

// next waits until the operation the next message belongs to has been
// started, sets want and returns the destination of its payload.
func (c *recvCursor) next() ([]float32, error) {
	r := c.r
	if c.cur == nil {
		select {
		case c.cur = <-r.recvQ:
			c.i, c.t = 0, c.cur.plan.t0
		case <-r.dead:
			return nil, r.err
		}
	}
	p := c.cur.plan
	for p.recvStart[c.t-p.t0+1] <= c.i {
		c.t++
	}
	ch := c.i - p.recvStart[c.t-p.t0]
	lo, hi := p.recvSeg(c.t)
	a, b := p.chunkRange(lo, hi, ch)
	ph, st := p.phaseStep(c.t)
	c.want = header{Kind: kindData, Wire: c.cur.wire, Phase: ph, Gen: r.cfg.Generation, Seq: c.cur.seq,
		From: uint32(r.left), Step: uint32(st), Chunk: uint32(ch), Count: uint32(b - a), Window: p.tag()}
	return c.cur.buf[a:b], nil
}

// readHeader reads the next data message's header from conn (the TCP and
// shared-memory transports, whose payload follows or sits in a slot) and
// checks it against the message expected next; dst is where its payload
// goes. When stop is set the receive loop ends with err, which is nil for
// a clean end of the stream between operations (see end).
func (c *recvCursor) readHeader(conn io.Reader, hb *[headerLen]byte) (h header, dst []float32, stop bool, err error) {
	if _, err := io.ReadFull(conn, hb[:]); err != nil {
		return h, nil, true, c.end(err)
	}
	if h, err = decodeHeader(hb[:]); err != nil {
		return h, nil, true, c.end(err)
	}
	if dst, err = c.next(); err != nil {
		return h, nil, true, err
	}
	if err := checkData(h, c.want); err != nil {
		return h, nil, true, c.end(err)
	}
	return h, dst, false, nil
}

// applied records that the expected message's payload is in dst.
func (c *recvCursor) applied(dst []float32) {
	r := c.r
	if c.want.Wire == BFloat16 && c.want.Phase == ReduceScatter && int(c.want.Step) == r.size-2 {
		// This rank owns the segment now; make its copy equal to what
		// the others will decode from bfloat16.
		roundBF16(dst)
	}
	c.cur.advance()
	c.cur.partDone()
	if c.i++; c.i == c.cur.plan.totalRecv() {
		c.cur.partDone() // in-order completion token
		c.cur = nil
	}
}

// end turns a receive error into the loop's result: a clean end of the
// stream between operations is nil (the left neighbour closed), anything
// else an error naming where it happened.
func (c *recvCursor) end(err error) error {
	r := c.r
	if errors.Is(err, io.EOF) {
		r.mu.Lock()
		r.leftGone = true
		busy := c.cur != nil || len(r.recvQ) > 0
		r.mu.Unlock()
		if !busy {
			close(r.leftEOF)
			return nil
		}
	}
	if c.cur == nil {
		return fmt.Errorf("allreduce: %s: receiving from left neighbour %s: %w", r.who(), r.peer(r.left), err)
	}
	return fmt.Errorf("allreduce: %s: operation %d: receiving %v step %d chunk %d from left neighbour %s: %w",
		r.who(), c.cur.seq, c.want.Phase, c.want.Step, c.want.Chunk, r.peer(r.left), err)
}

// recvLoop reads the left neighbour's stream for the ring's lifetime. It is
// always inside RecvMsg, so a clean half-close is seen even when idle; the
// operation a message belongs to is looked up once its header has arrived.
func (r *Ring) recvLoop(ss grpc.ServerStream) error {
	cr := recvCursor{r: r}
	var sk sink
	in := inMsg{want: &cr.want, sink: &sk}
	in.resolve = func() error {
		dst, err := cr.next()
		if err != nil {
			return err
		}
		sk = sink{dst: dst, wire: cr.want.Wire, add: cr.want.Phase == ReduceScatter}
		return nil
	}
	for {
		if err := ss.RecvMsg(&in); err != nil {
			return cr.end(err)
		}
		cr.applied(sk.dst)
	}
}

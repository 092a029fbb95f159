// Package bucket overlaps the gradient all-reduce with backward. The flat
// gradient is cut into buckets, contiguous ranges of whole parameters of
// about a configured size (allreduce.bucket_bytes; PyTorch DDP's default is
// 25 MiB), and each bucket's all-reduce starts as soon as backward has
// finished every parameter in it, while backward goes on with the layers
// below. Only the buckets that become ready last — the embeddings, which
// backward reaches at the very end — are left to reduce after backward.
//
// Every rank must start the same operations in the same order (the ring
// matches them by sequence), so the start order is fixed by the Plan, not by
// when hooks fire: a bucket starts once it and every bucket before it in the
// plan are ready. Hooks that fire out of the expected order only delay a
// start; they never reorder one.
//
// The same buckets reduced after backward (overlap off) give bit-identical
// sums: a ring's sum of an element depends only on the bucket's length and
// the element's position in it, not on when the operation started.
//
// Package bucket is pure Go; the hooks that report ready parameters live in
// model/torch (GradWatch).
package bucket

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ringtune/ringtune/allreduce"
)

// DefaultBytes is the default bucket size, PyTorch DDP's bucket_cap_mb.
const DefaultBytes = 25 << 20

// Segment is one parameter's range of the flat gradient, in float32
// elements.
type Segment struct {
	Off, Len int
	// Order is when backward is expected to finish the segment, relative
	// to the others (lower is earlier). Buckets are started in the order
	// of their latest segment.
	Order int
	// Group keeps segments apart: segments of different groups never share
	// a bucket. Give the parameters backward finishes last (the
	// embeddings) a group of their own, so that no bucket holding them
	// also holds a block's parameters that could have been reduced
	// earlier.
	Group int
	// Skip leaves the segment out of every bucket: its gradient is zero
	// on every rank, because the step reduces it some other way (an
	// untied input embedding whose lookups read a copy of their rows; see
	// model/hf's rows.go), so reducing it would sum zeros. Its Ready calls
	// are ignored. With one bucket of the whole gradient (bucketBytes 0)
	// it stays in that bucket.
	Skip bool
}

// Bucket is a contiguous range [Lo, Hi) of the flat gradient, reduced by
// one all-reduce operation.
type Bucket struct {
	Lo, Hi int
	// Segs are the indices (into the Plan's segments) of its parameters.
	Segs []int
	// Order is the latest Order of its segments.
	Order int
}

// Plan is the fixed cut of a gradient into buckets and their start order,
// the same on every rank.
type Plan struct {
	N       int      // elements of the flat gradient
	Buckets []Bucket // in start order
	// seg maps a segment index to its bucket's index in Buckets.
	seg []int
}

// NewPlan cuts a flat gradient of n elements, described by segs (which must
// tile [0, n) exactly), into buckets of at most bucketBytes bytes of
// float32 (a single segment larger than that is a bucket of its own). A
// bucket is a run of segments of one Group, consecutive in segs and
// adjacent in memory,
// so list segs in the order backward finishes them (the layers from the top
// down, each group of the flat block from its end back) and the buckets
// are contiguous and become ready one after another. bucketBytes 0 makes
// one bucket of the whole gradient: one all-reduce after backward, as
// without buckets.
func NewPlan(n int, segs []Segment, bucketBytes int) (*Plan, error) {
	if bucketBytes < 0 {
		return nil, fmt.Errorf("bucket: size %d bytes is negative", bucketBytes)
	}
	if err := checkTiling(n, segs); err != nil {
		return nil, err
	}
	p := &Plan{N: n, seg: make([]int, len(segs))}
	if bucketBytes == 0 || len(segs) == 0 {
		b := Bucket{Lo: 0, Hi: n}
		for i, s := range segs {
			b.Segs = append(b.Segs, i)
			b.Order = max(b.Order, s.Order)
		}
		p.Buckets = []Bucket{b}
		return p, nil
	}
	limit := bucketBytes / 4
	var cur *Bucket
	group := 0
	for i, s := range segs {
		if s.Skip {
			p.seg[i] = -1
			continue
		}
		if cur != nil && s.Group == group && cur.Hi-cur.Lo+s.Len <= limit && (s.Off+s.Len == cur.Lo || s.Off == cur.Hi) {
			cur.Lo, cur.Hi = min(cur.Lo, s.Off), max(cur.Hi, s.Off+s.Len)
			cur.Segs = append(cur.Segs, i)
			cur.Order = max(cur.Order, s.Order)
			continue
		}
		p.Buckets = append(p.Buckets, Bucket{Lo: s.Off, Hi: s.Off + s.Len, Segs: []int{i}, Order: s.Order})
		cur, group = &p.Buckets[len(p.Buckets)-1], s.Group
	}
	slices.SortStableFunc(p.Buckets, func(a, b Bucket) int { return cmp.Compare(a.Order, b.Order) })
	for k, b := range p.Buckets {
		for _, i := range b.Segs {
			p.seg[i] = k
		}
	}
	return p, nil
}

// Segments is the number of segments the plan was made from (the valid
// arguments of Reduce.Ready are 0 to Segments()-1).
func (p *Plan) Segments() int { return len(p.seg) }

// checkTiling reports segments that overlap, leave holes or leave [0, n).
func checkTiling(n int, segs []Segment) error {
	idx := make([]int, len(segs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(segs[a].Off, segs[b].Off) })
	at := 0
	for _, i := range idx {
		s := segs[i]
		if s.Len < 0 || s.Off != at {
			return fmt.Errorf("bucket: segment %d [%d, %d) does not continue the gradient at element %d; segments must tile [0, %d) exactly", i, s.Off, s.Off+s.Len, at, n)
		}
		at += s.Len
	}
	if at != n {
		return fmt.Errorf("bucket: segments cover [0, %d), the gradient has %d elements", at, n)
	}
	return nil
}

// Starter starts one all-reduce operation; *allreduce.Ring implements it.
type Starter interface {
	Start(ctx context.Context, buf []float32) (*allreduce.Op, error)
}

// WindowStarter starts operations on windows of a block as well;
// *allreduce.Ring implements it.
type WindowStarter interface {
	Starter
	StartWindow(ctx context.Context, k allreduce.Kind, buf []float32, off, total int) (*allreduce.Op, error)
}

// Stats are where one step's communication went.
type Stats struct {
	Buckets int
	// Comm is the ring's busy time: the union of the operations' lives
	// (start to done).
	Comm time.Duration
	// Overlapped is the part of Comm before backward ended (hidden behind
	// compute); Exposed is the wall time from the end of backward to the
	// last operation done (what the step waits for).
	Overlapped, Exposed time.Duration
}

// Reduce is one step's bucketed all-reduce in flight.
type Reduce struct {
	plan    *Plan
	ring    Starter
	ctx     context.Context
	buf     []float32
	overlap bool
	// start starts the operation of bucket [lo, hi) of buf.
	start func(lo, hi int) (*allreduce.Op, error)

	mu        sync.Mutex
	appended  bool  // Append was called
	left      []int // per bucket: segments not yet ready
	next      int   // the next bucket to start
	starts    []time.Time
	err       error
	backEnd   time.Time
	ops       chan *allreduce.Op // started, for the goroutine that times them
	closed    bool
	dones     []time.Time // written by the timing goroutine
	opErr     error       // first operation error, written by the timing goroutine
	timerDone chan struct{}
}

// Begin starts reducing buf (len Plan.N) on ring. With overlap, each bucket
// starts as soon as it and the buckets before it are Ready; without, every
// bucket starts at BackwardDone, in the same order.
func (p *Plan) Begin(ctx context.Context, ring Starter, buf []float32, overlap bool) (*Reduce, error) {
	if len(buf) != p.N {
		return nil, fmt.Errorf("bucket: gradient has %d elements, the plan %d", len(buf), p.N)
	}
	return p.begin(ctx, ring, buf, overlap, func(lo, hi int) (*allreduce.Op, error) {
		return ring.Start(ctx, buf[lo:hi])
	}), nil
}

// BeginWindows is Begin for operations of kind k on windows of the whole
// buffer: each bucket [Lo, Hi) runs on buf[Lo:Hi] as the window at Lo of a
// block of Plan.N elements (allreduce.Ring.StartWindow), so the ranks'
// slices are those of the whole buffer. A reduce-scatter (with the buddy
// hop) bucket by bucket then leaves each rank bit-identical sums of its
// slices to one reduce-scatter of the whole gradient (zero1), and it can
// overlap with backward like the all-reduce. Append still all-reduces.
func (p *Plan) BeginWindows(ctx context.Context, ring WindowStarter, k allreduce.Kind, buf []float32, overlap bool) (*Reduce, error) {
	if len(buf) != p.N {
		return nil, fmt.Errorf("bucket: gradient has %d elements, the plan %d", len(buf), p.N)
	}
	return p.begin(ctx, ring, buf, overlap, func(lo, hi int) (*allreduce.Op, error) {
		return ring.StartWindow(ctx, k, buf[lo:hi], lo, len(buf))
	}), nil
}

func (p *Plan) begin(ctx context.Context, ring Starter, buf []float32, overlap bool, start func(lo, hi int) (*allreduce.Op, error)) *Reduce {
	r := &Reduce{plan: p, ring: ring, ctx: ctx, buf: buf, overlap: overlap, start: start,
		left: make([]int, len(p.Buckets)), ops: make(chan *allreduce.Op, len(p.Buckets)+1),
		timerDone: make(chan struct{})}
	for k, b := range p.Buckets {
		r.left[k] = len(b.Segs)
	}
	go r.time()
	if overlap {
		r.mu.Lock()
		r.advance()
		r.mu.Unlock()
	}
	return r
}

// time records when each started operation is done (they finish in start
// order), until the ops channel is closed and drained.
func (r *Reduce) time() {
	defer close(r.timerDone)
	for op := range r.ops {
		err := op.Wait()
		now := time.Now()
		r.mu.Lock()
		r.dones = append(r.dones, now)
		if err != nil && r.opErr == nil {
			r.opErr = err
		}
		r.mu.Unlock()
	}
}

// Ready reports that segment i's gradient is final in buf. It is safe to
// call from any goroutine (a backward hook); a segment reported twice, or
// one out of range, is ignored.
func (r *Reduce) Ready(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if i < 0 || i >= len(r.plan.seg) {
		return
	}
	k := r.plan.seg[i]
	if k < 0 || r.left[k] == 0 {
		return
	}
	r.left[k]--
	if r.overlap {
		r.advance()
	}
}

// advance starts the buckets at the head of the plan that are ready.
// Called with mu held.
func (r *Reduce) advance() {
	for r.err == nil && !r.closed && r.next < len(r.plan.Buckets) && r.left[r.next] == 0 {
		r.startNext()
	}
}

func (r *Reduce) startNext() {
	b := r.plan.Buckets[r.next]
	op, err := r.start(b.Lo, b.Hi)
	if err != nil {
		r.err = fmt.Errorf("bucket %d of %d [%d, %d): %w", r.next, len(r.plan.Buckets), b.Lo, b.Hi, err)
		return
	}
	r.starts = append(r.starts, time.Now())
	r.ops <- op
	r.next++
}

// BackwardDone marks the end of backward. Every segment must have been
// reported Ready by now (model/torch.GradWatch.Finish reports those backward
// did not touch); without overlap it starts all buckets.
func (r *Reduce) BackwardDone() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backEnd = time.Now()
	for k, n := range r.left {
		if n != 0 && r.err == nil {
			r.err = fmt.Errorf("bucket: backward ended with %d parameters of bucket %d not reported ready", n, k)
		}
	}
	if !r.overlap {
		for r.err == nil && !r.closed && r.next < len(r.plan.Buckets) {
			r.startNext()
		}
	}
	return r.err
}

// Append starts one more operation, on buf, after every bucket of the plan
// has started (call it after BackwardDone): a part of the gradient that is
// reduced apart from the plan's block and is final only when backward
// ends (the rows of a split embedding the step's lookups used; see
// model/hf's rows.go). It is timed, waited for and failed with the
// buckets. At most one per step (the timing goroutine's queue has room for
// exactly one more, so that starting never blocks while holding the lock).
func (r *Reduce) Append(buf []float32) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.err != nil:
		return r.err
	case r.closed:
		return errors.New("bucket: append after Wait or Abandon")
	case r.appended:
		r.err = errors.New("bucket: a second appended operation in one step")
		return r.err
	case r.next < len(r.plan.Buckets):
		r.err = fmt.Errorf("bucket: append with %d of %d buckets not started (call BackwardDone first)", len(r.plan.Buckets)-r.next, len(r.plan.Buckets))
		return r.err
	}
	r.appended = true
	op, err := r.ring.Start(r.ctx, buf)
	if err != nil {
		r.err = fmt.Errorf("bucket: appended operation of %d elements: %w", len(buf), err)
		return r.err
	}
	r.starts = append(r.starts, time.Now())
	r.ops <- op
	return nil
}

// Wait waits for every started operation and returns the step's first
// error: a failed start, a failed operation (a dead peer, a deadline, a
// cancelled context), or buckets never started. It must be called once,
// also after a failure, to end the timing goroutine; operations still in
// flight on a failed ring end when the ring does.
func (r *Reduce) Wait() (Stats, error) {
	r.mu.Lock()
	if r.backEnd.IsZero() {
		r.backEnd = time.Now()
	}
	if r.err == nil && r.next < len(r.plan.Buckets) {
		r.err = fmt.Errorf("bucket: %d of %d buckets never started", len(r.plan.Buckets)-r.next, len(r.plan.Buckets))
	}
	if !r.closed {
		r.closed = true
		close(r.ops)
	}
	r.mu.Unlock()
	<-r.timerDone
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stats()
	err := r.err
	if err == nil {
		err = r.opErr
	}
	return st, err
}

// Abandon ends the timing goroutine without waiting for the operations (a
// step that failed before backward ended); the caller closes the ring.
func (r *Reduce) Abandon() {
	r.mu.Lock()
	if r.err == nil {
		r.err = errors.New("bucket: step abandoned")
	}
	if !r.closed {
		r.closed = true
		close(r.ops)
	}
	r.mu.Unlock()
}

// stats folds the operations' lives into Stats. Called with mu held, after
// the timing goroutine ended.
func (r *Reduce) stats() Stats {
	st := Stats{Buckets: len(r.plan.Buckets)}
	if r.appended {
		st.Buckets++
	}
	var busyEnd time.Time
	last := r.backEnd
	for k := range min(len(r.starts), len(r.dones)) {
		s, d := r.starts[k], r.dones[k]
		if s.Before(busyEnd) {
			s = busyEnd // operations run one after another: count the overlap once
		}
		if d.After(s) {
			st.Comm += d.Sub(s)
			if s.Before(r.backEnd) {
				st.Overlapped += minTime(d, r.backEnd).Sub(s)
			}
		}
		busyEnd = maxTime(busyEnd, d)
		last = maxTime(last, d)
	}
	st.Exposed = last.Sub(r.backEnd)
	return st
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

package bucket

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringtune/ringtune/allreduce"
	"github.com/ringtune/ringtune/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// layout is a model-like gradient: a "decay" group of big matrices then a
// "no decay" group of small vectors, each parameter declared in forward
// order; the segments list each group from its end back (backward order).
func layout(rng *rand.Rand, nParams int) (int, []Segment) {
	type p struct{ size, decl int }
	var big, small []p
	for d := range nParams {
		if d%3 == 2 {
			small = append(small, p{1 + rng.IntN(50), d})
		} else {
			big = append(big, p{100 + rng.IntN(3000), d})
		}
	}
	var segs []Segment
	off := 0
	var decay, rest []Segment
	for _, x := range big {
		g := 0
		if x.decl < 2 {
			g = 1 // "embeddings"
		}
		decay = append(decay, Segment{Off: off, Len: x.size, Order: nParams - x.decl, Group: g})
		off += x.size
	}
	for _, x := range small {
		rest = append(rest, Segment{Off: off, Len: x.size, Order: nParams - x.decl})
		off += x.size
	}
	slices.Reverse(decay)
	slices.Reverse(rest)
	segs = append(append(segs, decay...), rest...)
	return off, segs
}

func TestPlan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	n, segs := layout(rng, 40)
	for _, bb := range []int{0, 4, 4 << 10, 16 << 10, 1 << 30} {
		p, err := NewPlan(n, segs, bb)
		if err != nil {
			t.Fatal(err)
		}
		covered := make([]int, n)
		prevOrder := -1
		for k, b := range p.Buckets {
			if b.Order < prevOrder {
				t.Errorf("bytes %d: bucket %d has order %d after %d", bb, k, b.Order, prevOrder)
			}
			prevOrder = b.Order
			sum := 0
			for _, i := range b.Segs {
				s := segs[i]
				if bb > 0 && s.Group != segs[b.Segs[0]].Group {
					t.Errorf("bytes %d: bucket %d mixes groups", bb, k)
				}
				if s.Off < b.Lo || s.Off+s.Len > b.Hi {
					t.Errorf("bytes %d: segment %d outside its bucket", bb, i)
				}
				if p.seg[i] != k {
					t.Errorf("bytes %d: segment %d maps to bucket %d, is in %d", bb, i, p.seg[i], k)
				}
				sum += s.Len
			}
			if sum != b.Hi-b.Lo {
				t.Errorf("bytes %d: bucket %d [%d,%d) has %d elements of segments", bb, k, b.Lo, b.Hi, sum)
			}
			if bb > 0 && len(b.Segs) > 1 && 4*(b.Hi-b.Lo) > bb {
				t.Errorf("bytes %d: bucket %d of %d bytes with %d segments", bb, k, 4*(b.Hi-b.Lo), len(b.Segs))
			}
			for j := b.Lo; j < b.Hi; j++ {
				covered[j]++
			}
		}
		for j, c := range covered {
			if c != 1 {
				t.Fatalf("bytes %d: element %d in %d buckets", bb, j, c)
			}
		}
		switch bb {
		case 0, 1 << 30:
			if len(p.Buckets) != map[int]int{0: 1, 1 << 30: 3}[bb] {
				t.Errorf("bytes %d: %d buckets", bb, len(p.Buckets))
			}
		case 4:
			if len(p.Buckets) != len(segs) {
				t.Errorf("bytes 4: %d buckets for %d segments", len(p.Buckets), len(segs))
			}
		}
		// The first bucket holds the last-declared (head) parameter.
		if bb > 0 && bb < 1<<30 && !slices.Contains(p.Buckets[0].Segs, 0) {
			t.Errorf("bytes %d: the first bucket does not hold the head", bb)
		}
	}
	bad := []struct {
		name string
		n    int
		segs []Segment
		want string
	}{
		{"hole", 10, []Segment{{Off: 0, Len: 4}, {Off: 5, Len: 5}}, "does not continue"},
		{"overlap", 10, []Segment{{Off: 0, Len: 6}, {Off: 5, Len: 5}}, "does not continue"},
		{"short", 10, []Segment{{Off: 0, Len: 6}}, "cover [0, 6)"},
	}
	for _, c := range bad {
		if _, err := NewPlan(c.n, c.segs, 1<<20); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := NewPlan(0, nil, -1); err == nil {
		t.Errorf("negative size accepted")
	}
}

var testKey = func() auth.Key {
	k, err := auth.GenerateKey()
	if err != nil {
		panic(err)
	}
	return k
}()

func newRings(t *testing.T, tr allreduce.Transport, n int) []*allreduce.Ring {
	t.Helper()
	return newRingsWire(t, tr, allreduce.Float32, n)
}

func newRingsWire(t *testing.T, tr allreduce.Transport, wire allreduce.Wire, n int) []*allreduce.Ring {
	t.Helper()
	ls := make([]net.Listener, n)
	addrs := make([]string, n)
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls[i], addrs[i] = l, l.Addr().String()
	}
	rings := make([]*allreduce.Ring, n)
	for i := range rings {
		r, err := allreduce.New(allreduce.Config{Generation: 1, Rank: i, Peers: addrs, Listener: ls[i], Key: testKey,
			Timeout: 60 * time.Second, Transport: tr, ChunkBytes: 16 << 10, Wire: wire})
		if err != nil {
			t.Fatal(err)
		}
		rings[i] = r
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, r := range rings {
			wg.Go(func() { _ = r.Close() })
		}
		wg.Wait()
	})
	return rings
}

// backward reports the segments of one rank in the given order from
// another goroutine, as hooks on a torch thread do, with a pause now and
// then so that reductions run while "backward" goes on.
func backward(red *Reduce, order []int, rng *rand.Rand) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for k, i := range order {
			if k%7 == 0 {
				time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			}
			red.Ready(i)
		}
	})
	wg.Wait()
}

// reduceStep runs one step on every rank and returns the buffers.
func reduceStep(t *testing.T, rings []*allreduce.Ring, plan *Plan, segs []Segment, grads [][]float32, overlap bool, shuffle bool) ([][]float32, []Stats) {
	t.Helper()
	return reduceStepKind(t, rings, plan, segs, grads, overlap, shuffle, nil)
}

// reduceStepKind is reduceStep with the buckets run as windows of kind
// *kind (BeginWindows), or all-reduced when kind is nil.
func reduceStepKind(t *testing.T, rings []*allreduce.Ring, plan *Plan, segs []Segment, grads [][]float32, overlap, shuffle bool, kind *allreduce.Kind) ([][]float32, []Stats) {
	t.Helper()
	n := len(rings)
	out := make([][]float32, n)
	stats := make([]Stats, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for r := range n {
		out[r] = slices.Clone(grads[r])
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 9))
			var red *Reduce
			var err error
			if kind != nil {
				red, err = plan.BeginWindows(context.Background(), rings[r], *kind, out[r], overlap)
			} else {
				red, err = plan.Begin(context.Background(), rings[r], out[r], overlap)
			}
			if err != nil {
				errs[r] = err
				return
			}
			order := make([]int, len(segs))
			for i := range order {
				order[i] = i
			}
			if shuffle {
				// Each rank's hooks fire in its own order: the starts
				// must still be the plan's.
				rng.Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })
			}
			backward(red, order, rng)
			if err := red.BackwardDone(); err != nil {
				errs[r] = err
			}
			st, err := red.Wait()
			stats[r] = st
			if errs[r] == nil {
				errs[r] = err
			}
		})
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil {
			t.Fatalf("rank %d: %v", r, err)
		}
	}
	return out, stats
}

// TestOverlapEqualsAfterBackward: reducing each bucket as backward reports
// it gives bit-identical sums to reducing the same buckets after backward,
// on both transports, whatever order each rank's hooks fire in; and the
// sums are the sums.
func TestOverlapEqualsAfterBackward(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		for _, n := range []int{2, 3} {
			t.Run(tr.String()+"/"+string(rune('0'+n)), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(n), 2))
				total, segs := layout(rng, 60)
				plan, err := NewPlan(total, segs, 32<<10)
				if err != nil {
					t.Fatal(err)
				}
				if len(plan.Buckets) < 4 {
					t.Fatalf("only %d buckets", len(plan.Buckets))
				}
				grads := make([][]float32, n)
				for r := range grads {
					grads[r] = make([]float32, total)
					for i := range grads[r] {
						grads[r][i] = float32(rng.NormFloat64())
					}
				}
				rings := newRings(t, tr, n)
				off, _ := reduceStep(t, rings, plan, segs, grads, false, false)
				on, st := reduceStep(t, rings, plan, segs, grads, true, false)
				shuf, _ := reduceStep(t, rings, plan, segs, grads, true, true)
				for r := range n {
					if !slices.Equal(off[r], on[r]) || !slices.Equal(off[r], shuf[r]) {
						t.Fatalf("rank %d: overlapped sums differ from the sums after backward", r)
					}
					if !slices.Equal(on[r], on[0]) {
						t.Fatalf("rank %d differs from rank 0", r)
					}
					if st[r].Buckets != len(plan.Buckets) {
						t.Errorf("rank %d: stats count %d buckets", r, st[r].Buckets)
					}
				}
				for i := range total {
					want := 0.0
					for r := range n {
						want += float64(grads[r][i])
					}
					if d := float64(on[0][i]) - want; d > 1e-5 || d < -1e-5 {
						t.Fatalf("element %d: %v, want %v", i, on[0][i], want)
					}
				}
				t.Logf("rank 0 overlap on: %+v", st[0])
			})
		}
	}
}

// TestWindowsEqualWholeReduceScatter: zero1's buckets. Reduce-scattering
// (with the buddy hop) each bucket as a window of the whole gradient, as
// backward reports it or after backward, in any hook order, leaves every
// rank's own and buddy slices bit-identical to one reduce-scatter of the
// whole gradient, on both transports, with a float32 and a bfloat16 wire.
func TestWindowsEqualWholeReduceScatter(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		for _, wire := range []allreduce.Wire{allreduce.Float32, allreduce.BFloat16} {
			for _, n := range []int{2, 3, 4} {
				t.Run(tr.String()+"/"+wire.String()+"/"+string(rune('0'+n)), func(t *testing.T) {
					rng := rand.New(rand.NewPCG(uint64(n), 5))
					total, segs := layout(rng, 60)
					plan, err := NewPlan(total, segs, 32<<10)
					if err != nil {
						t.Fatal(err)
					}
					if len(plan.Buckets) < 4 {
						t.Fatalf("only %d buckets", len(plan.Buckets))
					}
					grads := make([][]float32, n)
					for r := range grads {
						grads[r] = make([]float32, total)
						for i := range grads[r] {
							grads[r][i] = float32(rng.NormFloat64())
						}
					}
					rings := newRingsWire(t, tr, wire, n)
					k := allreduce.KindReduceScatterBuddy
					whole := make([][]float32, n)
					errs := make([]error, n)
					var wg sync.WaitGroup
					for r := range n {
						whole[r] = slices.Clone(grads[r])
						wg.Go(func() {
							op, err := rings[r].StartKind(context.Background(), k, whole[r])
							if err == nil {
								err = op.Wait()
							}
							errs[r] = err
						})
					}
					wg.Wait()
					for r, err := range errs {
						if err != nil {
							t.Fatalf("rank %d: whole reduce-scatter: %v", r, err)
						}
					}
					off, _ := reduceStepKind(t, rings, plan, segs, grads, false, false, &k)
					on, st := reduceStepKind(t, rings, plan, segs, grads, true, false, &k)
					shuf, _ := reduceStepKind(t, rings, plan, segs, grads, true, true, &k)
					for r := range n {
						for _, s := range [][2]int{sliceOf(total, n, r), sliceOf(total, n, r-1)} {
							for i := s[0]; i < s[1]; i++ {
								w := whole[r][i]
								if off[r][i] != w || on[r][i] != w || shuf[r][i] != w {
									t.Fatalf("rank %d element %d: whole block %v, buckets after backward %v, overlapped %v, shuffled %v", r, i, w, off[r][i], on[r][i], shuf[r][i])
								}
							}
						}
						if st[r].Buckets != len(plan.Buckets) {
							t.Errorf("rank %d: stats count %d buckets", r, st[r].Buckets)
						}
					}
				})
			}
		}
	}
}

func sliceOf(n, size, rank int) [2]int {
	lo, hi := allreduce.Slice(n, size, rank)
	return [2]int{lo, hi}
}

// TestPeerDiesMidBucket: a rank dies (its ring closes) after starting its
// first bucket, while the others are still in backward. The survivors' Wait
// returns an error promptly — no hang — and a rank whose Ready calls come
// after the failure does not start anything more.
func TestPeerDiesMidBucket(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		t.Run(tr.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 7))
			total, segs := layout(rng, 60)
			plan, err := NewPlan(total, segs, 32<<10)
			if err != nil {
				t.Fatal(err)
			}
			rings := newRings(t, tr, 3)
			// One good step first, so that every link is up: a rank that
			// dies before it ever connected is caught by the deadline or
			// the coordinator's abort, not by a broken stream.
			grads := [][]float32{make([]float32, total), make([]float32, total), make([]float32, total)}
			reduceStep(t, rings, plan, segs, grads, true, false)
			errs := make([]error, 3)
			var wg sync.WaitGroup
			start := time.Now()
			for r := range 3 {
				wg.Go(func() {
					buf := make([]float32, total)
					red, err := plan.Begin(context.Background(), rings[r], buf, true)
					if err != nil {
						errs[r] = err
						return
					}
					for i := range segs {
						red.Ready(i)
						if r == 2 && plan.seg[i] == 0 && red.next == 1 {
							// The first bucket is in flight: die.
							_ = rings[2].Close()
						}
						if r != 2 && i%5 == 0 {
							time.Sleep(time.Millisecond)
						}
					}
					if err := red.BackwardDone(); err != nil {
						errs[r] = err
					}
					if _, err := red.Wait(); errs[r] == nil {
						errs[r] = err
					}
				})
			}
			wg.Wait()
			for r, err := range errs {
				if err == nil {
					t.Errorf("rank %d: step succeeded with a dead peer", r)
				} else {
					t.Logf("rank %d: %v", r, err)
				}
			}
			if el := time.Since(start); el > 40*time.Second {
				t.Errorf("failure took %v: survivors waited for the deadline", el)
			}
		})
	}
}

// TestCancelledStep: the coordinator's abort cancels the context; Wait
// returns the cancellation and the ring is broken.
func TestCancelledStep(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	total, segs := layout(rng, 20)
	plan, err := NewPlan(total, segs, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	rings := newRings(t, allreduce.TCP, 2)
	ctx, cancel := context.WithCancel(context.Background())
	// Only rank 0 runs the step: its first bucket waits for rank 1, which
	// never starts; the cancel must end it.
	red, err := plan.Begin(ctx, rings[0], make([]float32, total), true)
	if err != nil {
		t.Fatal(err)
	}
	for i := range segs {
		red.Ready(i)
	}
	cancel()
	if err := red.BackwardDone(); err != nil && !errors.Is(err, context.Canceled) {
		t.Logf("backward done: %v", err)
	}
	if _, err := red.Wait(); err == nil || !errors.Is(err, context.Canceled) {
		t.Errorf("Wait after cancel: %v", err)
	}
	// Abandon on a fresh step after failure ends its goroutine too.
	red2, err := plan.Begin(context.Background(), rings[0], make([]float32, total), true)
	if err != nil {
		t.Fatal(err)
	}
	red2.Abandon()
	if _, err := red2.Wait(); err == nil {
		t.Errorf("abandoned step reported success")
	}
}

func TestBeginChecksLength(t *testing.T) {
	plan, err := NewPlan(10, []Segment{{Off: 0, Len: 10}}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plan.Begin(context.Background(), nil, make([]float32, 9), true); err == nil {
		t.Errorf("short buffer accepted")
	}
}

// TestAppend: an operation appended after the plan's buckets (a split
// embedding's rows) is reduced on the same ring, in the same step, summed
// like the buckets, counted in the step's stats and waited for by Wait;
// appending before every bucket started, or twice, is refused with an
// error that says so, and fails the step.
func TestAppend(t *testing.T) {
	for _, tr := range []allreduce.Transport{allreduce.TCP, allreduce.GRPC} {
		t.Run(tr.String(), func(t *testing.T) {
			const n = 3
			rng := rand.New(rand.NewPCG(3, 3))
			total, segs := layout(rng, 30)
			plan, err := NewPlan(total, segs, 16<<10)
			if err != nil {
				t.Fatal(err)
			}
			rings := newRings(t, tr, n)
			grads, extra := make([][]float32, n), make([][]float32, n)
			for r := range n {
				grads[r] = make([]float32, total)
				extra[r] = make([]float32, 777)
				for i := range grads[r] {
					grads[r][i] = float32(rng.NormFloat64())
				}
				for i := range extra[r] {
					extra[r][i] = float32(r*1000 + i)
				}
			}
			stats := make([]Stats, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for r := range n {
				wg.Go(func() {
					red, err := plan.Begin(context.Background(), rings[r], grads[r], true)
					if err != nil {
						errs[r] = err
						return
					}
					for i := range segs {
						red.Ready(i)
					}
					if err := red.BackwardDone(); err != nil {
						errs[r] = err
					} else if err := red.Append(extra[r]); err != nil {
						errs[r] = err
					}
					st, err := red.Wait()
					stats[r] = st
					if errs[r] == nil {
						errs[r] = err
					}
				})
			}
			wg.Wait()
			for r := range n {
				if errs[r] != nil {
					t.Fatalf("rank %d: %v", r, errs[r])
				}
				if stats[r].Buckets != len(plan.Buckets)+1 {
					t.Errorf("rank %d: stats count %d operations, want %d", r, stats[r].Buckets, len(plan.Buckets)+1)
				}
				for i, v := range extra[r] {
					if want := float32(3*i + 3000); v != want {
						t.Fatalf("rank %d: appended element %d is %v, want %v", r, i, v, want)
					}
				}
			}

			// Misuse: before BackwardDone, and a second append.
			red, err := plan.Begin(context.Background(), rings[0], grads[0], false)
			if err != nil {
				t.Fatal(err)
			}
			if err := red.Append(extra[0]); err == nil || !strings.Contains(err.Error(), "BackwardDone") {
				t.Errorf("append before the buckets started: %v", err)
			}
			if _, err := red.Wait(); err == nil {
				t.Errorf("a step with a refused append reported success")
			}
		})
	}
}

// TestAppendTwiceRefused: one appended operation per step.
func TestAppendTwiceRefused(t *testing.T) {
	rings := newRings(t, allreduce.TCP, 1)
	plan, err := NewPlan(8, []Segment{{Off: 0, Len: 8}}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	red, err := plan.Begin(context.Background(), rings[0], make([]float32, 8), false)
	if err != nil {
		t.Fatal(err)
	}
	red.Ready(0)
	if err := red.BackwardDone(); err != nil {
		t.Fatal(err)
	}
	if err := red.Append(make([]float32, 4)); err != nil {
		t.Fatal(err)
	}
	if err := red.Append(make([]float32, 4)); err == nil || !strings.Contains(err.Error(), "second") {
		t.Errorf("second append: %v", err)
	}
	if _, err := red.Wait(); err == nil {
		t.Errorf("a step with a refused append reported success")
	}
}

// TestSkipSegment: a skipped segment is in no bucket (with buckets), its
// Ready is ignored, and a step leaves its range as each rank had it; with
// one bucket of the whole gradient it stays in that bucket.
func TestSkipSegment(t *testing.T) {
	segs := []Segment{{Off: 300, Len: 100, Order: 1}, {Off: 100, Len: 200, Order: 2}, {Off: 0, Len: 100, Order: 3, Group: 1, Skip: true}}
	plan, err := NewPlan(400, segs, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range plan.Buckets {
		if b.Lo < 100 || slices.Contains(b.Segs, 2) {
			t.Fatalf("bucket %+v holds the skipped segment", b)
		}
	}
	whole, err := NewPlan(400, segs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(whole.Buckets) != 1 || whole.Buckets[0].Lo != 0 || whole.Buckets[0].Hi != 400 {
		t.Fatalf("one bucket of the whole gradient: %+v", whole.Buckets)
	}
	rings := newRings(t, allreduce.TCP, 2)
	bufs := [][]float32{make([]float32, 400), make([]float32, 400)}
	for r := range bufs {
		for i := range bufs[r] {
			bufs[r][i] = float32(r + 1)
		}
	}
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Go(func() {
			red, err := plan.Begin(context.Background(), rings[r], bufs[r], true)
			if err != nil {
				errs[r] = err
				return
			}
			for i := range segs {
				red.Ready(i)
			}
			red.Ready(2) // again: ignored
			if err := red.BackwardDone(); err != nil {
				errs[r] = err
			}
			if _, err := red.Wait(); err != nil && errs[r] == nil {
				errs[r] = err
			}
		})
	}
	wg.Wait()
	for r := range 2 {
		if errs[r] != nil {
			t.Fatalf("rank %d: %v", r, errs[r])
		}
		for i, v := range bufs[r] {
			want := float32(3)
			if i < 100 {
				want = float32(r + 1) // skipped: not reduced
			}
			if v != want {
				t.Fatalf("rank %d element %d: %v, want %v", r, i, v, want)
			}
		}
	}
}

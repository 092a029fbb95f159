package allreduce

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
)

// randomCut cuts [0, length) into contiguous windows of random sizes (some
// empty, some smaller than a ring segment, some spanning several), in a
// random order: the buckets of a gradient, started as backward finishes
// them.
func randomCut(rng *rand.Rand, length int) [][2]int {
	var cut [][2]int
	for at := 0; at < length; {
		w := rng.IntN(max(length/3, 2)) + rng.IntN(2)
		if rng.IntN(6) == 0 {
			w = 0
		}
		w = min(w, length-at)
		cut = append(cut, [2]int{at, at + w})
		at += w
	}
	rng.Shuffle(len(cut), func(i, j int) { cut[i], cut[j] = cut[j], cut[i] })
	return cut
}

// TestWindowPlansTile: for every rank, the segments of the windows of a cut,
// put back at their offsets, are exactly the whole block's segments, and
// neighbours agree on how many chunks pass between them in each window.
func TestWindowPlansTile(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 9))
	for n := 1; n <= 5; n++ {
		for _, length := range []int{0, 1, n + 1, 97, 1000} {
			cut := randomCut(rng, length)
			for _, k := range []Kind{KindReduceScatter, KindReduceScatterBuddy, KindAllGather, KindAllReduce} {
				for r := range n {
					whole := opPlan(k, length, n, r, 3, 0, length)
					for t0 := whole.t0; t0 < whole.t1; t0++ {
						covered := 0
						wlo, whi := whole.sendSeg(t0)
						for _, w := range cut {
							p := opPlan(k, w[1]-w[0], n, r, 3, w[0], length)
							left := opPlan(k, w[1]-w[0], n, mod(r-1, n), 3, w[0], length)
							if n > 1 && p.totalRecv() != left.totalSend() {
								t.Fatalf("n=%d len=%d %v window %v: rank %d receives %d chunks, left sends %d", n, length, k, w, r, p.totalRecv(), left.totalSend())
							}
							lo, hi := p.sendSeg(t0)
							if hi > lo {
								if lo+w[0] < wlo || hi+w[0] > whi {
									t.Fatalf("n=%d len=%d %v step %d window %v: segment [%d,%d) outside the block's [%d,%d)", n, length, k, t0, w, lo+w[0], hi+w[0], wlo, whi)
								}
								covered += hi - lo
							}
						}
						if covered != whi-wlo {
							t.Fatalf("n=%d len=%d %v rank %d step %d: windows cover %d of the segment's %d elements", n, length, k, r, t0, covered, whi-wlo)
						}
					}
				}
			}
		}
	}
}

// TestWindowedReduceScatterBitIdentical: on real loopback rings of 2, 3 and
// 4 ranks, both transports, float32 and bfloat16 wires, uneven lengths and
// small chunks, a reduce-scatter (with and without the buddy hop) of every
// window of a random cut of a block, started in a random order with all of
// them in flight at once, leaves every rank's own (and buddy) slice
// bit-identical to a reduce-scatter of the whole block. So does the
// all-gather of the windows, and an ordinary all-reduce on the same ring
// still works next to them.
func TestWindowedReduceScatterBitIdentical(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		rng := rand.New(rand.NewPCG(21, 22))
		for _, n := range []int{2, 3, 4} {
			for _, wire := range []Wire{Float32, BFloat16} {
				t.Run(fmt.Sprintf("n=%d/%v", n, wire), func(t *testing.T) {
					rings := newRings(t, tr, n, func(c *Config) { c.ChunkBytes = MinChunkBytes; c.Wire = wire })
					for _, length := range []int{1, n + 1, 4099, 30001 + rng.IntN(100)} {
						for _, k := range []Kind{KindReduceScatter, KindReduceScatterBuddy} {
							whole, _, _ := randomBufs(rng, n, length)
							win := make([][]float32, n)
							for r := range n {
								win[r] = append([]float32(nil), whole[r]...)
							}
							mustOK(t, "whole "+k.String(), runKind(rings, k, whole))
							cut := randomCut(rng, length)
							mustOK(t, "windowed "+k.String(), runWindows(rings, k, win, cut))
							for r := range n {
								slices := [][2]int{{0, 0}, {0, 0}}
								slices[0][0], slices[0][1] = Slice(length, n, r)
								if k == KindReduceScatterBuddy {
									slices[1][0], slices[1][1] = Slice(length, n, r-1)
								}
								for _, s := range slices {
									for j := s[0]; j < s[1]; j++ {
										if math.Float32bits(win[r][j]) != math.Float32bits(whole[r][j]) {
											t.Fatalf("len %d %v rank %d element %d: windows give %v, the whole block %v (%d windows)", length, k, r, j, win[r][j], whole[r][j], len(cut))
										}
									}
								}
							}
							// All-gather by windows spreads the owners' slices.
							src := make([]float32, length)
							for j := range src {
								src[j] = float32(rng.NormFloat64())
							}
							for r := range n {
								lo, hi := Slice(length, n, r)
								for j := range win[r] {
									win[r][j] = float32(math.NaN())
								}
								copy(win[r][lo:hi], src[lo:hi])
							}
							mustOK(t, "windowed all-gather", runWindows(rings, KindAllGather, win, randomCut(rng, length)))
							for r := range n {
								for j := range src {
									if math.Float32bits(win[r][j]) != math.Float32bits(src[j]) {
										t.Fatalf("len %d windowed all-gather rank %d element %d = %v, want %v", length, r, j, win[r][j], src[j])
									}
								}
							}
						}
					}
					bufs, ref, abs := randomBufs(rng, n, 5000)
					mustOK(t, "all-reduce", reduceAll(rings, bufs))
					tol := f32tol(n)
					if wire == BFloat16 {
						tol = BFloat16ErrorBound(n)
					}
					checkResult(t, bufs, ref, abs, tol)
				})
			}
		}
	})
}

// runWindows starts one operation of kind k per window of cut on every rank
// (all in flight together, in cut's order) and waits for them.
func runWindows(rings []*Ring, k Kind, bufs [][]float32, cut [][2]int) []error {
	errs := make([]error, len(rings))
	var wg sync.WaitGroup
	for i, r := range rings {
		wg.Go(func() {
			var ops []*Op
			for _, w := range cut {
				op, err := r.StartWindow(context.Background(), k, bufs[i][w[0]:w[1]], w[0], len(bufs[i]))
				if err != nil {
					errs[i] = err
					return
				}
				ops = append(ops, op)
			}
			for _, op := range ops {
				if err := op.Wait(); err != nil && errs[i] == nil {
					errs[i] = err
				}
			}
		})
	}
	wg.Wait()
	return errs
}

// TestWindowMismatch: ranks that disagree on a window's offset (same
// length, same block, so every count matches) fail the operation with an
// error saying so, on both transports, instead of summing elements of
// different places. (Before the window tag, this summed silently.)
func TestWindowMismatch(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		const n, total = 3, 9000
		rings := newRings(t, tr, n, func(c *Config) { c.Timeout = 10 * time.Second })
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, r := range rings {
			// Both windows lie inside segment 0, so every rank's schedule
			// has the same shape and every count matches.
			off := 500
			if i == 1 {
				off = 1500
			}
			wg.Go(func() {
				op, err := r.StartWindow(context.Background(), KindReduceScatter, make([]float32, 1000), off, total)
				if err == nil {
					err = op.Wait()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		// Rank 2 receives rank 1's window and must refuse it (rank 1 itself
		// receives nothing in this schedule, so it may finish).
		if errs[2] == nil {
			t.Fatal("rank 2 accepted its left neighbour's other window")
		}
		named := false
		for i, err := range errs {
			if err == nil {
				continue
			}
			if strings.Contains(err.Error(), "window") {
				named = true
			}
			if strings.Contains(err.Error(), "timed out") {
				t.Errorf("rank %d: mismatch found only by timeout: %v", i, err)
			}
		}
		if !named {
			t.Fatalf("no error names the window: %v", errs)
		}
	})
}

// TestWindowOutOfBlock: a window that does not fit its block is refused at
// the start, naming the window, and the ring stays usable.
func TestWindowOutOfBlock(t *testing.T) {
	rings := newRings(t, GRPC, 2, nil)
	for _, w := range [][3]int{{-1, 10, 100}, {95, 10, 100}, {0, 10, 5}} {
		if _, err := rings[0].StartWindow(context.Background(), KindReduceScatter, make([]float32, w[1]), w[0], w[2]); err == nil || !strings.Contains(err.Error(), "does not fit") {
			t.Errorf("window %v: got %v", w, err)
		}
	}
	bufs, ref, abs := randomBufs(rand.New(rand.NewPCG(1, 1)), 2, 100)
	mustOK(t, "all-reduce", reduceAll(rings, bufs))
	checkResult(t, bufs, ref, abs, f32tol(2))
}

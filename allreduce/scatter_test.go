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

// runKind runs one operation of kind k per rank concurrently.
func runKind(rings []*Ring, k Kind, bufs [][]float32) []error {
	errs := make([]error, len(rings))
	var wg sync.WaitGroup
	for i, r := range rings {
		wg.Go(func() {
			op, err := r.StartKind(context.Background(), k, bufs[i])
			if err == nil {
				err = op.Wait()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errs
}

func mustOK(t *testing.T, what string, errs []error) {
	t.Helper()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%s: rank %d: %v", what, i, err)
		}
	}
}

// checkSlice asserts buf[lo:hi] is within tol·Σ|x| of the float64 sum.
func checkSlice(t *testing.T, who string, buf []float32, lo, hi int, ref, abs []float64, tol float64) {
	t.Helper()
	for j := lo; j < hi; j++ {
		if d := math.Abs(float64(buf[j]) - ref[j]); d > tol*abs[j]+1e-30 {
			t.Fatalf("%s: element %d = %v, float64 sum %v: error %g exceeds %g·Σ|x|", who, j, buf[j], ref[j], d, tol)
		}
	}
}

// TestSliceSplit pins the documented split: contiguous, in rank order,
// covering the buffer, sizes differing by at most one.
func TestSliceSplit(t *testing.T) {
	for n := 1; n <= 9; n++ {
		for _, length := range []int{0, 1, n - 1, n, n + 1, 1000, 1001} {
			next := 0
			for r := range n {
				lo, hi := Slice(length, n, r)
				if lo != next || hi < lo || hi-lo > length/n+1 || hi-lo < length/n {
					t.Fatalf("n=%d len=%d rank %d: slice [%d,%d) after %d", n, length, r, lo, hi, next)
				}
				next = hi
			}
			if next != max(length, 0) {
				t.Fatalf("n=%d len=%d: slices end at %d", n, length, next)
			}
		}
	}
}

// TestReduceScatterAllGather: on real loopback rings of 1–4 ranks, with
// uneven lengths and both transports, reduce-scatter leaves each rank the sum
// of its own slice (and, with the buddy hop, of its left neighbour's), and
// all-gather then makes every rank's buffer the bit-identical concatenation
// of the owners' slices. Both run on one ring interleaved with all-reduces,
// so the existing operation keeps working next to the new ones.
func TestReduceScatterAllGather(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		rng := rand.New(rand.NewPCG(11, 12))
		for n := 1; n <= 4; n++ {
			for _, wire := range []Wire{Float32, BFloat16} {
				t.Run(fmt.Sprintf("n=%d/%v", n, wire), func(t *testing.T) {
					tol := f32tol(n)
					if wire == BFloat16 {
						tol = BFloat16ErrorBound(n)
					}
					rings := newRings(t, tr, n, func(c *Config) { c.ChunkBytes = MinChunkBytes; c.Wire = wire })
					for _, length := range []int{0, 1, max(n-1, 1), n + 1, 4099, 70001 + rng.IntN(100)} {
						for _, k := range []Kind{KindReduceScatter, KindReduceScatterBuddy} {
							bufs, ref, abs := randomBufs(rng, n, length)
							mustOK(t, k.String(), runKind(rings, k, bufs))
							for r := range n {
								lo, hi := Slice(length, n, r)
								checkSlice(t, fmt.Sprintf("len %d %v rank %d own", length, k, r), bufs[r], lo, hi, ref, abs, tol)
								if k == KindReduceScatterBuddy {
									left := mod(r-1, n)
									blo, bhi := Slice(length, n, left)
									for j := blo; j < bhi; j++ {
										if math.Float32bits(bufs[r][j]) != math.Float32bits(bufs[left][j]) {
											t.Fatalf("len %d rank %d buddy element %d = %v, owner rank %d has %v", length, r, j, bufs[r][j], left, bufs[left][j])
										}
									}
								}
							}
							// All-gather: each rank contributes its own slice, in
							// float32 whatever the wire: the values here are not
							// representable in bfloat16, so any rounding shows.
							src := make([]float32, length)
							for j := range src {
								src[j] = float32(rng.NormFloat64()) * (1 + 0x1p-20)
							}
							for r := range n {
								lo, hi := Slice(length, n, r)
								for j := range bufs[r] {
									bufs[r][j] = float32(math.NaN())
								}
								copy(bufs[r][lo:hi], src[lo:hi])
							}
							mustOK(t, "all-gather", runKind(rings, KindAllGather, bufs))
							for r := range n {
								for j := range src {
									if math.Float32bits(bufs[r][j]) != math.Float32bits(src[j]) {
										t.Fatalf("len %d all-gather rank %d element %d = %v, want %v", length, r, j, bufs[r][j], src[j])
									}
								}
							}
							// A float32 all-reduce with one contributor per
							// element moves values exactly, on a bfloat16 ring too.
							for r := range n {
								for j := range bufs[r] {
									bufs[r][j] = 0
									if j%n == r {
										bufs[r][j] = src[j]
									}
								}
							}
							mustOK(t, "float32 all-reduce", runKind(rings, KindAllReduceFloat32, bufs))
							for r := range n {
								for j := range src {
									if math.Float32bits(bufs[r][j]) != math.Float32bits(src[j]) {
										t.Fatalf("len %d float32 all-reduce rank %d element %d = %v, want %v", length, r, j, bufs[r][j], src[j])
									}
								}
							}
							// An all-reduce on the same ring still works.
							bufs, ref, abs = randomBufs(rng, n, length)
							mustOK(t, "all-reduce", reduceAll(rings, bufs))
							checkResult(t, bufs, ref, abs, tol)
						}
					}
				})
			}
		}
	})
}

// TestKindMismatch: ranks that disagree on the kind of an operation fail it
// with an error naming the phase, instead of mixing up data.
func TestKindMismatch(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		const n = 3
		rings := newRings(t, tr, n, func(c *Config) { c.Timeout = 10 * time.Second })
		bufs := make([][]float32, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, r := range rings {
			bufs[i] = make([]float32, 3000)
			k := KindReduceScatter
			if i == 1 {
				k = KindAllGather
			}
			wg.Go(func() {
				op, err := r.StartKind(context.Background(), k, bufs[i])
				if err == nil {
					err = op.Wait()
				}
				errs[i] = err
			})
		}
		wg.Wait()
		named := false
		for i, err := range errs {
			if err == nil {
				t.Fatalf("rank %d: mismatched kinds succeeded", i)
			}
			if strings.Contains(err.Error(), "all-gather") && strings.Contains(err.Error(), "reduce-scatter") {
				named = true
			}
			if strings.Contains(err.Error(), "timed out") {
				t.Errorf("rank %d: mismatch found only by timeout: %v", i, err)
			}
		}
		if !named {
			t.Fatalf("no error names both phases: %v", errs)
		}
	})
}

// TestReduceScatterPeerKilled: a rank closed in the middle of a
// reduce-scatter or an all-gather fails the operation on every other rank at
// once, not by timeout.
func TestReduceScatterPeerKilled(t *testing.T) {
	forTransports(t, func(t *testing.T, tr Transport) {
		for _, k := range []Kind{KindReduceScatterBuddy, KindAllGather} {
			t.Run(k.String(), func(t *testing.T) {
				const n, victim = 4, 1
				for length := 8 << 20; ; length *= 2 {
					rings := newRings(t, tr, n, func(c *Config) { c.Timeout = 15 * time.Second; c.ChunkBytes = 64 << 10 })
					ops := make([]*Op, n)
					for i, r := range rings {
						op, err := r.StartKind(context.Background(), k, make([]float32, length))
						if err != nil {
							t.Fatal(err)
						}
						ops[i] = op
					}
					for ops[victim].recvd.Load() == 0 {
						select {
						case <-ops[victim].Done():
						case <-time.After(time.Millisecond):
							continue
						}
						break
					}
					rings[victim].Close()
					finished := false
					for i, op := range ops {
						err := op.Wait()
						if err == nil {
							finished = true
							continue
						}
						if i != victim && strings.Contains(err.Error(), "timed out") {
							t.Errorf("rank %d noticed the dead peer only by timeout: %v", i, err)
						}
					}
					closeAll(rings)
					if !finished {
						return
					}
					if length >= 64<<20 {
						t.Fatal("the operation always finished before the victim could be closed")
					}
					t.Logf("an operation of %d floats finished before the cut; retrying bigger", length)
				}
			})
		}
	})
}

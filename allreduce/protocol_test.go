package allreduce

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
)

// TestPlanInMemory runs the ring schedule without a network: every rank's
// sends are delivered through sink in the same order the ring uses. It pins
// the segment and chunk arithmetic for awkward lengths and chunk sizes.
func TestPlanInMemory(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	for n := 1; n <= 8; n++ {
		for _, length := range []int{0, 1, n - 1, n, n + 1, 97, 1000} {
			for _, chunk := range []int{1, 3, 64} {
				bufs, ref, abs := randomBufs(rng, n, length)
				plans := make([]plan, n)
				for r := range plans {
					plans[r] = newPlan(length, n, r, chunk)
				}
				for r := range plans {
					if n > 1 && plans[r].totalRecv() != plans[mod(r-1, n)].totalSend() {
						t.Fatalf("n=%d len=%d: rank %d receives %d chunks, rank %d sends %d", n, length, r, plans[r].totalRecv(), mod(r-1, n), plans[mod(r-1, n)].totalSend())
					}
				}
				for step := 0; step < 2*(n-1); step++ {
					// Snapshot what each rank sends at this step, then deliver.
					msgs := make([][]float32, n)
					for r := range n {
						lo, hi := plans[r].sendSeg(step)
						msgs[r] = append([]float32(nil), bufs[r][lo:hi]...)
					}
					for r := range n {
						from := mod(r-1, n)
						lo, hi := plans[r].recvSeg(step)
						if hi-lo != len(msgs[from]) {
							t.Fatalf("n=%d len=%d step %d: rank %d expects %d elements, rank %d sends %d", n, length, step, r, hi-lo, from, len(msgs[from]))
						}
						ph, _ := plans[r].phaseStep(step)
						for c := range numChunks(hi-lo, chunk) {
							a, b := plans[r].chunkRange(lo, hi, c)
							s := sink{dst: bufs[r][a:b], wire: Float32, add: ph == ReduceScatter}
							s.write(f32bytes(msgs[from][a-lo : b-lo]))
							if !s.done() {
								t.Fatal("sink not filled")
							}
						}
					}
				}
				checkResult(t, bufs, ref, abs, f32tol(n))
			}
		}
	}
}

func TestBF16(t *testing.T) {
	for _, c := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3f80},
		{-2, 0xc000},
		{math.Float32frombits(0x3f808000), 0x3f80}, // tie, even stays
		{math.Float32frombits(0x3f818000), 0x3f82}, // tie, odd rounds up
		{math.Float32frombits(0x3f808001), 0x3f81},
		{float32(math.Inf(1)), 0x7f80},
		{math.MaxFloat32, 0x7f80}, // rounds to +Inf
	} {
		if got := bf16(c.in); got != c.want {
			t.Errorf("bf16(%v) = %#04x, want %#04x", c.in, got, c.want)
		}
	}
	if v := bf16ToF32(bf16(float32(math.NaN()))); !math.IsNaN(float64(v)) {
		t.Errorf("NaN became %v", v)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for range 100000 {
		x := float32(rng.NormFloat64() * 1e3)
		if d := math.Abs(float64(bf16ToF32(bf16(x))) - float64(x)); d > 0x1p-8*math.Abs(float64(x)) {
			t.Fatalf("bf16 rounding of %v off by %g, more than 2^-8 relative", x, d)
		}
	}
}

// TestSinkSplits feeds payloads cut at every possible point (elements
// straddling gRPC buffer boundaries) in both wire formats.
func TestSinkSplits(t *testing.T) {
	src := []float32{1.5, -2.25, 3e-3, 4e10, 5}
	for _, w := range []Wire{Float32, BFloat16} {
		var payload []byte
		if w == Float32 {
			payload = append(payload, f32bytes(src)...)
		} else {
			payload = make([]byte, 2*len(src))
			encodeBF16(payload, src)
		}
		for cut := 0; cut <= len(payload); cut++ {
			for cut2 := cut; cut2 <= len(payload); cut2++ {
				dst := []float32{1, 1, 1, 1, 1}
				s := sink{dst: dst, wire: w, add: true}
				s.write(payload[:cut])
				s.write(payload[cut:cut2])
				s.write(payload[cut2:])
				if !s.done() {
					t.Fatalf("%v cut %d/%d: not done", w, cut, cut2)
				}
				for i, v := range src {
					want := 1 + v
					if w == BFloat16 {
						want = 1 + bf16ToF32(bf16(v))
					}
					if dst[i] != want {
						t.Fatalf("%v cut %d/%d: dst[%d] = %v, want %v", w, cut, cut2, i, dst[i], want)
					}
				}
			}
		}
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	h := header{Kind: kindData, Wire: BFloat16, Phase: AllGather, Gen: 1 << 40, Seq: 77, From: 3, Step: 2, Chunk: 9, Count: 1234}
	b := make([]byte, headerLen)
	h.encode(b)
	got, err := decodeHeader(b)
	if err != nil || got != h {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, h)
	}
	for i, want := range map[int]string{0: "magic", 4: "version", 5: "kind", 6: "wire", 7: "phase"} {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x55
		if _, err := decodeHeader(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("corrupt byte %d: got %v, want %q", i, err, want)
		}
	}
	// A data message carries its window tag there; a control message's
	// field stays reserved.
	h.Window = windowTag(10, 5, 100)
	h.encode(b)
	if got, err := decodeHeader(b); err != nil || got != h {
		t.Fatalf("round trip with a window: %+v, %v; want %+v", got, err, h)
	}
	hello := header{Kind: kindHello, Gen: 1, Step: 3}
	hello.encode(b)
	b[40] = 1
	if _, err := decodeHeader(b); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("hello with a non-zero reserved field: got %v", err)
	}
	b[4] = 1
	if _, err := decodeHeader(b); err == nil || !strings.Contains(err.Error(), "protocol version 1, this build speaks 2") {
		t.Errorf("a version 1 peer: got %v", err)
	}
	if _, err := decodeHeader(b[:10]); err == nil {
		t.Error("short header accepted")
	}
}

// FuzzDecode throws arbitrary bytes, split at arbitrary points, at the message
// decoder. It must never panic, and must only accept a message that fills
// exactly the destination it expects.
func FuzzDecode(f *testing.F) {
	want := header{Kind: kindData, Wire: Float32, Phase: ReduceScatter, Gen: 3, Seq: 1, From: 0, Step: 0, Chunk: 0, Count: 3}
	valid := make([]byte, headerLen, headerLen+12)
	want.encode(valid)
	valid = append(valid, f32bytes([]float32{1, 2, 3})...)
	hello := make([]byte, headerLen)
	(&header{Kind: kindHello, Gen: 3, Step: 2}).encode(hello)
	f.Add(valid, uint16(0), uint16(0), false)
	f.Add(valid, uint16(45), uint16(50), false)
	f.Add(valid[:headerLen+5], uint16(3), uint16(44), false)
	f.Add(hello, uint16(10), uint16(20), true)
	f.Add([]byte("not a message at all, just text"), uint16(2), uint16(9), false)
	f.Fuzz(func(t *testing.T, data []byte, c1, c2 uint16, expectHello bool) {
		a := min(int(c1), len(data))
		b := min(max(int(c2), a), len(data))
		bs := mem.BufferSlice{mem.SliceBuffer(data[:a]), mem.SliceBuffer(data[a:b]), mem.SliceBuffer(data[b:])}
		dst := make([]float32, 3)
		m := inMsg{}
		if !expectHello {
			w := want
			m.want, m.sink = &w, &sink{dst: dst, wire: Float32, add: true}
		}
		err := m.decode(bs)
		if err != nil {
			return
		}
		if expectHello {
			if m.hdr.Kind != kindHello || len(data) != headerLen {
				t.Fatalf("accepted %d bytes as hello: %+v", len(data), m.hdr)
			}
			return
		}
		if m.hdr != want || len(data) != headerLen+12 || !m.sink.done() {
			t.Fatalf("accepted unexpected message %+v of %d bytes", m.hdr, len(data))
		}
	})
}

// TestAddF32 pins the vector add to the scalar one bit for bit (including
// NaN, infinities, signed zeros and subnormals) at every length and offset
// around the 32-element vector block.
func TestAddF32(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	specials := []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 0, float32(math.Copysign(0, -1)), 1e-45, -1e-40, math.MaxFloat32}
	for length := 0; length <= 300; length++ {
		off := rng.IntN(8) // unaligned starts
		dst := make([]float32, length+off)
		src := make([]float32, length+off)
		for i := range dst {
			if rng.IntN(10) == 0 {
				dst[i] = specials[rng.IntN(len(specials))]
			} else {
				dst[i] = float32(rng.NormFloat64())
			}
			src[i] = float32(rng.NormFloat64() * 1e3)
		}
		want := append([]float32(nil), dst...)
		addF32Generic(want[off:], src[off:])
		addF32(dst[off:], src[off:])
		for i := range dst {
			if math.Float32bits(dst[i]) != math.Float32bits(want[i]) {
				t.Fatalf("length %d offset %d element %d: %v, scalar %v", length, off, i, dst[i], want[i])
			}
		}
	}
}

// TestPartPlansInMemory runs the reduce-scatter (with and without the buddy
// hop) and all-gather schedules in memory: send and receive counts match
// between neighbours and the owned slices come out right.
func TestPartPlansInMemory(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for n := 1; n <= 6; n++ {
		for _, length := range []int{0, 1, n + 1, 97, 1000} {
			for _, k := range []Kind{KindReduceScatter, KindReduceScatterBuddy} {
				bufs, ref, abs := randomBufs(rng, n, length)
				plans := make([]plan, n)
				for r := range plans {
					plans[r] = opPlan(k, length, n, r, 3, 0, length)
				}
				for r := range plans {
					if n > 1 && plans[r].totalRecv() != plans[mod(r-1, n)].totalSend() {
						t.Fatalf("n=%d len=%d %v: rank %d receives %d chunks, left sends %d", n, length, k, r, plans[r].totalRecv(), plans[mod(r-1, n)].totalSend())
					}
				}
				p0 := plans[0]
				for step := p0.t0; step < p0.t1; step++ {
					msgs := make([][]float32, n)
					for r := range n {
						lo, hi := plans[r].sendSeg(step)
						msgs[r] = append([]float32(nil), bufs[r][lo:hi]...)
					}
					for r := range n {
						lo, hi := plans[r].recvSeg(step)
						ph, _ := plans[r].phaseStep(step)
						s := sink{dst: bufs[r][lo:hi], wire: Float32, add: ph == ReduceScatter}
						s.write(f32bytes(msgs[mod(r-1, n)]))
					}
				}
				for r := range n {
					lo, hi := Slice(length, n, r)
					checkSlice(t, fmt.Sprintf("n=%d len=%d %v rank %d", n, length, k, r), bufs[r], lo, hi, ref, abs, f32tol(n))
					if k == KindReduceScatterBuddy {
						lo, hi = Slice(length, n, r-1)
						checkSlice(t, fmt.Sprintf("n=%d len=%d buddy of rank %d", n, length, r), bufs[r], lo, hi, ref, abs, f32tol(n))
					}
				}
			}
		}
	}
}

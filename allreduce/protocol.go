package allreduce

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// Wire is the element format of gradient payloads on the wire.
type Wire uint8

const (
	// Float32 sends IEEE float32 as is (4 bytes per element).
	Float32 Wire = 0
	// BFloat16 sends the top 16 bits of float32, rounded to nearest even
	// (2 bytes per element); sums are still accumulated in float32.
	BFloat16 Wire = 1
)

func (w Wire) String() string {
	switch w {
	case Float32:
		return "float32"
	case BFloat16:
		return "bfloat16"
	}
	return fmt.Sprintf("wire(%d)", uint8(w))
}

func (w Wire) elemSize() int {
	if w == BFloat16 {
		return 2
	}
	return 4
}

// Phase is the ring phase a data message belongs to.
type Phase uint8

const (
	ReduceScatter Phase = 0
	AllGather     Phase = 1
)

func (p Phase) String() string {
	if p == AllGather {
		return "all-gather"
	}
	return "reduce-scatter"
}

// Message kinds.
const (
	kindHello uint8 = 1 // first message of a stream: who is sending, for which generation
	kindData  uint8 = 2 // one chunk of one segment of one operation
	kindOffer uint8 = 3 // receiver → sender (TCP transport): the port of the data listener
)

const (
	headerMagic   = 0x52415452 // "RTAR" little-endian
	headerVersion = 2          // 2: data messages carry the window tag (offset 40)
	headerLen     = 44
)

// header is the fixed 44-byte little-endian prefix of every message:
//
//	off size field
//	  0    4 magic "RTAR"
//	  4    1 version (2)
//	  5    1 kind (1 hello, 2 data, 3 offer)
//	  6    1 wire format (0 float32, 1 bfloat16)
//	  7    1 phase (0 reduce-scatter, 1 all-gather)
//	  8    8 generation
//	 16    8 operation sequence number (hello: 0)
//	 24    4 sender rank
//	 28    4 ring size (hello, offer) / step within the phase (data)
//	 32    4 chunk index within the segment (data) / transport (hello) /
//	         TCP port of the data listener (offer)
//	 36    4 element count of the payload
//	 40    4 window tag (data: see windowTag; 0 for an operation on a
//	         whole block) / reserved, zero (hello, offer)
//
// The payload (count elements in the wire format, little-endian) follows.
type header struct {
	Kind  uint8
	Wire  Wire
	Phase Phase
	Gen   uint64
	Seq   uint64
	From  uint32
	Step  uint32 // ring size for hello
	Chunk uint32
	Count uint32
	// Window tags the window of a virtual block a data message's operation
	// covers (see windowTag), so that neighbours that disagree on it fail
	// instead of summing mismatched elements.
	Window uint32
}

func (h *header) encode(b []byte) {
	_ = b[headerLen-1]
	binary.LittleEndian.PutUint32(b[0:], headerMagic)
	b[4] = headerVersion
	b[5] = h.Kind
	b[6] = uint8(h.Wire)
	b[7] = uint8(h.Phase)
	binary.LittleEndian.PutUint64(b[8:], h.Gen)
	binary.LittleEndian.PutUint64(b[16:], h.Seq)
	binary.LittleEndian.PutUint32(b[24:], h.From)
	binary.LittleEndian.PutUint32(b[28:], h.Step)
	binary.LittleEndian.PutUint32(b[32:], h.Chunk)
	binary.LittleEndian.PutUint32(b[36:], h.Count)
	binary.LittleEndian.PutUint32(b[40:], h.Window)
}

// decodeHeader parses and sanity-checks a header; it does not know what the
// receiver expects (see checkData / checkHello).
func decodeHeader(b []byte) (header, error) {
	var h header
	if len(b) < headerLen {
		return h, fmt.Errorf("message of %d bytes is shorter than the %d-byte header", len(b), headerLen)
	}
	if m := binary.LittleEndian.Uint32(b); m != headerMagic {
		return h, fmt.Errorf("bad magic %#x (not a ringtune all-reduce message)", m)
	}
	if b[4] != headerVersion {
		return h, fmt.Errorf("protocol version %d, this build speaks %d", b[4], headerVersion)
	}
	h.Kind, h.Wire, h.Phase = b[5], Wire(b[6]), Phase(b[7])
	if h.Kind != kindHello && h.Kind != kindData && h.Kind != kindOffer {
		return h, fmt.Errorf("unknown message kind %d", h.Kind)
	}
	if h.Wire != Float32 && h.Wire != BFloat16 {
		return h, fmt.Errorf("unknown wire format %d", h.Wire)
	}
	if h.Phase != ReduceScatter && h.Phase != AllGather {
		return h, fmt.Errorf("unknown phase %d", h.Phase)
	}
	h.Gen = binary.LittleEndian.Uint64(b[8:])
	h.Seq = binary.LittleEndian.Uint64(b[16:])
	h.From = binary.LittleEndian.Uint32(b[24:])
	h.Step = binary.LittleEndian.Uint32(b[28:])
	h.Chunk = binary.LittleEndian.Uint32(b[32:])
	h.Count = binary.LittleEndian.Uint32(b[36:])
	h.Window = binary.LittleEndian.Uint32(b[40:])
	if h.Kind != kindData && h.Window != 0 {
		return h, fmt.Errorf("reserved header field of a control message (kind %d) is %#x, want 0", h.Kind, h.Window)
	}
	if h.Kind != kindData && h.Count != 0 {
		return h, fmt.Errorf("control message (kind %d) claims a payload of %d elements", h.Kind, h.Count)
	}
	return h, nil
}

// checkData compares a received data header with the one the receiver expects
// next; any difference is an error naming both values.
func checkData(got, want header) error {
	switch {
	case got.Kind != kindData:
		return fmt.Errorf("got message kind %d, want data", got.Kind)
	case got.Gen != want.Gen:
		return fmt.Errorf("message from generation %d rejected: this ring is generation %d", got.Gen, want.Gen)
	case got.Seq != want.Seq:
		return fmt.Errorf("message for operation %d rejected: operation %d expected (generation %d)", got.Seq, want.Seq, want.Gen)
	case got.From != want.From:
		return fmt.Errorf("message from rank %d rejected: left neighbour is rank %d", got.From, want.From)
	case got.Wire != want.Wire:
		return fmt.Errorf("message in wire format %v rejected: this ring uses %v", got.Wire, want.Wire)
	case got.Window != want.Window:
		return fmt.Errorf("operation %d: message for block window tag %#x rejected: this rank runs the operation on window tag %#x (the ranks disagree on the window's offset or the block's length; every rank must start the same windows in the same order)", want.Seq, got.Window, want.Window)
	case got.Phase != want.Phase || got.Step != want.Step || got.Chunk != want.Chunk:
		return fmt.Errorf("operation %d: got %v step %d chunk %d, want %v step %d chunk %d", want.Seq, got.Phase, got.Step, got.Chunk, want.Phase, want.Step, want.Chunk)
	case got.Count != want.Count:
		return fmt.Errorf("operation %d %v step %d chunk %d: got %d elements, want %d (peers disagree on buffer length or chunk size)", want.Seq, want.Phase, want.Step, want.Chunk, got.Count, want.Count)
	}
	return nil
}

// --- ring arithmetic -------------------------------------------------------

// segment returns the element range [lo, hi) of segment s when n elements are
// split over size ranks; sizes differ by at most one.
func segment(n, size, s int) (lo, hi int) {
	return s * n / size, (s + 1) * n / size
}

func mod(a, m int) int { return ((a % m) + m) % m }

// numChunks is the number of chunks of at most chunk elements in n elements.
func numChunks(n, chunk int) int { return (n + chunk - 1) / chunk }

// windowTag identifies the window [off, off+n) of a virtual block of total
// elements in data headers: 0 for a whole block (off 0, n = total), so that
// a whole-block operation looks the same however it was started; else an
// FNV-1a hash of off and total, never 0.
func windowTag(off, n, total int) uint32 {
	if off == 0 && n == total {
		return 0
	}
	h := uint32(2166136261)
	for _, v := range []uint64{uint64(off), uint64(total)} {
		for range 8 {
			h = (h ^ uint32(v&0xff)) * 16777619
			v >>= 8
		}
	}
	if h == 0 {
		h = 1
	}
	return h
}

// plan is one rank's schedule for one operation. Global step t runs from 0
// to 2(size-1)-1: steps below size-1 are reduce-scatter, the rest all-gather.
// At step t the rank sends segment (rank-t+shift) and receives segment
// (rank-t-1+shift), so the segment it receives at t is the one it sends at
// t+1. An operation runs the steps [t0, t1) of that schedule: all of them for
// an all-reduce, the first size-1 for a reduce-scatter, the last size-1 for an
// all-gather. shift is 0 for an all-reduce (after its reduce-scatter half
// rank r holds segment r+1, as always) and -1 for the separate
// reduce-scatter and all-gather, so that rank r owns segment r (see Slice).
//
// The buffer may be a window [off, off+n) of a virtual block of total
// elements (off 0 and total n for a whole buffer): the segments are then the
// whole block's, segment(total, size, s), each cut to the window (many
// empty). Every element of the window meets the same ranks in the same order
// as it would in an operation on the whole block, so reducing a block window
// by window gives bit-identical sums (a bucket of the gradient under zero1
// ends in the same rank's slice as the whole gradient would).
type plan struct {
	n, size, rank, chunk int
	t0, t1, shift        int
	off, total           int
	wtag                 uint32 // windowTag of the window
	recvStart            []int  // recvStart[t-t0]: index of step t's first chunk in receive order
}

func newPlan(n, size, rank, chunk int) plan {
	return newPartPlan(n, size, rank, chunk, 0, 2*(size-1), 0)
}

func newPartPlan(n, size, rank, chunk, t0, t1, shift int) plan {
	return newWindowPlan(n, size, rank, chunk, t0, t1, shift, 0, n)
}

func newWindowPlan(n, size, rank, chunk, t0, t1, shift, off, total int) plan {
	p := plan{n: n, size: size, rank: rank, chunk: chunk, t0: t0, t1: t1, shift: shift, off: off, total: total, wtag: windowTag(off, n, total)}
	p.recvStart = make([]int, t1-t0+1)
	for t := t0; t < t1; t++ {
		lo, hi := p.recvSeg(t)
		p.recvStart[t-t0+1] = p.recvStart[t-t0] + numChunks(hi-lo, chunk)
	}
	return p
}

// seg is segment s of the virtual block cut to the window, in buffer
// coordinates (empty ranges as [0, 0)).
func (p plan) seg(s int) (lo, hi int) {
	lo, hi = segment(p.total, p.size, s)
	lo, hi = max(lo, p.off), min(hi, p.off+p.n)
	if lo >= hi {
		return 0, 0
	}
	return lo - p.off, hi - p.off
}

func (p plan) sendSeg(t int) (lo, hi int) { return p.seg(mod(p.rank-t+p.shift, p.size)) }
func (p plan) recvSeg(t int) (lo, hi int) { return p.seg(mod(p.rank-t-1+p.shift, p.size)) }

// tag is the window tag of the plan's data headers.
func (p plan) tag() uint32 { return p.wtag }

// stepOf returns the global step of the i-th chunk in receive order.
func (p plan) stepOf(i int) int {
	k := 0
	for k+1 < len(p.recvStart) && p.recvStart[k+1] <= i {
		k++
	}
	return p.t0 + k
}

// phaseStep maps a global step to its phase and the step within that phase.
func (p plan) phaseStep(t int) (Phase, int) {
	if t < p.size-1 {
		return ReduceScatter, t
	}
	return AllGather, t - (p.size - 1)
}

// chunkRange is chunk c of the range [lo, hi).
func (p plan) chunkRange(lo, hi, c int) (int, int) {
	a := lo + c*p.chunk
	return a, min(a+p.chunk, hi)
}

// totalRecv is the number of chunks received in the whole operation.
func (p plan) totalRecv() int { return p.recvStart[len(p.recvStart)-1] }

// totalSend is the number of chunks sent in the whole operation.
func (p plan) totalSend() int {
	n := 0
	for t := p.t0; t < p.t1; t++ {
		lo, hi := p.sendSeg(t)
		n += numChunks(hi-lo, p.chunk)
	}
	return n
}

// --- payload arithmetic ------------------------------------------------------

var _ = littleEndian // build guard: see endian.go

// f32bytes views a float32 slice as its little-endian bytes (the package only
// builds on little-endian hosts, see endian.go).
func f32bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}

// bf16 rounds a float32 to bfloat16, nearest even; NaN stays NaN.
func bf16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// BFloat16ErrorBound is the worst-case error of a BFloat16-wire all-reduce
// over n ranks, relative to Σ|x_i| (the sum of the magnitudes of the inputs of
// one element). A segment's partial sum is rounded to bfloat16 (unit roundoff
// 2^-8) at each of its n-1 hops and once more by its owner before the
// all-gather, and float32 (2^-24) at each of the n-1 adds; every partial sum is
// at most Σ|x_i| grown by (1+2^-8) per rounding. Float32 wire has the same
// form with 2^-24 alone: n·2^-24·Σ|x_i|.
func BFloat16ErrorBound(n int) float64 {
	return (float64(n)*0x1p-8 + float64(n)*0x1p-24) * math.Pow(1+0x1p-8, float64(n))
}

// roundBF16 rounds values in place to bfloat16 precision, so the owner of a
// segment holds exactly what its peers will decode from the wire.
func roundBF16(f []float32) {
	for i, v := range f {
		f[i] = bf16ToF32(bf16(v))
	}
}

// encodeBF16 writes f as little-endian bfloat16 into dst (2·len(f) bytes).
func encodeBF16(dst []byte, f []float32) {
	_ = dst[2*len(f)-1]
	for i, v := range f {
		binary.LittleEndian.PutUint16(dst[2*i:], bf16(v))
	}
}

// sink applies a payload that arrives in arbitrary byte pieces (gRPC hands a
// message over as a list of buffers whose boundaries need not fall on element
// boundaries) to a destination range, either adding or copying.
type sink struct {
	dst   []float32
	wire  Wire
	add   bool
	pos   int     // next destination element
	carry [4]byte // partial element straddling two pieces
	nc    int
}

func (s *sink) write(b []byte) {
	es := s.wire.elemSize()
	if s.nc > 0 {
		k := copy(s.carry[s.nc:es], b)
		s.nc += k
		b = b[k:]
		if s.nc < es {
			return
		}
		s.apply(s.carry[:es])
		s.nc = 0
	}
	whole := len(b) / es * es
	if whole > 0 {
		s.apply(b[:whole])
	}
	s.nc = copy(s.carry[:], b[whole:])
}

// done reports whether exactly the destination was filled.
func (s *sink) done() bool { return s.pos == len(s.dst) && s.nc == 0 }

func (s *sink) apply(b []byte) {
	if s.wire == Float32 {
		n := len(b) / 4
		dst := s.dst[s.pos : s.pos+n]
		src := unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
		if s.add {
			addF32(dst, src)
		} else {
			copy(dst, src)
		}
		s.pos += n
		return
	}
	n := len(b) / 2
	dst := s.dst[s.pos : s.pos+n]
	if s.add {
		for i := range dst {
			dst[i] += bf16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	} else {
		for i := range dst {
			dst[i] = bf16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	}
	s.pos += n
}

// addF32Generic is dst[i] += src[i]; unrolled because it runs on every
// received byte of the reduce-scatter phase and competes with kernel TCP for
// the CPU. addF32 (add_*.go) uses vector instructions where it can.
func addF32Generic(dst, src []float32) {
	src = src[:len(dst)]
	i := 0
	for ; i+8 <= len(dst); i += 8 {
		d := dst[i : i+8 : i+8]
		s := src[i : i+8 : i+8]
		d[0] += s[0]
		d[1] += s[1]
		d[2] += s[2]
		d[3] += s[3]
		d[4] += s[4]
		d[5] += s[5]
		d[6] += s[6]
		d[7] += s[7]
	}
	for ; i < len(dst); i++ {
		dst[i] += src[i]
	}
}

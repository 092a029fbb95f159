package bulk

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc/mem"
)

// chunkPool is the buffer pool of the bulk plane's chunks: the sender's
// reads from its source, the receiver's decoded messages, a FileSink's
// pieces, and (on connections made by Dial) gRPC's own read buffers.
//
// Why not gRPC's default pool: it zeroes every buffer it hands out, which
// at 1.5 GB per checkpoint cost ~0.4 s of CPU per transfer (profiled), and
// its largest class is 1 MiB, so a 1 MiB chunk plus its kind byte was a
// fresh allocation each time. Every user of this pool overwrites the bytes
// it reads (io.ReadFull, CopyTo, copy), so stale contents are never seen.
//
// Buffers come in power-of-two classes from 4 KiB to 32 MiB; a request
// beyond the largest class is allocated and not kept.
type chunkPool struct {
	classes [maxPoolShift - minPoolShift + 1]sync.Pool
}

const (
	minPoolShift = 12 // 4 KiB
	maxPoolShift = 25 // 32 MiB
)

var pool mem.BufferPool = &chunkPool{}

func poolClass(n int) int {
	if n <= 1<<minPoolShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolShift
}

// Get returns a buffer of length n with unspecified contents.
func (p *chunkPool) Get(n int) *[]byte {
	c := poolClass(n)
	if c >= len(p.classes) {
		b := make([]byte, n)
		return &b
	}
	if bp, ok := p.classes[c].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := make([]byte, n, 1<<(c+minPoolShift))
	return &b
}

// Put keeps a buffer Get returned for reuse.
func (p *chunkPool) Put(bp *[]byte) {
	c := cap(*bp)
	if c < 1<<minPoolShift || c&(c-1) != 0 {
		return // not one of ours
	}
	k := bits.Len(uint(c)) - 1 - minPoolShift
	if k >= len(p.classes) {
		return
	}
	p.classes[k].Put(bp)
}

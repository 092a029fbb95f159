// Package bulk is ringtune's bulk state plane: one gRPC server-streaming
// method, Get, that moves a whole byte stream (a trainer state, a model or
// exported file, a checkpoint) from the process that holds it to the one
// that asks, without either side holding it whole.
//
// Why a plane of its own: the control stream is a queue of small ordered
// messages; a 1.5 GB state pushed through it overflows the queue and
// starves the protocol. Here HTTP/2 flow control bounds what is in flight
// (the sender blocks when the receiver does not read), so memory on both
// sides is O(chunk), and each transfer is its own stream that can fail
// alone.
//
// Wire format (codec "ringtune-bulk", no protobuf, like the ring's raw
// codec): every message is one kind byte and a body.
//
//	'R' request   client → server, JSON Request
//	'D' data      server → client, up to Request.ChunkBytes raw bytes
//	'E' end       server → client, JSON trailer {bytes, sha256 | crc32c}
//
// Both sides compute a checksum while the bytes stream; the client compares
// its own sum and count with the trailer (and with the SHA-256 the caller
// expects, when it knows one) and reports any difference as an error, so a
// transfer is either complete and verified or an error: a caller must
// discard what it wrote before the error.
//
// The checksum is SHA-256 unless the request asks for CRC-32C (Request.Sum
// SumCRC32C). A transfer's checksum only guards the bytes in transit (the
// peers are authenticated); SHA-256 costs ~0.8 s of CPU per GB on each side
// on the project's box, CRC-32C (hardware instruction) a small fraction of
// that. So the hops whose content hash nobody keeps use CRC-32C: a zero1
// node assembling a state pulls its peers' moment slices with it, and the
// coordinator pulls a checkpoint with it while computing the SHA-256 its
// header records itself, on its side only (FetchHashed). A model file,
// whose SHA-256 is its name, and a node's state (whose sum a joiner checks
// against the one it was given) keep SHA-256.
//
// Deadlines are per chunk, not per transfer: a watchdog on each side is
// reset by every chunk, so a 10 GB transfer may take as long as it needs
// while a stalled peer is detected within one chunk timeout.
//
// Authentication is the cluster key's token, checked by the server options
// of the gRPC server the service is registered on (auth.ServerOptions) and
// again by the handler itself, so the service is safe even on a server
// built without them.
package bulk

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"time"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// Kinds of source a Request can name.
const (
	// KindState is a node's trainer state at committed step Request.Step
	// (control.EncodeState's layout).
	KindState = "state"
	// KindExport is the file Request.Name of a node's export number
	// Request.Req.
	KindExport = "export"
	// KindModel is the coordinator's model file whose SHA-256 (hex) is
	// Request.Name.
	KindModel = "model"
	// KindCheckpoint is the state in the coordinator's checkpoint of
	// Request.Step committed steps.
	KindCheckpoint = "checkpoint"
	// KindShard is a zero1 node's slice of optimizer block Request.Req
	// (0: AdamW's first moment, 1: its second) at committed step
	// Request.Step, as raw little-endian float32: its own slice, or with
	// Name "buddy" its copy of its left neighbour's. A node assembling the
	// full state for a checkpoint or a joiner pulls these from its peers.
	KindShard = "shard"
)

// Chunk sizes and the default per-chunk deadline.
const (
	DefaultChunkBytes   = 1 << 20
	MinChunkBytes       = 4 << 10
	MaxChunkBytes       = 16 << 20
	DefaultChunkTimeout = time.Minute
)

// Request names what to stream.
type Request struct {
	Kind string `json:"kind"`
	Name string `json:"name,omitempty"`
	Step int    `json:"step,omitempty"`
	Req  int    `json:"req,omitempty"`
	// Gen is, for KindShard, the generation whose slice layout the
	// requester assembles (0: any): a node already re-sliced for another
	// generation refuses, rather than send a range of the same length
	// that holds other elements.
	Gen uint64 `json:"gen,omitempty"`
	// ChunkBytes is the size of the data messages the client wants
	// (0: DefaultChunkBytes; clamped to [MinChunkBytes, MaxChunkBytes]).
	ChunkBytes int `json:"chunk_bytes,omitempty"`
	// Sum is the transfer's checksum: "" (SHA-256) or SumCRC32C. A server
	// of an older version ignores it and sends SHA-256, which a client
	// that asked for CRC-32C rejects with an error that says so.
	Sum string `json:"sum,omitempty"`
}

// SumCRC32C asks for a CRC-32C (Castagnoli) transfer checksum (see the
// package doc).
const SumCRC32C = "crc32c"

func (r Request) String() string {
	switch r.Kind {
	case KindState, KindCheckpoint:
		return fmt.Sprintf("%s of step %d", r.Kind, r.Step)
	case KindShard:
		return fmt.Sprintf("shard %q of block %d of step %d", r.Name, r.Req, r.Step)
	case KindExport:
		return fmt.Sprintf("export %d file %s", r.Req, r.Name)
	}
	return fmt.Sprintf("%s %s", r.Kind, r.Name)
}

func (r Request) chunk() int {
	if r.ChunkBytes <= 0 {
		return DefaultChunkBytes
	}
	return min(max(r.ChunkBytes, MinChunkBytes), MaxChunkBytes)
}

func (r Request) validate() error {
	if r.Sum != "" && r.Sum != SumCRC32C {
		return fmt.Errorf("bulk: %s request with checksum %q (want \"\" for SHA-256, or %q)", r.Kind, r.Sum, SumCRC32C)
	}
	switch r.Kind {
	case KindState, KindCheckpoint:
		if r.Step < 0 {
			return fmt.Errorf("bulk: %s request with negative step %d", r.Kind, r.Step)
		}
	case KindExport, KindModel:
		if r.Name == "" {
			return fmt.Errorf("bulk: %s request without a name", r.Kind)
		}
	case KindShard:
		if r.Step < 0 || r.Req < 0 || r.Req > 1 || (r.Name != "" && r.Name != "buddy") {
			return fmt.Errorf("bulk: shard request for step %d, block %d, slice %q (want step >= 0, block 0 or 1, slice \"\" or \"buddy\")", r.Step, r.Req, r.Name)
		}
	default:
		return fmt.Errorf("bulk: unknown request kind %q (want state, export, model, checkpoint or shard)", r.Kind)
	}
	return nil
}

// trailer ends a transfer: the count and the checksum the request asked
// for (hex).
type trailer struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256,omitempty"`
	CRC32C string `json:"crc32c,omitempty"`
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// newSum is the transfer checksum r asks for.
func (r Request) newSum() hash.Hash {
	if r.Sum == SumCRC32C {
		return crc32.New(castagnoli)
	}
	return sha256.New()
}

// trailerFor is the trailer of total bytes with checksum h (of r's kind).
func (r Request) trailerFor(total int64, h hash.Hash) trailer {
	t := trailer{Bytes: total}
	if r.Sum == SumCRC32C {
		t.CRC32C = hex.EncodeToString(h.Sum(nil))
	} else {
		t.SHA256 = hex.EncodeToString(h.Sum(nil))
	}
	return t
}

func (r Request) sumName() string {
	if r.Sum == SumCRC32C {
		return "CRC-32C"
	}
	return "SHA-256"
}

const (
	kindRequest = 'R'
	kindData    = 'D'
	kindEnd     = 'E'
)

// codecName is the gRPC content-subtype ("application/grpc+ringtune-bulk").
const codecName = "ringtune-bulk"

func init() { encoding.RegisterCodecV2(codec{}) }

type codec struct{}

func (codec) Name() string { return codecName }

// frame is one message. On send, payload (when set) is a pooled buffer that
// gRPC frees once written, so a sent chunk is never copied again. On
// receive, a data message keeps the buffers gRPC read it into (data, kind
// byte included, referenced until release or until a FileSink has written
// them): its bytes are hashed and written from there, never copied into
// one piece by the codec. Other messages are copied into body, which lies
// in buf, a buffer of the bulk pool.
type frame struct {
	kind    byte
	body    []byte
	payload mem.Buffer
	buf     *[]byte
	data    mem.BufferSlice
}

// release returns a received frame's buffers to their pools.
func (f *frame) release() {
	if f.buf != nil {
		pool.Put(f.buf)
		f.buf, f.body = nil, nil
	}
	if f.data != nil {
		f.data.Free()
		f.data = nil
	}
}

// pieces calls fn on each piece of a received data message's bytes, in
// order, without the kind byte.
func (f *frame) pieces(fn func([]byte)) {
	skip := 1
	for _, b := range f.data {
		d := b.ReadOnlyData()
		if skip > 0 {
			k := min(skip, len(d))
			d, skip = d[k:], skip-k
		}
		if len(d) > 0 {
			fn(d)
		}
	}
}

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("bulk codec: cannot marshal %T", v)
	}
	head := append([]byte{f.kind}, f.body...)
	if f.payload == nil {
		return mem.BufferSlice{mem.SliceBuffer(head)}, nil
	}
	return mem.BufferSlice{mem.SliceBuffer(head), f.payload}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("bulk codec: cannot unmarshal into %T", v)
	}
	if data.Len() == 0 {
		return errors.New("bulk: empty message")
	}
	var kind byte
	for _, b := range data {
		if d := b.ReadOnlyData(); len(d) > 0 {
			kind = d[0]
			break
		}
	}
	if kind == kindData {
		// Keep gRPC's buffers (they return to the pool when released):
		// a data chunk is not copied here.
		data.Ref()
		f.kind, f.data = kind, data
		return nil
	}
	bp := pool.Get(data.Len())
	data.CopyTo(*bp)
	f.kind, f.body, f.buf = (*bp)[0], (*bp)[1:], bp
	return nil
}

func jsonFrame(kind byte, v any) (*frame, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &frame{kind: kind, body: b}, nil
}

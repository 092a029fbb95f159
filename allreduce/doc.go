// Package allreduce sums float32 buffers across the ranks of one generation
// with a ring all-reduce over gRPC. It is pure Go and needs no coordinator:
// a Config names the generation, this rank, every rank's address and the
// cluster key.
//
// # Algorithm
//
// The buffer is split into N segments (sizes differ by at most one element).
// Reduce-scatter: for N-1 steps each rank sends one segment to its right
// neighbour and adds the segment arriving from its left into its own buffer;
// afterwards rank r owns the complete sum of segment r+1. All-gather: for N-1
// more steps the owners' final bytes are forwarded and copied. Each rank sends
// and receives 2(N-1)/N of the buffer. Segments are cut into chunks
// (Config.ChunkBytes) and each chunk is forwarded as soon as it has been
// received and added, so sending, receiving and adding overlap.
//
// Every rank ends with bit-identical results: a segment's sum is formed in
// one place (along the ring, always in the same order) and the all-gather
// copies its owner's bytes. With BFloat16 the owner rounds its segment to
// bfloat16 before the all-gather, so it holds exactly what the others decode;
// see BFloat16ErrorBound for the accuracy.
//
// Reduce-scatter and all-gather also run alone (StartKind), leaving rank r
// the sum of its own slice (Slice); and any operation can run on a window
// of a larger virtual block (StartWindow): the block's segments, cut to the
// window. Reducing a block window by window (zero1's gradient buckets) then
// forms every element's sum on the same ranks in the same order as one
// operation on the whole block, so the slices come out bit-identical.
//
// # Transport
//
// Rank r opens one long-lived bidirectional gRPC stream
// (/ringtune.allreduce.Ring/Stream) to rank r+1 per generation and carries all
// operations on it. Data flows client→server; the server never sends a
// data message (with the TCP transport it sends one offer, below), but ends
// the stream with a status when its ring fails, so the
// failure reaches the sender at once. Messages use the "ringtune-raw" codec
// (content-type application/grpc+ringtune-raw), not protobuf: a 44-byte
// little-endian header (see header) followed by the raw payload. The first
// message is a hello (generation, sender rank, ring size, wire format); every
// data message names generation, operation sequence, phase, step, chunk,
// element count and a tag of its window, and the receiver rejects anything
// but the exact next message it expects, with an error that names both
// values. The header's version (2 since windows) must match exactly.
//
// With Config.Transport TCP or SHM (the default; see below) the
// stream carries only the hello, the receiver's reply (an "offer" naming the
// port of a data listener it opened for this link and generation) and the
// final status; the chunks, with the same 44-byte headers and the same
// checks, travel on a plain TCP connection from the sender to that port. Both
// ends authenticate it before the receiver reads any data: a challenge-
// response in which each side returns an HMAC, under a sub-key of the cluster
// key, over both sides' fresh nonces, the generation and both ranks (see
// tcp.go); anything else is closed unread and the receiver goes on waiting
// for its real neighbour. Chunks are written with one writev of header and
// payload straight from the caller's buffer; the all-gather reads straight
// into the destination and the reduce-scatter reads 256 KiB pieces into a
// scratch buffer that is added into it. This avoids gRPC's 16 KiB HTTP/2
// framing, its per-frame copies and buffer clearing, and on loopback roughly
// doubles bus bandwidth. The data connection is authenticated but not
// encrypted, even when TLS protects the gRPC streams; Transport GRPC
// encrypts the gradients as well.
//
// Transport SHM is TCP plus one step after the data handshake: the receiver
// offers a shared-memory segment (a 0600 file in /dev/shm with a random
// name, unlinked as soon as the sender has answered, so a kill -9 leaks
// nothing) and a sender on the same host maps it and proves it by the nonce
// the receiver wrote into it. Payloads then go through a ring of slots in
// the segment: the sender copies (or bfloat16-encodes) a chunk into the next
// slot and writes only its 44-byte header on the TCP connection; the
// receiver checks the header as before, adds or copies straight from the
// slot and returns it with a one-byte credit. This removes the kernel's two
// socket copies of every byte; the connection's blocking reads are the
// only wake-ups, and failures, deadlines and errors are those of TCP. A
// link whose ends cannot share memory (other hosts, no /dev/shm, a full one,
// another uid) carries payloads on TCP and says why through Config.Logf;
// Ring.SharedMemory reports what each link uses. See shm.go.
//
// With Transport GRPC, sending is zero-copy for float32: gRPC reads chunks straight from the
// caller's buffer and signals (through a mem.BufferPool) when it has written
// them, and an operation completes only after that, so the caller may reuse
// the buffer as soon as Wait returns. Receiving adds or copies gRPC's received
// buffers straight into the destination, without an intermediate message.
// Flow-control windows and I/O buffers are fixed and sized for throughput
// (see TransportServerOptions).
//
// # Failure
//
// Every operation has a deadline (Config.Timeout, or an earlier deadline of
// the context passed to Start). A dead peer breaks its streams and every rank
// fails within moments as the breakage propagates both ways round the ring; a
// stalled peer is caught by the deadline. A failed ring stays failed, all
// pending and later operations return its error, and the caller forms a new
// generation. Close stops everything the ring started.
//
// # Security
//
// Streams must carry a token derived from the cluster key (package auth); it
// is checked before the first message is read. TCP data connections are
// authenticated by the challenge-response above before any data is read. TLS is optional
// (Config.ServerTLS, Config.ClientTLS).
//
// # Hosting
//
// A ring serves its stream on its own gRPC server (listening on
// Peers[Rank] or Config.Listener), or attaches to a Server that the caller
// registered on an existing *grpc.Server built with ServerOptions; one Server
// hosts successive generations and refuses streams of generations older than
// the newest it has seen.
package allreduce

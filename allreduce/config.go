package allreduce

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"time"

	"github.com/ringtune/ringtune/auth"
)

// Defaults and limits of Config.
const (
	// DefaultChunkBytes: big enough that per-message costs (header, gRPC
	// framing, a channel wake-up) vanish next to the bytes moved, small
	// enough that a 16 MiB bucket split over 4 ranks still pipelines in
	// several chunks. Measured best on loopback at 1–4 MiB.
	DefaultChunkBytes = 1 << 20
	MinChunkBytes     = 4 << 10
	MaxChunkBytes     = 64 << 20
	// DefaultTimeout bounds one operation, from Start until every byte is in.
	DefaultTimeout = 30 * time.Second
)

// Config describes one rank of the ring of one generation. The zero value of
// every optional field selects its default.
type Config struct {
	// Generation numbers the ring (≥ 1). Messages of any other generation
	// are rejected, so a survivor of an old ring can never feed a new one.
	Generation uint64
	// Rank is this node's position in Peers.
	Rank int
	// Peers are the ring's addresses ("host:port") in rank order. Rank i
	// sends to rank i+1 and receives from rank i-1 (mod len(Peers)).
	// Peers[Rank] is where this rank listens unless Listener or Server is
	// set.
	Peers []string
	// Listener, if set, is served by the ring's own gRPC server instead of
	// listening on Peers[Rank]. Close closes it.
	Listener net.Listener
	// Server, if set, is a ring service already registered on the caller's
	// *grpc.Server (see NewServer); the ring attaches to it and serves
	// nothing itself. Mutually exclusive with Listener.
	Server *Server
	// ChunkBytes is the pipelining unit in bytes of float32 buffer (default
	// DefaultChunkBytes, between MinChunkBytes and MaxChunkBytes, multiple
	// of 4). With BFloat16 a chunk is half as many bytes on the wire.
	ChunkBytes int
	// Wire is the payload format on the wire (default Float32).
	Wire Wire
	// Timeout is the deadline of each operation, counted from Start
	// (default DefaultTimeout). A context deadline passed to Start that is
	// earlier wins.
	Timeout time.Duration
	// Key is the cluster key; every stream must carry a token derived from
	// it (see package auth).
	Key auth.Key
	// ServerTLS and ClientTLS optionally encrypt the ring's connections.
	// ServerTLS is used only by the ring's own server (not with Server).
	ServerTLS, ClientTLS *tls.Config
	// Transport is how chunk bytes travel between neighbours (default
	// SHM, which is TCP between hosts). With TLS, TCP still encrypts the ring's gRPC streams (ports,
	// status) but not the gradient bytes on its data connections, which are
	// authenticated by an HMAC handshake, as gloo and NCCL leave them; GRPC
	// encrypts the gradients too, at a measured cost in speed. All ranks of
	// a ring must use the same transport.
	Transport Transport
	// Logf receives one line whenever a link of Transport SHM carries its
	// payloads on TCP instead of shared memory, and why (default
	// log.Printf).
	Logf func(format string, args ...any)

	// shmDir is where SHM segments are created and opened (default
	// /dev/shm); tests point it elsewhere to force the fallback.
	shmDir string
}

// Transport selects the data path of a ring.
type Transport uint8

const (
	// DefaultTransport is SHM: TCP between hosts, shared memory between
	// neighbours on one host. On one host (2 cores, 2026-12-01) it moved
	// 1.6–2.2× the bytes per second of TCP payloads and 2.4–3.5× gloo's,
	// N = 2–4, 16–256 MiB (scripts/bench.sh allreduce).
	DefaultTransport Transport = 0
	// GRPC carries chunks on the authenticated gRPC stream itself. gRPC
	// cuts them into 16 KiB HTTP/2 frames and copies each into pooled
	// buffers, which costs about a third of the CPU on loopback.
	GRPC Transport = 1
	// TCP keeps the gRPC stream for the hello and failure signalling but
	// carries chunks on a plain TCP connection per neighbour, opened after
	// the gRPC handshake and authenticated by a challenge-response over the
	// cluster key before any data is read (see the package doc). Chunks are
	// written with writev straight from the caller's buffer and read
	// straight into the destination (all-gather) or a small scratch buffer
	// that is added into it (reduce-scatter).
	TCP Transport = 2
	// SHM is TCP, plus: neighbours on the same host pass the payloads
	// through a shared-memory segment instead of the TCP connection, which
	// then carries only headers and slot credits (see shm.go). Each byte
	// costs one copy in and one add or copy out instead of two more kernel
	// copies. A link whose neighbours cannot share memory (other hosts, no
	// /dev/shm, another uid) falls back to TCP payloads and says so
	// through Config.Logf.
	SHM Transport = 3
)

func (t Transport) String() string {
	switch t {
	case DefaultTransport:
		return "default"
	case GRPC:
		return "grpc"
	case TCP:
		return "tcp"
	case SHM:
		return "shm"
	}
	return fmt.Sprintf("transport(%d)", uint8(t))
}

// Resolved is the transport a ring configured with t uses: t itself, or
// for DefaultTransport the default (see Config.withDefaults).
func (t Transport) Resolved() Transport {
	c := Config{Transport: t}
	return c.withDefaults().Transport
}

// ParseTransport parses "tcp", "grpc", "shm" or "default" (as in flags and
// config files).
func ParseTransport(s string) (Transport, error) {
	switch s {
	case "tcp":
		return TCP, nil
	case "grpc":
		return GRPC, nil
	case "shm":
		return SHM, nil
	case "", "default":
		return DefaultTransport, nil
	}
	return 0, fmt.Errorf("allreduce: unknown transport %q; want tcp, grpc, shm or default", s)
}

// Validate reports the first problem with c, naming the field.
func (c *Config) Validate() error {
	if c.Generation == 0 {
		return errors.New("allreduce: Config.Generation is 0; generations start at 1")
	}
	if len(c.Peers) == 0 {
		return errors.New("allreduce: Config.Peers is empty; list every rank's address in ring order")
	}
	if c.Rank < 0 || c.Rank >= len(c.Peers) {
		return fmt.Errorf("allreduce: Config.Rank is %d but Peers has %d entries (ranks 0..%d)", c.Rank, len(c.Peers), len(c.Peers)-1)
	}
	seen := make(map[string]int, len(c.Peers))
	for i, p := range c.Peers {
		if len(c.Peers) == 1 {
			break // a ring of one never talks to anyone
		}
		if _, _, err := net.SplitHostPort(p); err != nil {
			return fmt.Errorf("allreduce: Config.Peers[%d] = %q is not host:port: %w", i, p, err)
		}
		if j, dup := seen[p]; dup {
			return fmt.Errorf("allreduce: Config.Peers[%d] and Peers[%d] are both %q; every rank needs its own address", j, i, p)
		}
		seen[p] = i
	}
	if c.ChunkBytes != 0 && (c.ChunkBytes < MinChunkBytes || c.ChunkBytes > MaxChunkBytes || c.ChunkBytes%4 != 0) {
		return fmt.Errorf("allreduce: Config.ChunkBytes is %d; want a multiple of 4 between %d and %d (0 = %d)", c.ChunkBytes, MinChunkBytes, MaxChunkBytes, DefaultChunkBytes)
	}
	if c.Wire != Float32 && c.Wire != BFloat16 {
		return fmt.Errorf("allreduce: Config.Wire is %v; want Float32 or BFloat16", c.Wire)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("allreduce: Config.Timeout is %v; want > 0 (0 = %v)", c.Timeout, DefaultTimeout)
	}
	if c.Transport > SHM {
		return fmt.Errorf("allreduce: Config.Transport is %v; want TCP, GRPC, SHM or DefaultTransport", c.Transport)
	}
	if err := c.Key.Validate(); err != nil {
		return fmt.Errorf("allreduce: Config.Key: %w", err)
	}
	if c.Listener != nil && c.Server != nil {
		return errors.New("allreduce: set Config.Listener or Config.Server, not both")
	}
	if c.Server != nil && string(c.Server.key) != string(c.Key) {
		return errors.New("allreduce: Config.Server was created with a different key than Config.Key")
	}
	if c.Server != nil && c.ServerTLS != nil {
		return errors.New("allreduce: Config.ServerTLS has no effect with Config.Server; configure TLS on that gRPC server")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.ChunkBytes == 0 {
		c.ChunkBytes = DefaultChunkBytes
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Transport == DefaultTransport {
		c.Transport = SHM
	}
	if c.Logf == nil {
		c.Logf = log.Printf
	}
	return c
}

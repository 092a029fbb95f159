package allreduce

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/ringtune/ringtune/auth"
)

// The TCP data path (Transport TCP). The receiving rank listens on an
// ephemeral port of its own host and offers it over the authenticated gRPC
// stream; the sending rank connects and both run a challenge-response
// handshake before any data byte is read:
//
//	sender → receiver  hello: "RTDP", version, generation, from, to, nonce_s (32)
//	receiver → sender  nonce_r (32), MAC("receiver" | gen | from | to | nonce_s | nonce_r)
//	sender → receiver  MAC("sender" | gen | from | to | nonce_s | nonce_r)
//	receiver → sender  1 byte: accepted
//
// MACs are auth.Key.Proof under dataPurpose (the challenge-response primitive
// shared with the control session). Each side proves
// it holds the cluster key over a nonce the other side just chose, so a
// recorded handshake cannot be replayed, and the proof binds the generation
// and both ranks, so it is valid for exactly this link of this ring. The
// distinct role labels stop a proof being reflected back. The receiver closes
// any connection that fails, without reading further, and keeps waiting for
// the real neighbour. The data itself is not encrypted, even with TLS on the
// gRPC streams: choose Transport GRPC to encrypt gradients too.

const (
	dataPurpose  = "ringtune allreduce tcp data v1"
	dataMagic    = 0x50445452 // "RTDP" little-endian
	dataVersion  = 1
	dataHelloLen = 4 + 1 + 3 + 8 + 4 + 4 + nonceLen
	nonceLen     = auth.NonceSize
	macLen       = auth.ProofSize
	dataAccepted = 0x01
	// handshakeTimeout bounds one handshake, so that a connection that
	// stalls halfway cannot hold a goroutine; it is not a deadline of any
	// operation.
	handshakeTimeout = 10 * time.Second
	// recvPiece is how much of a reduce-scatter chunk is read before it is
	// added: small enough that the scratch buffer stays in L2 between the
	// kernel's copy and the add, large enough that syscalls are few.
	recvPiece = 256 << 10
	// statusWait is how long a failed write waits for the right
	// neighbour's gRPC status, which usually says why it hung up.
	statusWait = time.Second
)

// dataMAC is role's proof for one data connection (auth.Key.Proof), bound
// to the generation and both ranks.
func dataMAC(key auth.Key, role string, gen uint64, from, to uint32, sn, rn []byte) []byte {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], gen)
	binary.LittleEndian.PutUint32(b[8:], from)
	binary.LittleEndian.PutUint32(b[12:], to)
	return key.Proof(dataPurpose, role, b[:], sn, rn)
}

// dataHello is the first message of a data connection.
type dataHello struct {
	gen      uint64
	from, to uint32
	nonce    [nonceLen]byte
}

func (h *dataHello) encode() []byte {
	b := make([]byte, dataHelloLen)
	binary.LittleEndian.PutUint32(b[0:], dataMagic)
	b[4] = dataVersion
	binary.LittleEndian.PutUint64(b[8:], h.gen)
	binary.LittleEndian.PutUint32(b[16:], h.from)
	binary.LittleEndian.PutUint32(b[20:], h.to)
	copy(b[24:], h.nonce[:])
	return b
}

func decodeDataHello(b []byte) (dataHello, error) {
	var h dataHello
	if m := binary.LittleEndian.Uint32(b); m != dataMagic {
		return h, fmt.Errorf("bad magic %#x (not a ringtune data connection)", m)
	}
	if b[4] != dataVersion {
		return h, fmt.Errorf("data protocol version %d, this build speaks %d", b[4], dataVersion)
	}
	h.gen = binary.LittleEndian.Uint64(b[8:])
	h.from = binary.LittleEndian.Uint32(b[16:])
	h.to = binary.LittleEndian.Uint32(b[20:])
	copy(h.nonce[:], b[24:])
	return h, nil
}

// clientHandshake runs the sender's side on conn: rank from of generation gen
// connects to rank to. It returns once the receiver has accepted.
func clientHandshake(conn net.Conn, key auth.Key, gen uint64, from, to int) error {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer conn.SetDeadline(time.Time{})
	h := dataHello{gen: gen, from: uint32(from), to: uint32(to)}
	if _, err := rand.Read(h.nonce[:]); err != nil {
		return fmt.Errorf("handshake nonce: %w", err)
	}
	if _, err := conn.Write(h.encode()); err != nil {
		return fmt.Errorf("sending handshake: %w", err)
	}
	var resp [nonceLen + macLen]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil {
		return fmt.Errorf("reading the receiver's proof: %w (it refused generation %d, rank %d → %d)", err, gen, from, to)
	}
	rn := resp[:nonceLen]
	if !hmac.Equal(resp[nonceLen:], dataMAC(key, "receiver", gen, h.from, h.to, h.nonce[:], rn)) {
		return fmt.Errorf("the receiver's proof does not match: it holds a different cluster key or is not rank %d of generation %d", to, gen)
	}
	if _, err := conn.Write(dataMAC(key, "sender", gen, h.from, h.to, h.nonce[:], rn)); err != nil {
		return fmt.Errorf("sending proof: %w", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(conn, ack[:]); err != nil || ack[0] != dataAccepted {
		return fmt.Errorf("the receiver refused this rank's proof of the cluster key (check that both use the same key): %v", err)
	}
	return nil
}

// serverHandshake runs the receiver's side on conn for rank self of
// generation gen, accepting only rank left. Nothing but the handshake is read
// before it succeeds.
func serverHandshake(conn net.Conn, key auth.Key, gen uint64, left, self int) error {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer conn.SetDeadline(time.Time{})
	var hb [dataHelloLen]byte
	if _, err := io.ReadFull(conn, hb[:]); err != nil {
		return fmt.Errorf("reading handshake: %w", err)
	}
	h, err := decodeDataHello(hb[:])
	if err != nil {
		return err
	}
	switch {
	case h.gen != gen:
		return fmt.Errorf("handshake for generation %d rejected: this ring is generation %d", h.gen, gen)
	case int(h.from) != left || int(h.to) != self:
		return fmt.Errorf("handshake from rank %d to rank %d rejected: rank %d accepts data only from its left neighbour rank %d", h.from, h.to, self, left)
	}
	var resp [nonceLen + macLen]byte
	rn := resp[:nonceLen]
	if _, err := rand.Read(rn); err != nil {
		return fmt.Errorf("handshake nonce: %w", err)
	}
	copy(resp[nonceLen:], dataMAC(key, "receiver", gen, h.from, h.to, h.nonce[:], rn))
	if _, err := conn.Write(resp[:]); err != nil {
		return fmt.Errorf("sending proof: %w", err)
	}
	var proof [macLen]byte
	if _, err := io.ReadFull(conn, proof[:]); err != nil {
		return fmt.Errorf("rank %d sent no proof of the cluster key: %w", h.from, err)
	}
	if !hmac.Equal(proof[:], dataMAC(key, "sender", gen, h.from, h.to, h.nonce[:], rn)) {
		return fmt.Errorf("proof from rank %d does not match: a different cluster key, or a replayed handshake", h.from)
	}
	if _, err := conn.Write([]byte{dataAccepted}); err != nil {
		return fmt.Errorf("accepting: %w", err)
	}
	return nil
}

// dataHost is the host part of this rank's address, where its data listener
// goes (so it is reachable wherever the gRPC address is).
func dataHost(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return host
}

// acceptData waits on lis for the left neighbour's authenticated data
// connection. Connections that fail the handshake are closed and the wait
// goes on, so a stray or hostile client cannot break the ring; the ring's
// own deadline or Close ends the wait.
func (r *Ring) acceptData(lis net.Listener) (*net.TCPConn, error) {
	defer lis.Close()
	stop := context.AfterFunc(r.ctx, func() { lis.Close() })
	defer stop()
	ctx, cancel := context.WithCancel(r.ctx)
	var hs sync.WaitGroup
	defer hs.Wait()
	defer cancel()
	won := make(chan *net.TCPConn, 1)
	for {
		c, err := lis.Accept()
		if err != nil {
			select {
			case conn := <-won:
				return conn, nil
			default:
			}
			if err := r.Err(); err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("allreduce: %s: accepting the data connection of left neighbour %s: %w", r.who(), r.peer(r.left), err)
		}
		conn := c.(*net.TCPConn)
		hs.Go(func() {
			unblock := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
			err := serverHandshake(conn, r.cfg.Key, r.cfg.Generation, r.left, r.cfg.Rank)
			if !unblock() || err != nil {
				conn.Close()
				return
			}
			select {
			case won <- conn:
				cancel()
				lis.Close()
			default:
				conn.Close()
			}
		})
	}
}

// dialData connects to the right neighbour's data listener (port from its
// offer) and authenticates.
func (r *Ring) dialData(offer header) (*net.TCPConn, error) {
	if offer.Gen != r.cfg.Generation || int(offer.From) != r.right {
		return nil, fmt.Errorf("allreduce: %s: data offer from rank %d of generation %d, want right neighbour %s of generation %d",
			r.who(), offer.From, offer.Gen, r.peer(r.right), r.cfg.Generation)
	}
	addr := net.JoinHostPort(dataHost(r.cfg.Peers[r.right]), strconv.Itoa(int(offer.Chunk)))
	d := net.Dialer{Timeout: handshakeTimeout}
	c, err := d.DialContext(r.ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("allreduce: %s: data connection to right neighbour %s at %s: %w", r.who(), r.peer(r.right), addr, err)
	}
	conn := c.(*net.TCPConn)
	stop := context.AfterFunc(r.ctx, func() { conn.Close() })
	err = clientHandshake(conn, r.cfg.Key, r.cfg.Generation, r.cfg.Rank, r.right)
	if !stop() || err != nil {
		conn.Close()
		if err == nil {
			err = r.Err()
		}
		return nil, fmt.Errorf("allreduce: %s: data connection to right neighbour %s at %s: %w", r.who(), r.peer(r.right), addr, err)
	}
	return conn, nil
}

// tcpSender writes chunks to the data connection: one writev of header and
// payload, the payload straight from the caller's buffer, so the only copy
// is the kernel's. The write returns once the kernel holds the bytes, so the
// caller's buffer is free for that chunk at once.
type tcpSender struct {
	conn    *net.TCPConn
	hdr     [headerLen]byte
	vec     [2][]byte
	scratch []byte // bfloat16 encoding
}

func (s *tcpSender) send(op *Op, h *header, a, b int) error {
	h.encode(s.hdr[:])
	var payload []byte
	if h.Wire == BFloat16 {
		n := 2 * (b - a)
		if cap(s.scratch) < n {
			s.scratch = make([]byte, n)
		}
		payload = s.scratch[:n]
		encodeBF16(payload, op.buf[a:b])
	} else {
		payload = f32bytes(op.buf[a:b])
	}
	s.vec = [2][]byte{s.hdr[:], payload}
	bufs := net.Buffers(s.vec[:])
	if _, err := bufs.WriteTo(s.conn); err != nil {
		return err
	}
	op.partDone()
	return nil
}

// recvLoopTCP reads the left neighbour's data connection for the ring's
// lifetime, with the same checks as the gRPC path: every header must be
// exactly the next one expected.
func (r *Ring) recvLoopTCP(conn *net.TCPConn) error {
	cr := recvCursor{r: r}
	var hb [headerLen]byte
	var scratch []byte
	for {
		h, dst, stop, err := cr.readHeader(conn, &hb)
		if stop {
			return err
		}
		add := h.Phase == ReduceScatter
		if h.Wire == Float32 && !add {
			// All-gather: the bytes are final, read them into place.
			_, err = io.ReadFull(conn, f32bytes(dst))
		} else {
			if scratch == nil {
				scratch = make([]byte, recvPiece)
			}
			sk := sink{dst: dst, wire: h.Wire, add: add}
			for left := len(dst) * h.Wire.elemSize(); left > 0; {
				k := min(left, len(scratch))
				if _, err = io.ReadFull(conn, scratch[:k]); err != nil {
					break
				}
				sk.write(scratch[:k])
				left -= k
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the stream ended inside a message
			}
			return cr.end(err)
		}
		cr.applied(dst)
	}
}

package allreduce

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringtune/ringtune/auth"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// serve runs serverHandshake for rank 1 of generation 7 (left neighbour 0)
// on srv and closes srv when it fails, as acceptData does.
func serve(srv net.Conn, key auth.Key) <-chan error {
	errc := make(chan error, 1)
	go func() {
		err := serverHandshake(srv, key, 7, 0, 1)
		if err != nil {
			srv.Close()
		}
		errc <- err
	}()
	return errc
}

// expectClosed asserts that the server sent nothing more (in particular no
// acceptance byte) and closed the connection.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	b, err := io.ReadAll(c)
	if len(b) != 0 || err != nil {
		t.Fatalf("server sent %d more bytes (err %v), want a plain close", len(b), err)
	}
}

func TestDataHandshakeAccepts(t *testing.T) {
	c, s := tcpPair(t)
	errc := serve(s, testKey)
	if err := clientHandshake(c, testKey, 7, 0, 1); err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
	// The connection carries data afterwards, in both directions' sense:
	// nothing of the handshake is left unread.
	go c.Write([]byte("data"))
	var b [4]byte
	if _, err := io.ReadFull(s, b[:]); err != nil || string(b[:]) != "data" {
		t.Fatalf("read %q, %v after handshake", b, err)
	}
}

func TestDataHandshakeRejects(t *testing.T) {
	other, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	hello := func(gen uint64, from, to uint32) (dataHello, []byte) {
		h := dataHello{gen: gen, from: from, to: to}
		h.nonce[0] = 42
		return h, h.encode()
	}
	t.Run("wrong key", func(t *testing.T) {
		// The client holds another key: it refuses the server's proof,
		// and a proof made with its key is refused by the server.
		c, s := tcpPair(t)
		errc := serve(s, testKey)
		err := clientHandshake(c, other, 7, 0, 1)
		if err == nil || !strings.Contains(err.Error(), "different cluster key") {
			t.Fatalf("client: got %v, want a proof mismatch", err)
		}
		c.Close()
		if err := <-errc; err == nil {
			t.Fatal("server accepted a client that sent no valid proof")
		}

		c, s = tcpPair(t)
		errc = serve(s, testKey)
		h, b := hello(7, 0, 1)
		c.Write(b)
		var resp [nonceLen + macLen]byte
		if _, err := io.ReadFull(c, resp[:]); err != nil {
			t.Fatal(err)
		}
		c.Write(dataMAC(other, "sender", 7, 0, 1, h.nonce[:], resp[:nonceLen]))
		if err := <-errc; err == nil || !strings.Contains(err.Error(), "does not match") {
			t.Fatalf("server: got %v, want a proof mismatch", err)
		}
		expectClosed(t, c)
	})
	t.Run("missing proof", func(t *testing.T) {
		c, s := tcpPair(t)
		errc := serve(s, testKey)
		_, b := hello(7, 0, 1)
		c.Write(b)
		c.(*net.TCPConn).CloseWrite() // hello, then nothing
		if err := <-errc; err == nil || !strings.Contains(err.Error(), "sent no proof") {
			t.Fatalf("server: got %v, want 'sent no proof'", err)
		}
		io.CopyN(io.Discard, c, nonceLen+macLen)
		expectClosed(t, c)
	})
	t.Run("replayed proof", func(t *testing.T) {
		// A valid proof from one connection is worthless on another: the
		// server's fresh nonce differs.
		c1, s1 := tcpPair(t)
		errc1 := serve(s1, testKey)
		h, b := hello(7, 0, 1)
		c1.Write(b)
		var resp [nonceLen + macLen]byte
		if _, err := io.ReadFull(c1, resp[:]); err != nil {
			t.Fatal(err)
		}
		proof := dataMAC(testKey, "sender", 7, 0, 1, h.nonce[:], resp[:nonceLen])

		c2, s2 := tcpPair(t)
		errc2 := serve(s2, testKey)
		c2.Write(b) // same hello, same client nonce
		if _, err := io.ReadFull(c2, resp[:]); err != nil {
			t.Fatal(err)
		}
		c2.Write(proof)
		if err := <-errc2; err == nil || !strings.Contains(err.Error(), "replayed") {
			t.Fatalf("server: got %v, want the replay rejected", err)
		}
		expectClosed(t, c2)
		// The original connection still completes with its own proof.
		c1.Write(proof)
		if err := <-errc1; err != nil {
			t.Fatalf("original handshake failed: %v", err)
		}
	})
	for name, c := range map[string]struct {
		gen      uint64
		from, to uint32
		want     string
	}{
		"wrong generation": {6, 0, 1, "generation 6 rejected: this ring is generation 7"},
		"wrong sender":     {7, 2, 1, "from rank 2 to rank 1 rejected"},
		"wrong receiver":   {7, 0, 3, "from rank 0 to rank 3 rejected"},
	} {
		t.Run(name, func(t *testing.T) {
			// A peer of the wrong generation or link is refused before the
			// server proves anything or reads further.
			conn, s := tcpPair(t)
			errc := serve(s, testKey)
			_, b := hello(c.gen, c.from, c.to)
			conn.Write(b)
			if err := <-errc; err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("server: got %v, want %q", err, c.want)
			}
			expectClosed(t, conn)
		})
	}
	t.Run("not ringtune", func(t *testing.T) {
		conn, s := tcpPair(t)
		errc := serve(s, testKey)
		conn.Write(make([]byte, dataHelloLen))
		if err := <-errc; err == nil || !strings.Contains(err.Error(), "bad magic") {
			t.Fatalf("server: got %v, want bad magic", err)
		}
		expectClosed(t, conn)
	})
	t.Run("server without key", func(t *testing.T) {
		// A listener that cannot prove the key never receives data: the
		// client stops after the server's bad proof.
		conn, s := tcpPair(t)
		errc := serve(s, other)
		err := clientHandshake(conn, testKey, 7, 0, 1)
		if err == nil || !strings.Contains(err.Error(), "different cluster key") {
			t.Fatalf("client: got %v, want a proof mismatch", err)
		}
		conn.Close()
		<-errc
	})
}

// TestRingRefusesRogueDataConnections attacks a live ring's data listener
// with rejected handshakes; every attempt is closed without acceptance, and
// the real neighbour still gets through afterwards and is read.
func TestRingRefusesRogueDataConnections(t *testing.T) {
	ls, addrs := listeners(t, 2)
	ls[0].Close() // rank 0 is played by the test
	r, err := New(Config{Generation: 1, Rank: 1, Peers: addrs, Listener: ls[1], Key: testKey, Timeout: 10 * time.Second, Transport: TCP})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	op, err := r.Start(context.Background(), make([]float32, 8))
	if err != nil {
		t.Fatal(err)
	}
	s := rawStream(t, addrs[1], dialOptions(testKey, nil))
	send(t, s, header{Kind: kindHello, Gen: 1, From: 0, Step: 2, Chunk: uint32(TCP)}, nil)
	var in inMsg
	in.expect = kindOffer
	if err := s.RecvMsg(&in); err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(in.hdr.Chunk)))
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	other, _ := auth.GenerateKey()
	if err := clientHandshake(dial(), other, 1, 0, 1); err == nil {
		t.Fatal("handshake with the wrong key succeeded")
	}
	if err := clientHandshake(dial(), testKey, 2, 0, 1); err == nil {
		t.Fatal("handshake for the wrong generation succeeded")
	}
	c := dial()
	h := dataHello{gen: 1, from: 0, to: 1}
	c.Write(h.encode())
	c.(*net.TCPConn).CloseWrite()
	io.CopyN(io.Discard, c, nonceLen+macLen)
	expectClosed(t, c) // missing proof
	if r.Err() != nil {
		t.Fatalf("rogue connections broke the ring: %v", r.Err())
	}

	// The real neighbour: its first data message is read and checked.
	good := dial().(*net.TCPConn)
	if err := clientHandshake(good, testKey, 1, 0, 1); err != nil {
		t.Fatalf("real neighbour refused after rogue attempts: %v", err)
	}
	b := make([]byte, headerLen)
	(&header{Kind: kindData, Gen: 1, Seq: 3, Count: 4}).encode(b)
	good.Write(append(b, make([]byte, 16)...))
	if err := op.Wait(); err == nil || !strings.Contains(err.Error(), "operation 3") {
		t.Fatalf("got %v, want the data message read and rejected for its operation", err)
	}
}

// TestTransportMismatch: ranks configured with different transports fail
// with an error that names both, instead of hanging.
func TestTransportMismatch(t *testing.T) {
	ls, addrs := listeners(t, 2)
	rings := make([]*Ring, 2)
	for i, tr := range []Transport{TCP, GRPC} {
		r, err := New(Config{Generation: 1, Rank: i, Peers: addrs, Listener: ls[i], Key: testKey, Timeout: 5 * time.Second, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		rings[i] = r
	}
	defer closeAll(rings)
	errs := reduceAll(rings, [][]float32{make([]float32, 10), make([]float32, 10)})
	found := false
	for _, err := range errs {
		if err == nil {
			t.Fatal("a rank succeeded with mismatched transports")
		}
		found = found || (strings.Contains(err.Error(), "tcp") && strings.Contains(err.Error(), "grpc"))
	}
	if !found {
		t.Fatalf("no error names both transports: %v", errs)
	}
}

// TestDataConnectionBroken cuts the data connection under a running
// operation: both ranks fail (no hang), naming the neighbour. The cut races
// the operation: on a fast loopback an operation can finish between the
// moment rank 1 is seen receiving and the cut. An attempt in which a rank
// finished first proves nothing, so it is repeated with a bigger buffer.
func TestDataConnectionBroken(t *testing.T) {
	for attempt, n := 1, 4<<20; attempt <= 5; attempt, n = attempt+1, n*2 {
		errs := cutUnderOperation(t, n)
		if errs[0] == nil || errs[1] == nil {
			t.Logf("attempt %d: a rank finished %d floats before the cut; retrying bigger", attempt, n)
			continue
		}
		if !strings.Contains(errs[1].Error(), "rank 0") {
			t.Errorf("rank 1's error does not name its neighbour: %v", errs[1])
		}
		for i, err := range errs {
			if strings.Contains(err.Error(), "timed out") {
				t.Errorf("rank %d noticed the cut only by timeout: %v", i, err)
			}
		}
		return
	}
	t.Fatal("every attempt finished before the connection could be cut")
}

// cutUnderOperation runs one n-float operation on a fresh 2-rank TCP ring,
// makes rank 0 fail as if its socket died once rank 1 has received a chunk,
// and returns both ranks' results. Waiting on them is itself the no-hang
// check: each ring's timeout is far longer than the test's deadline.
func cutUnderOperation(t *testing.T, n int) []error {
	t.Helper()
	rings := newRings(t, TCP, 2, func(c *Config) { c.ChunkBytes = 64 << 10 })
	ops := make([]*Op, 2)
	for i, r := range rings {
		op, err := r.Start(context.Background(), make([]float32, n))
		if err != nil {
			t.Fatal(err)
		}
		ops[i] = op
	}
	for ops[1].recvd.Load() == 0 {
		select {
		case <-ops[1].Done():
			return []error{ops[0].Wait(), ops[1].Wait()}
		case <-time.After(time.Millisecond):
		}
	}
	rings[0].fail(errors.New("test: socket died"))
	return []error{ops[0].Wait(), ops[1].Wait()}
}

func TestTransportConfig(t *testing.T) {
	base := Config{Generation: 1, Rank: 0, Peers: []string{"127.0.0.1:1", "127.0.0.1:2"}, Key: testKey}
	if got := base.withDefaults().Transport; got != SHM {
		t.Errorf("default transport is %v, want shm", got)
	}
	withTLS := base
	withTLS.ClientTLS = new(tls.Config)
	if got := withTLS.withDefaults().Transport; got != SHM {
		t.Errorf("default transport with TLS is %v, want shm (TLS covers the gRPC streams; grpc encrypts gradients too)", got)
	}
	withTLS.Transport = TCP
	if err := withTLS.Validate(); err != nil {
		t.Errorf("TCP with TLS: %v", err)
	}
	for _, tr := range []Transport{TCP, GRPC, SHM} {
		c := base
		c.Transport = tr
		if err := c.Validate(); err != nil || c.Transport.Resolved() != tr {
			t.Errorf("Transport %v: %v (resolves to %v)", tr, err, c.Transport.Resolved())
		}
	}
	bad := base
	bad.Transport = 9
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "Transport") {
		t.Errorf("Transport 9: got %v", err)
	}
	for s, want := range map[string]Transport{"tcp": TCP, "grpc": GRPC, "shm": SHM, "default": DefaultTransport} {
		if got, err := ParseTransport(s); err != nil || got != want {
			t.Errorf("ParseTransport(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseTransport("udp"); err == nil {
		t.Error("ParseTransport accepted udp")
	}
}

package bulk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringtune/ringtune/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testKey(t *testing.T) auth.Key {
	t.Helper()
	k, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// serve starts a real gRPC server on loopback with the cluster's auth
// options and the bulk service, and returns its address.
func serve(t *testing.T, key auth.Key, src Source, timeout time.Duration) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(auth.ServerOptions(key, nil)...)
	s, err := NewServer(key, src, timeout)
	if err != nil {
		t.Fatal(err)
	}
	s.Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, key auth.Key) *grpc.ClientConn {
	t.Helper()
	cc, err := Dial(addr, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// blobs maps a request name to content.
func blobSource(blobs map[string][]byte) Source {
	return func(_ context.Context, r Request) (io.ReadCloser, error) {
		b, ok := blobs[r.Name]
		if !ok {
			return nil, fmt.Errorf("no file %q here", r.Name)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

func TestRoundTrip(t *testing.T) {
	key := testKey(t)
	rng := rand.New(rand.NewSource(1))
	blobs := map[string][]byte{"empty": {}, "one": {7}}
	for _, n := range []int{MinChunkBytes - 1, MinChunkBytes, 3*MinChunkBytes + 5, 5<<20 + 3} {
		b := make([]byte, n)
		rng.Read(b)
		blobs[fmt.Sprint(n)] = b
	}
	cc := dial(t, serve(t, key, blobSource(blobs), 0), key)
	for name, b := range blobs {
		for _, chunk := range []int{0, MinChunkBytes} {
			var got bytes.Buffer
			sum := sha256.Sum256(b)
			res, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: name, ChunkBytes: chunk}, &got, 10*time.Second, hex.EncodeToString(sum[:]))
			if err != nil {
				t.Fatalf("%s (chunk %d): %v", name, chunk, err)
			}
			if !bytes.Equal(got.Bytes(), b) || res.Bytes != int64(len(b)) || res.SHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("%s (chunk %d): got %d bytes (res %+v), want %d", name, chunk, got.Len(), res, len(b))
			}
		}
	}
	// A missing source is an error that names it.
	_, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "nope"}, io.Discard, 10*time.Second, "")
	if err == nil || !strings.Contains(err.Error(), `no file "nope" here`) {
		t.Fatalf("missing file: err = %v", err)
	}
}

// TestChunksBounded checks that the sender cuts the stream into chunks of
// the requested size: the receiver's writes are never larger.
func TestChunksBounded(t *testing.T) {
	key := testKey(t)
	b := bytes.Repeat([]byte("x"), 1<<20)
	cc := dial(t, serve(t, key, blobSource(map[string][]byte{"f": b}), 0), key)
	w := &maxWriter{}
	if _, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f", ChunkBytes: 64 << 10}, w, 10*time.Second, ""); err != nil {
		t.Fatal(err)
	}
	if w.max != 64<<10 || w.n != len(b) || w.writes != 16 {
		t.Fatalf("largest write %d, %d writes, %d bytes; want 65536, 16, %d", w.max, w.writes, w.n, len(b))
	}
}

type maxWriter struct{ n, max, writes int }

func (w *maxWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	w.max = max(w.max, len(p))
	w.writes++
	return len(p), nil
}

func TestExpectedHashMismatchRejected(t *testing.T) {
	key := testKey(t)
	cc := dial(t, serve(t, key, blobSource(map[string][]byte{"f": []byte("hello")}), 0), key)
	_, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f"}, io.Discard, 10*time.Second, strings.Repeat("0", 64))
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("err = %v, want ErrMismatch", err)
	}
}

// TestCorruptTransferRejected runs a faulty sender that speaks the wire
// protocol but whose trailer does not match the bytes it sent (as when data
// is corrupted in transit): the client must refuse the transfer.
func TestCorruptTransferRejected(t *testing.T) {
	key := testKey(t)
	for _, tc := range []struct {
		name  string
		trail trailer
	}{
		{"bad sum", trailer{Bytes: 5, SHA256: strings.Repeat("ab", 32)}},
		{"short", trailer{Bytes: 6, SHA256: func() string { s := sha256.Sum256([]byte("hello")); return hex.EncodeToString(s[:]) }()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := dial(t, serveHello(t, key, tc.trail), key)
			var got bytes.Buffer
			_, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f"}, &got, 10*time.Second, "")
			if !errors.Is(err, ErrMismatch) {
				t.Fatalf("err = %v, want ErrMismatch", err)
			}
		})
	}
}

// serveHello runs a faulty sender on loopback: it sends the bytes "hello"
// and then trail, whatever was asked; it returns the address.
func serveHello(t *testing.T, key auth.Key, trail trailer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(auth.ServerOptions(key, nil)...)
	gs.RegisterService(&serviceDesc, faulty(func(ss grpc.ServerStream) error {
		var in frame
		if err := ss.RecvMsg(&in); err != nil {
			return err
		}
		if err := ss.SendMsg(&frame{kind: kindData, body: []byte("hello")}); err != nil {
			return err
		}
		f, _ := jsonFrame(kindEnd, trail)
		return ss.SendMsg(f)
	}))
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

type faulty func(grpc.ServerStream) error

func (f faulty) get(ss grpc.ServerStream) error { return f(ss) }

// stallReader yields one chunk and then blocks until closed.
type stallReader struct {
	first  []byte
	closed chan struct{}
}

func (r *stallReader) Read(p []byte) (int, error) {
	if len(r.first) > 0 {
		n := copy(p, r.first)
		r.first = r.first[n:]
		return n, nil
	}
	<-r.closed
	return 0, errors.New("closed")
}

func (r *stallReader) Close() error {
	select {
	case <-r.closed:
	default:
		close(r.closed)
	}
	return nil
}

func TestStalledSenderHitsChunkDeadline(t *testing.T) {
	key := testKey(t)
	srcClosed := make(chan struct{})
	src := func(context.Context, Request) (io.ReadCloser, error) {
		return &stallReader{first: make([]byte, MinChunkBytes), closed: srcClosed}, nil
	}
	// The server's own watchdog is long: the client's fires first.
	cc := dial(t, serve(t, key, src, time.Minute), key)
	var got bytes.Buffer
	start := time.Now()
	_, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f", ChunkBytes: MinChunkBytes}, &got, 500*time.Millisecond, "")
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	if got.Len() != MinChunkBytes {
		t.Fatalf("received %d bytes before the stall, want the first chunk of %d", got.Len(), MinChunkBytes)
	}
	// The client's cancel reaches the server, which closes the source.
	select {
	case <-srcClosed:
	case <-time.After(30 * time.Second):
		t.Fatalf("source not closed 30s after the client gave up (%s)", time.Since(start))
	}
}

func TestServerWatchdogClosesStalledSource(t *testing.T) {
	key := testKey(t)
	srcClosed := make(chan struct{})
	src := func(context.Context, Request) (io.ReadCloser, error) {
		return &stallReader{closed: srcClosed}, nil
	}
	cc := dial(t, serve(t, key, src, 300*time.Millisecond), key)
	_, err := Fetch(context.Background(), cc, Request{Kind: KindState, Step: 3}, io.Discard, time.Minute, "")
	if status.Code(errors.Unwrap(err)) != codes.DeadlineExceeded && !strings.Contains(fmt.Sprint(err), "no progress") {
		t.Fatalf("err = %v, want the server's no-progress error", err)
	}
	<-srcClosed
}

func TestWrongKeyRefused(t *testing.T) {
	key := testKey(t)
	opened := false
	src := func(context.Context, Request) (io.ReadCloser, error) {
		opened = true
		return io.NopCloser(strings.NewReader("secret")), nil
	}
	addr := serve(t, key, src, 0)
	cc := dial(t, addr, testKey(t))
	_, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f"}, io.Discard, 10*time.Second, "")
	if status.Code(errors.Unwrap(err)) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
	if opened {
		t.Fatal("the source was opened for an unauthenticated caller")
	}
}

// TestHandlerChecksKey registers the service on a server WITHOUT the auth
// options: the handler's own check must still refuse a caller without a
// valid token.
func TestHandlerChecksKey(t *testing.T) {
	key := testKey(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	s, _ := NewServer(key, blobSource(map[string][]byte{"f": []byte("x")}), 0)
	s.Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); <-done }()
	cc := dial(t, lis.Addr().String(), testKey(t))
	_, err = Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f"}, io.Discard, 10*time.Second, "")
	if status.Code(errors.Unwrap(err)) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
}

func TestBadRequests(t *testing.T) {
	for _, r := range []Request{{Kind: "x"}, {Kind: KindModel}, {Kind: KindState, Step: -1}} {
		if _, err := Fetch(context.Background(), nil, r, io.Discard, 0, ""); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
}

package bulk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tempFile creates a file holding prefix, positioned at its end.
func tempFile(t *testing.T, prefix []byte) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	if _, err := f.Write(prefix); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestFetchIntoFileSink: a transfer lands byte for byte in the file after
// what it held, through the sink's goroutine (Fetch hands over its chunks),
// for chunk sizes below, at and above the sink's piece and a source
// larger than the sink's writeback interval.
func TestFetchIntoFileSink(t *testing.T) {
	key := testKey(t)
	rng := rand.New(rand.NewSource(2))
	blob := make([]byte, writebackEvery+3<<20+7)
	rng.Read(blob)
	cc := dial(t, serve(t, key, blobSource(map[string][]byte{"f": blob}), 0), key)
	sum := sha256.Sum256(blob)
	for _, chunk := range []int{MinChunkBytes, 0, 4 << 20} {
		f := tempFile(t, []byte("head"))
		sink, err := NewFileSink(f, 2)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f", ChunkBytes: chunk}, sink, 10*time.Second, hex.EncodeToString(sum[:]))
		if cerr := sink.Close(); err != nil || cerr != nil {
			t.Fatalf("chunk %d: fetch %v, close %v", chunk, err, cerr)
		}
		if res.Bytes != int64(len(blob)) || sink.Written() != res.Bytes {
			t.Fatalf("chunk %d: result %+v, sink wrote %d, want %d", chunk, res, sink.Written(), len(blob))
		}
		got, err := os.ReadFile(f.Name())
		if err != nil || !bytes.Equal(got, append([]byte("head"), blob...)) {
			t.Fatalf("chunk %d: file differs from the source (%d bytes, %v)", chunk, len(got), err)
		}
	}
}

// TestFileSinkWrites: plain writes of any size are gathered, written in
// order, and Close flushes the last partial piece.
func TestFileSinkWrites(t *testing.T) {
	f := tempFile(t, nil)
	sink, err := NewFileSink(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	rng := rand.New(rand.NewSource(3))
	for _, n := range []int{1, 0, 7, sinkPiece - 8, 1, sinkPiece + 1, 3*sinkPiece + 5, 2} {
		b := make([]byte, n)
		rng.Read(b)
		want.Write(b)
		if k, err := sink.Write(b); k != n || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", n, k, err)
		}
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := sink.Write([]byte("x")); !errors.Is(err, ErrSinkClosed) {
		t.Fatalf("Write after Close: %v, want ErrSinkClosed", err)
	}
	got, _ := os.ReadFile(f.Name())
	if !bytes.Equal(got, want.Bytes()) || sink.Written() != int64(want.Len()) {
		t.Fatalf("file holds %d bytes (sink says %d), want %d equal", len(got), sink.Written(), want.Len())
	}
}

// TestFileSinkWriteErrorSurfaces: a file that cannot be written (here
// opened read-only) fails the transfer at once, without deadlocking on a
// full queue, and the error names the file; the sink's goroutine ends
// (goleak in TestMain).
func TestFileSinkWriteErrorSurfaces(t *testing.T) {
	key := testKey(t)
	blob := bytes.Repeat([]byte("z"), 8<<20)
	cc := dial(t, serve(t, key, blobSource(map[string][]byte{"f": blob}), 0), key)
	path := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sink, err := NewFileSink(f, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, ferr := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f", ChunkBytes: MinChunkBytes}, sink, 10*time.Second, "")
	cerr := sink.Close()
	if ferr == nil || cerr == nil || !strings.Contains(cerr.Error(), path) || !strings.Contains(ferr.Error(), path) {
		t.Fatalf("fetch err %v, close err %v: want both to fail naming %s", ferr, cerr, path)
	}
	if sink.Err() == nil {
		t.Fatal("Err() is nil after a failed write")
	}
	if _, err := sink.Write([]byte("more")); err == nil {
		t.Fatal("Write after a failure succeeded")
	}
}

// TestFileSinkCancelMidTransfer: a transfer cancelled while the source
// stalls ends with the context's error; Close then returns no write error
// (what arrived was written) and the goroutines end.
func TestFileSinkCancelMidTransfer(t *testing.T) {
	key := testKey(t)
	srcClosed := make(chan struct{})
	src := func(context.Context, Request) (io.ReadCloser, error) {
		return &stallReader{first: make([]byte, 3*MinChunkBytes), closed: srcClosed}, nil
	}
	cc := dial(t, serve(t, key, src, time.Minute), key)
	f := tempFile(t, nil)
	sink, err := NewFileSink(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &notifyWriter{w: sink, after: 3 * MinChunkBytes, hit: cancel}
	_, ferr := Fetch(ctx, cc, Request{Kind: KindModel, Name: "f", ChunkBytes: MinChunkBytes}, w, time.Minute, "")
	cancel()
	if ferr == nil || !strings.Contains(ferr.Error(), "context canceled") {
		t.Fatalf("err = %v, want the cancellation", ferr)
	}
	if err := sink.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	<-srcClosed
}

// notifyWriter calls hit once after bytes have passed through it.
type notifyWriter struct {
	w     io.Writer
	n     int
	after int
	hit   func()
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n += n
	if w.n >= w.after && w.hit != nil {
		w.hit()
		w.hit = nil
	}
	return n, err
}

// TestCorruptTransferIntoSink: a mismatched trailer is still an error
// when the bytes went to a FileSink (the sink took them without a copy).
func TestCorruptTransferIntoSink(t *testing.T) {
	key := testKey(t)
	cc := dial(t, serveHello(t, key, trailer{Bytes: 5, SHA256: strings.Repeat("ab", 32)}), key)
	sink, err := NewFileSink(tempFile(t, nil), 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f"}, sink, 10*time.Second, "")
	if cerr := sink.Close(); cerr != nil || !errors.Is(err, ErrMismatch) {
		t.Fatalf("err = %v (close %v), want ErrMismatch", err, cerr)
	}
}

// TestChunkPool: buffers come back with the length asked and a power-of-two
// capacity of at least that; foreign buffers are not kept.
func TestChunkPool(t *testing.T) {
	p := &chunkPool{}
	for _, n := range []int{0, 1, 4096, 4097, 1 << 20, 1<<20 + 1, 32 << 20, 32<<20 + 1} {
		bp := p.Get(n)
		if len(*bp) != n || cap(*bp) < n {
			t.Fatalf("Get(%d): len %d cap %d", n, len(*bp), cap(*bp))
		}
		if n <= 32<<20 && cap(*bp)&(cap(*bp)-1) != 0 {
			t.Fatalf("Get(%d): capacity %d is not a power of two", n, cap(*bp))
		}
		p.Put(bp)
	}
	odd := make([]byte, 5000)
	p.Put(&odd) // not of the pool's classes: dropped, no panic
	if bp := p.Get(5000); cap(*bp) != 8192 {
		t.Fatalf("Get(5000) gave capacity %d, want 8192", cap(*bp))
	}
}

// TestCRC32CTransfer: a transfer checked with CRC-32C arrives whole, its
// Result carries the CRC-32C of the content (hash/crc32's Castagnoli) and,
// when the caller gives the SHA-256 it wants, the SHA-256 computed on the
// client alone; a wrong want is still a mismatch, and FetchHashed feeds
// the caller's hash every byte.
func TestCRC32CTransfer(t *testing.T) {
	key := testKey(t)
	rng := rand.New(rand.NewSource(4))
	blob := make([]byte, 3<<20+11)
	rng.Read(blob)
	cc := dial(t, serve(t, key, blobSource(map[string][]byte{"f": blob}), 0), key)
	req := Request{Kind: KindModel, Name: "f", ChunkBytes: 64 << 10, Sum: SumCRC32C}
	sum := sha256.Sum256(blob)
	crc := crc32.Checksum(blob, crc32.MakeTable(crc32.Castagnoli))
	wantCRC := hex.EncodeToString([]byte{byte(crc >> 24), byte(crc >> 16), byte(crc >> 8), byte(crc)})

	var got bytes.Buffer
	res, err := Fetch(context.Background(), cc, req, &got, 10*time.Second, "")
	if err != nil || !bytes.Equal(got.Bytes(), blob) || res.CRC32C != wantCRC || res.SHA256 != "" || res.Bytes != int64(len(blob)) {
		t.Fatalf("crc32c fetch: %+v, %v (content equal %v), want CRC %s", res, err, bytes.Equal(got.Bytes(), blob), wantCRC)
	}
	res, err = Fetch(context.Background(), cc, req, io.Discard, 10*time.Second, hex.EncodeToString(sum[:]))
	if err != nil || res.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("crc32c fetch with want: %+v, %v", res, err)
	}
	if _, err := Fetch(context.Background(), cc, req, io.Discard, 10*time.Second, strings.Repeat("0", 64)); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong want under crc32c: %v, want ErrMismatch", err)
	}
	h := sha256.New()
	f := tempFile(t, nil)
	sink, err := NewFileSink(f, 0)
	if err != nil {
		t.Fatal(err)
	}
	res, err = FetchHashed(context.Background(), cc, req, sink, 10*time.Second, h)
	if cerr := sink.Close(); err != nil || cerr != nil || !bytes.Equal(h.Sum(nil), sum[:]) || res.CRC32C != wantCRC {
		t.Fatalf("FetchHashed: %+v, %v, close %v, hash %x want %x", res, err, cerr, h.Sum(nil), sum)
	}
	if b, _ := os.ReadFile(f.Name()); !bytes.Equal(b, blob) {
		t.Fatal("FetchHashed into a sink: file differs")
	}
	if _, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f", Sum: "md5"}, io.Discard, 0, ""); err == nil || !strings.Contains(err.Error(), `"md5"`) {
		t.Fatalf("unknown checksum kind: %v", err)
	}
}

// TestCRC32CTrailerChecked: a sender whose CRC-32C does not match, or that
// sends a SHA-256 trailer when CRC-32C was asked for (a version that
// ignores Request.Sum), fails the transfer.
func TestCRC32CTrailerChecked(t *testing.T) {
	key := testKey(t)
	for _, tc := range []struct {
		name  string
		trail trailer
		want  string
	}{
		{"bad crc", trailer{Bytes: 5, CRC32C: "00000000"}, "CRC-32C"},
		{"old sender", trailer{Bytes: 5, SHA256: func() string { s := sha256.Sum256([]byte("hello")); return hex.EncodeToString(s[:]) }()}, "has no CRC-32C"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := dial(t, serveHello(t, key, tc.trail), key)
			_, err := Fetch(context.Background(), cc, Request{Kind: KindModel, Name: "f", Sum: SumCRC32C}, io.Discard, 10*time.Second, "")
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrMismatch saying %q", err, tc.want)
			}
		})
	}
}

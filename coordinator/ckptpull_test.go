package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
)

// ckptFiles lists dir's entries.
func ckptFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// stateClient serves src on a real bulk server on loopback and returns a
// client connection to it and the cluster key.
func stateClient(t *testing.T, src bulk.Source) (*grpc.ClientConn, auth.Key) {
	t.Helper()
	key, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	addr := serveBulk(t, key, src)
	cc, err := bulk.Dial(addr, key, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc, key
}

// TestPullCheckpoint: the checkpoint pulled from a real bulk server holds
// the state byte for byte, and its header's checksum, taken from the
// transfer (not recomputed by the writer), is the state's SHA-256, so
// VerifyCheckpoint accepts it.
func TestPullCheckpoint(t *testing.T) {
	state := benchState(700_000) // 8.4 MB: many chunks, a writeback
	c, _ := stateClient(t, func(_ context.Context, r bulk.Request) (io.ReadCloser, error) {
		if r.Kind != bulk.KindState || r.Step != 4 {
			t.Errorf("request %+v, want the state of step 4", r)
		}
		return io.NopCloser(bytes.NewReader(state)), nil
	})
	dir := t.TempDir()
	path, diskErr, err := pullCheckpoint(context.Background(), c, dir, 4, 9, nil, 2, 64<<10, 10*time.Second)
	if diskErr != nil || err != nil {
		t.Fatalf("pull: disk %v, transfer %v", diskErr, err)
	}
	ck, err := VerifyCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(state)
	if ck.Applied != 4 || ck.Seed != 9 || ck.Bytes != int64(len(state)) || ck.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("checkpoint %+v, want step 4, seed 9, %d bytes, sum %x", ck, len(state), sum)
	}
	rc, err := ck.OpenState()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, state) {
		t.Fatal("the checkpoint's state differs from the served state")
	}
	if names := ckptFiles(t, dir); !slices.Equal(names, []string{ckptName(4)}) {
		t.Fatalf("dir holds %v, want only %s", names, ckptName(4))
	}
}

// blockingSource yields first, tells that it did, then blocks until the
// transfer is closed.
type blockingSource struct {
	first  []byte
	served chan struct{}
	closed chan struct{}
}

func (s *blockingSource) Read(p []byte) (int, error) {
	if len(s.first) > 0 {
		n := copy(p, s.first)
		s.first = s.first[n:]
		if len(s.first) == 0 {
			close(s.served)
		}
		return n, nil
	}
	<-s.closed
	return 0, errors.New("closed")
}

func (s *blockingSource) Close() error {
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	return nil
}

// TestPullCheckpointCancelledMidWrite: a checkpoint pull cancelled after
// part of the state was written leaves no checkpoint and no temporary
// file, the older checkpoint stays the newest, the error is the transfer's
// (not a disk error: another replica may do), and no goroutine is left
// (goleak in TestMain).
func TestPullCheckpointCancelledMidWrite(t *testing.T) {
	dir := t.TempDir()
	old := control.EncodeState([]float32{1, 2}, []float32{3, 4, 5, 6}, 2)
	if _, err := WriteCheckpoint(dir, 2, 1, nil, old, 3); err != nil {
		t.Fatal(err)
	}
	src := &blockingSource{first: make([]byte, 3<<20), served: make(chan struct{}), closed: make(chan struct{})}
	c, _ := stateClient(t, func(context.Context, bulk.Request) (io.ReadCloser, error) { return src, nil })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-src.served
		time.Sleep(50 * time.Millisecond) // let the chunks reach the file
		cancel()
	}()
	_, diskErr, err := pullCheckpoint(ctx, c, dir, 5, 1, nil, 3, 1<<20, time.Minute)
	if diskErr != nil || err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("disk %v, transfer %v: want the cancellation as a transfer error", diskErr, err)
	}
	if names := ckptFiles(t, dir); !slices.Equal(names, []string{ckptName(2)}) {
		t.Fatalf("dir holds %v after a cancelled pull, want only %s", names, ckptName(2))
	}
	if ck, err := NewestCheckpoint(dir, nil); err != nil || ck.Applied != 2 {
		t.Fatalf("newest: %+v %v", ck, err)
	}
	<-src.closed
}

// TestPullCheckpointDiskErrorNamesFile: a write that fails midway (the
// file size limit, as a full disk would) is a disk error, not a transfer
// error, and names the file; nothing is left behind. Same for an export.
func TestPullCheckpointDiskErrorNamesFile(t *testing.T) {
	state := benchState(400_000) // 4.8 MB
	c, key := stateClient(t, func(_ context.Context, r bulk.Request) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(state)), nil
	})
	dir := t.TempDir()
	out := filepath.Join(t.TempDir(), "out")
	sum := sha256.Sum256(state)
	// RLIMIT_FSIZE: writes past 1 MiB fail with EFBIG (SIGXFSZ ignored).
	signal.Ignore(syscall.SIGXFSZ)
	defer signal.Reset(syscall.SIGXFSZ)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	small := lim
	small.Cur = 1 << 20
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small); err != nil {
		t.Skipf("cannot lower RLIMIT_FSIZE: %v", err)
	}
	_, diskErr, err := pullCheckpoint(context.Background(), c, dir, 3, 1, nil, 2, 256<<10, 10*time.Second)
	var exportDisk, exportErr error
	exportDisk, exportErr = pullDir(context.Background(), out, c.Target(), key, nil, 1,
		[]control.FileInfo{{Name: "model.safetensors", Size: int64(len(state)), SHA256: hex.EncodeToString(sum[:])}}, 256<<10, 10*time.Second)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, ckptName(3)+".tmp")
	if err != nil || diskErr == nil || !strings.Contains(diskErr.Error(), tmp) || !errors.Is(diskErr, syscall.EFBIG) {
		t.Fatalf("checkpoint: disk %v, transfer %v; want a disk error naming %s", diskErr, err, tmp)
	}
	if names := ckptFiles(t, dir); len(names) != 0 {
		t.Fatalf("dir holds %v after a failed write", names)
	}
	if exportErr != nil || exportDisk == nil || !strings.Contains(exportDisk.Error(), "model.safetensors") || !errors.Is(exportDisk, syscall.EFBIG) {
		t.Fatalf("export: disk %v, transfer %v; want a disk error naming model.safetensors", exportDisk, exportErr)
	}
	if names := ckptFiles(t, filepath.Dir(out)); len(names) != 0 {
		t.Fatalf("output parent holds %v after a failed export", names)
	}
}

// TestWriteCheckpointFetchedRejects: a transfer whose content does not
// match its checksum (reported after every byte reached the file) leaves
// no checkpoint, nor does a fill whose reported length differs from what
// it wrote.
func TestWriteCheckpointFetchedRejects(t *testing.T) {
	state := benchState(100_000)
	c, _ := stateClient(t, func(_ context.Context, r bulk.Request) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(state)), nil
	})
	dir := t.TempDir()
	if _, err := WriteCheckpoint(dir, 1, 1, nil, state, 3); err != nil {
		t.Fatal(err)
	}
	_, err := WriteCheckpointFetched(dir, 2, 1, nil, 3, func(w io.Writer) (bulk.Result, error) {
		return bulk.Fetch(context.Background(), c, bulk.Request{Kind: bulk.KindState, Step: 2}, w, 10*time.Second, strings.Repeat("0", 64))
	})
	if !errors.Is(err, bulk.ErrMismatch) {
		t.Fatalf("err = %v, want bulk.ErrMismatch", err)
	}
	_, err = WriteCheckpointFetched(dir, 3, 1, nil, 3, func(w io.Writer) (bulk.Result, error) {
		_, err := w.Write(state)
		sum := sha256.Sum256(state)
		return bulk.Result{Bytes: int64(len(state)) + 1, SHA256: hex.EncodeToString(sum[:])}, err
	})
	if err == nil || !strings.Contains(err.Error(), "reached the file") {
		t.Fatalf("err = %v, want the length mismatch", err)
	}
	var de *DiskError
	if errors.As(err, &de) {
		t.Fatalf("a length mismatch is reported as a disk error: %v", err)
	}
	if names := ckptFiles(t, dir); !slices.Equal(names, []string{ckptName(1)}) {
		t.Fatalf("dir holds %v, want only %s", names, ckptName(1))
	}
}

package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/auth"
	"github.com/ringtune/ringtune/bulk"
	"github.com/ringtune/ringtune/control"
)

// TestWriteCheckpointFromFailureLeavesNothing: a transfer that breaks
// mid-stream leaves no checkpoint and no temporary file, and the older
// checkpoints stay valid and newest.
func TestWriteCheckpointFromFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	st := control.EncodeState([]float32{1, 2, 3}, []float32{4, 5, 6}, 3)
	if _, err := WriteCheckpoint(dir, 5, 1, nil, st, 2); err != nil {
		t.Fatal(err)
	}
	broke := errors.New("source died")
	_, err := WriteCheckpointFrom(dir, 10, 1, nil, 2, func(w io.Writer) error {
		if _, err := w.Write(st[:10]); err != nil {
			return err
		}
		return broke
	})
	if !errors.Is(err, broke) {
		t.Fatalf("err = %v, want the fill's error", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != ckptName(5) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("files after a failed checkpoint: %v, want only %s", names, ckptName(5))
	}
	ck, err := NewestCheckpoint(dir, nil)
	if err != nil || ck.Applied != 5 {
		t.Fatalf("newest after failure: %+v %v", ck, err)
	}
	// A streamed checkpoint reads back byte for byte, and its state is
	// served from the file as written.
	if _, err := WriteCheckpointFrom(dir, 10, 1, nil, 2, func(w io.Writer) error {
		for i := range st { // byte by byte: the writer must not care
			if _, err := w.Write(st[i : i+1]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ck, err = NewestCheckpoint(dir, nil)
	if err != nil || ck.Applied != 10 || ck.Bytes != int64(len(st)) {
		t.Fatalf("newest: %+v %v", ck, err)
	}
	rc, err := ck.OpenState()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, st) {
		t.Fatal("checkpoint state differs from what was streamed in")
	}
}

// TestPullDir pulls an export from a real bulk server on loopback: files
// arrive 0644 in a 0755 directory, verified against their hashes; a file
// that fails mid-transfer or does not match its hash leaves the previous
// output directory as it was and no temporary directory behind.
func TestPullDir(t *testing.T) {
	key, _ := auth.GenerateKey()
	files := map[string][]byte{"config.json": []byte(`{"a":1}`), "model.safetensors": bytes.Repeat([]byte("w"), 300_000)}
	failing := ""
	src := func(_ context.Context, r bulk.Request) (io.ReadCloser, error) {
		b, ok := files[r.Name]
		if !ok {
			return nil, fmt.Errorf("no file %s", r.Name)
		}
		if r.Name == failing {
			return io.NopCloser(io.MultiReader(bytes.NewReader(b[:1000]), errReader{})), nil
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(auth.ServerOptions(key, nil)...)
	bs, _ := bulk.NewServer(key, src, 0)
	bs.Register(gs)
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); <-done }()

	var infos []control.FileInfo
	for name, b := range files {
		sum := sha256.Sum256(b)
		infos = append(infos, control.FileInfo{Name: name, Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:])})
	}
	parent := t.TempDir()
	out := filepath.Join(parent, "out")
	pull := func(infos []control.FileInfo) (error, error) {
		return pullDir(context.Background(), out, lis.Addr().String(), key, nil, 1, infos, 4096, 10*time.Second)
	}
	if diskErr, err := pull(infos); diskErr != nil || err != nil {
		t.Fatalf("pull: %v %v", diskErr, err)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("output dir: %v %v", st.Mode().Perm(), err)
	}
	for name, b := range files {
		p := filepath.Join(out, name)
		got, err := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if err != nil || !bytes.Equal(got, b) || fi.Mode().Perm() != 0o644 {
			t.Fatalf("%s: %d bytes, mode %v, %v", name, len(got), fi.Mode().Perm(), err)
		}
	}
	leftovers := func() {
		t.Helper()
		ents, _ := os.ReadDir(parent)
		if len(ents) != 1 || ents[0].Name() != "out" {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("after a failed export the parent holds %v, want only out", names)
		}
		if got, _ := os.ReadFile(filepath.Join(out, "config.json")); !bytes.Equal(got, files["config.json"]) {
			t.Fatal("a failed export changed the previous output")
		}
	}

	failing = "model.safetensors"
	if diskErr, err := pull(infos); diskErr != nil || err == nil || !strings.Contains(err.Error(), "source failed") {
		t.Fatalf("broken transfer: disk %v, err %v", diskErr, err)
	}
	leftovers()
	failing = ""
	bad := append([]control.FileInfo(nil), infos...)
	for i := range bad {
		bad[i].SHA256 = strings.Repeat("0", 64)
	}
	if diskErr, err := pull(bad); diskErr != nil || !errors.Is(err, bulk.ErrMismatch) {
		t.Fatalf("hash mismatch: disk %v, err %v", diskErr, err)
	}
	leftovers()
	if _, err := pull([]control.FileInfo{{Name: "../escape", SHA256: infos[0].SHA256}}); err == nil {
		t.Fatal("a file name with a path was accepted")
	}
	leftovers()
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk gone") }

package coordinator

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ringtune/ringtune/bulk"
)

// Checkpoint files are named step-NNNNNNNNN.ckpt in checkpoint.dir:
//
//	"RTCKPT1\n" | uint64 little-endian header length | header JSON | state
//
// where the header records the committed step count, the state's length and
// its SHA-256, and the state is control.EncodeState's layout of a rank's
// parameters and optimizer state. The coordinator writes the state as it
// streams in from a node (WriteCheckpointFrom), so the header is written
// last, padded with spaces to ckptHeaderPad bytes (JSON ignores them, and
// readers of the unpadded form read it unchanged). A file is written under a
// temporary name, synced and renamed, so a checkpoint is either complete or
// absent; a file whose length or checksum does not match is skipped on
// resume.
const ckptMagic = "RTCKPT1\n"

// ckptHeaderPad is the room reserved for the header JSON.
const ckptHeaderPad = 4096

type ckptHeader struct {
	Applied int    `json:"applied"`
	Bytes   int64  `json:"bytes"`
	SHA256  string `json:"sha256"`
	RunSeed int64  `json:"seed"`
	// Pin records the run the checkpoint belongs to (see RunPin); nil in
	// checkpoints of older coordinators.
	Pin *RunPin `json:"pin,omitempty"`
}

func ckptName(applied int) string { return fmt.Sprintf("step-%09d.ckpt", applied) }

// WriteCheckpoint writes state for applied committed steps into dir and
// deletes all but the newest keep checkpoints.
func WriteCheckpoint(dir string, applied int, seed int64, pin *RunPin, state []byte, keep int) (string, error) {
	return WriteCheckpointFrom(dir, applied, seed, pin, keep, func(w io.Writer) error {
		_, err := w.Write(state)
		return err
	})
}

// WriteCheckpointFrom writes the checkpoint of applied committed steps whose
// state fill writes into w (from a bulk transfer, in bounded pieces: memory
// stays O(piece) whatever the state's size). The file appears under its
// final name only once fill succeeded and the data is synced; on any error
// the temporary file is removed and no checkpoint is listed. Then all but
// the newest keep checkpoints are deleted.
//
// The state's SHA-256 for the header is computed here, as fill writes; a
// fill that verifies its bytes itself uses WriteCheckpointFetched, so that
// no byte is hashed twice.
func WriteCheckpointFrom(dir string, applied int, seed int64, pin *RunPin, keep int, fill func(w io.Writer) error) (string, error) {
	return WriteCheckpointFetched(dir, applied, seed, pin, keep, func(w io.Writer) (bulk.Result, error) {
		h := sha256.New()
		cw := &countWriter{w: io.MultiWriter(h, w)}
		err := fill(cw)
		return bulk.Result{Bytes: cw.n, SHA256: hex.EncodeToString(h.Sum(nil))}, err
	})
}

// WriteCheckpointFetched is WriteCheckpointFrom for a fill that hashes what
// it writes and returns its length and SHA-256 (a bulk transfer's: Fetch
// verified every byte against the sender's checksum as it arrived, and
// computed or checked the SHA-256). The header records that sum: the bytes
// are not hashed again here. The length that reached the file must equal
// the Result's.
//
// fill writes into a bulk.FileSink: the file is written on a goroutine of
// its own while fill receives and hashes the next chunks, and its
// writeback to the disk starts while the transfer goes on, so the final
// fsync is short.
//
// A local file-system error (the file or dir cannot be created or written,
// fsync fails) is a *DiskError naming the file; other errors are fill's.
func WriteCheckpointFetched(dir string, applied int, seed int64, pin *RunPin, keep int, fill func(w io.Writer) (bulk.Result, error)) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", &DiskError{fmt.Errorf("checkpoint.dir: %w", err)}
	}
	path := filepath.Join(dir, ckptName(applied))
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return "", &DiskError{fmt.Errorf("checkpoint.dir: %w", err)}
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	disk := func(err error) (string, error) {
		return "", &DiskError{fmt.Errorf("checkpoint %s: %w", tmp, err)}
	}
	prefix := make([]byte, len(ckptMagic)+8+ckptHeaderPad)
	copy(prefix, ckptMagic)
	if _, err := f.Write(prefix); err != nil {
		return disk(err)
	}
	sink, err := bulk.NewFileSink(f, 0)
	if err != nil {
		return disk(err)
	}
	res, fillErr := fill(sink)
	// Close waits for the sink's goroutine whatever happened; a write
	// error (already naming the file) explains a failed fill best.
	if err := sink.Close(); err != nil {
		return "", &DiskError{fmt.Errorf("checkpoint: %w", err)}
	}
	if fillErr != nil {
		return "", fillErr
	}
	if res.Bytes != sink.Written() {
		return "", fmt.Errorf("checkpoint %s: the state's source reported %d bytes, %d reached the file", tmp, res.Bytes, sink.Written())
	}
	hdr, err := json.Marshal(ckptHeader{Applied: applied, Bytes: res.Bytes, SHA256: res.SHA256, RunSeed: seed, Pin: pin})
	if err != nil {
		return "", err
	}
	if len(hdr) > ckptHeaderPad {
		return "", fmt.Errorf("checkpoint header of %d bytes exceeds %d", len(hdr), ckptHeaderPad)
	}
	binary.LittleEndian.PutUint64(prefix[len(ckptMagic):], ckptHeaderPad)
	copy(prefix[len(ckptMagic)+8:], hdr)
	for i := len(ckptMagic) + 8 + len(hdr); i < len(prefix); i++ {
		prefix[i] = ' '
	}
	if _, err := f.WriteAt(prefix, 0); err != nil {
		return disk(err)
	}
	if err := f.Sync(); err != nil {
		return disk(err)
	}
	if err := f.Close(); err != nil {
		return disk(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", &DiskError{fmt.Errorf("checkpoint.dir: %w", err)}
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	if keep > 0 {
		names, _ := listCheckpoints(dir)
		for len(names) > keep {
			_ = os.Remove(filepath.Join(dir, names[0]))
			names = names[1:]
		}
	}
	return path, nil
}

// DiskError is a local file-system error while writing a checkpoint or an
// export: retrying with another replica cannot help.
type DiskError struct{ Err error }

// Error is the underlying error's text (it names the file or dir).
func (e *DiskError) Error() string { return e.Err.Error() }

// Unwrap gives errors.Is/As the underlying error (an *os.PathError, say).
func (e *DiskError) Unwrap() error { return e.Err }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func listCheckpoints(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "step-") && strings.HasSuffix(e.Name(), ".ckpt") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names) // zero-padded: lexical order is step order
	return names, nil
}

// Checkpoint is a verified checkpoint file.
type Checkpoint struct {
	Path    string
	Applied int
	Bytes   int64  // state length
	SHA256  string // of the state, hex
	Seed    int64  // train.seed of the run that wrote it
	Pin     *RunPin
	offset  int64 // where the state starts in the file
}

// OpenState opens the checkpoint's state for reading (the caller closes
// it). An open file stays readable even if the checkpoint is pruned
// meanwhile.
func (ck *Checkpoint) OpenState() (io.ReadCloser, error) {
	f, err := os.Open(ck.Path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(ck.offset, io.SeekStart); err != nil {
		_ = f.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, ck.Bytes), f}, nil
}

// VerifyCheckpoint checks one checkpoint file by streaming it: magic,
// header, length and checksum. Memory stays O(buffer) whatever its size.
func VerifyCheckpoint(path string) (*Checkpoint, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var pre [len(ckptMagic) + 8]byte
	if _, err := io.ReadFull(f, pre[:]); err != nil || string(pre[:len(ckptMagic)]) != ckptMagic {
		return nil, fmt.Errorf("checkpoint %s: not a ringtune checkpoint (bad magic)", path)
	}
	n := binary.LittleEndian.Uint64(pre[len(ckptMagic):])
	if n > 1<<20 || int64(n) > st.Size()-int64(len(pre)) {
		return nil, fmt.Errorf("checkpoint %s: truncated header", path)
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(f, hb); err != nil {
		return nil, fmt.Errorf("checkpoint %s: truncated header", path)
	}
	var h ckptHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("checkpoint %s: header: %w", path, err)
	}
	off := int64(len(pre)) + int64(n)
	if got := st.Size() - off; got != h.Bytes {
		return nil, fmt.Errorf("checkpoint %s: state is %d bytes, header says %d (truncated)", path, got, h.Bytes)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, bufio.NewReaderSize(f, 1<<20)); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if hex.EncodeToString(sum.Sum(nil)) != h.SHA256 {
		return nil, fmt.Errorf("checkpoint %s: checksum mismatch (corrupt)", path)
	}
	return &Checkpoint{Path: path, Applied: h.Applied, Bytes: h.Bytes, SHA256: h.SHA256, Seed: h.RunSeed, Pin: h.Pin, offset: off}, nil
}

// ReadCheckpoint reads and verifies one checkpoint file whole (for tests
// and tools on small states; the coordinator streams, see VerifyCheckpoint).
func ReadCheckpoint(path string) (applied int, state []byte, err error) {
	ck, err := VerifyCheckpoint(path)
	if err != nil {
		return 0, nil, err
	}
	rc, err := ck.OpenState()
	if err != nil {
		return 0, nil, err
	}
	defer rc.Close()
	state, err = io.ReadAll(rc)
	return ck.Applied, state, err
}

// NewestCheckpoint returns the newest valid checkpoint in dir, skipping
// (and reporting through skipped) invalid ones, such as a temporary file
// left by a coordinator killed mid-write (never listed) or a truncated
// or corrupt file.
func NewestCheckpoint(dir string, skipped func(error)) (*Checkpoint, error) {
	names, err := listCheckpoints(dir)
	if err != nil {
		return nil, err
	}
	for i := len(names) - 1; i >= 0; i-- {
		ck, err := VerifyCheckpoint(filepath.Join(dir, names[i]))
		if err != nil {
			if skipped != nil {
				skipped(err)
			}
			continue
		}
		return ck, nil
	}
	return nil, fmt.Errorf("checkpoint.dir %s holds no valid checkpoint", dir)
}

// LatestCheckpoint is NewestCheckpoint with the state read whole (for tests
// and tools on small states).
func LatestCheckpoint(dir string, skipped func(error)) (path string, applied int, state []byte, err error) {
	ck, err := NewestCheckpoint(dir, skipped)
	if err != nil {
		return "", 0, nil, err
	}
	a, st, err := ReadCheckpoint(ck.Path)
	return ck.Path, a, st, err
}

func (c *Coordinator) loadCheckpoint() error {
	ck, err := NewestCheckpoint(c.cfg.Checkpoint.Dir, func(err error) { c.log.Warn("skipping invalid checkpoint", "err", err) })
	if err != nil {
		return badInput(fmt.Errorf("--resume: %w", err))
	}
	if err := c.checkPin(ck); err != nil {
		return err
	}
	if ck.Applied > c.total {
		return badInput(fmt.Errorf("--resume: checkpoint %s is at step %d, beyond the run's %d steps", ck.Path, ck.Applied, c.total))
	}
	c.applied, c.resumed, c.lastCkpt = ck.Applied, ck, ck.Path
	c.served.Store(ck)
	if ck.Pin != nil && ck.Pin.RunID != "" {
		// The same run: nodes still holding its state may keep it.
		c.job.RunID, c.pin.RunID = ck.Pin.RunID, ck.Pin.RunID
	}
	c.log.Info("resuming", "checkpoint", ck.Path, "applied", ck.Applied, "bytes", ck.Bytes)
	return nil
}

// resumeAdvice says what to do when the run cannot go on: which
// checkpoint to resume from, if any.
func (c *Coordinator) resumeAdvice() string {
	if c.lastCkpt == "" {
		return "no checkpoint was written in this run (set checkpoint.every to have some): start nodes and run the coordinator again to start over"
	}
	return fmt.Sprintf("the newest checkpoint is %s: start nodes and run `coordinator --resume` with the same config to continue from it", c.lastCkpt)
}

// bulkSource serves the coordinator's side of the bulk plane: model files by
// content hash, and the checkpoint --resume loaded or the run rolled back
// to. It runs on gRPC handler goroutines and reads only what New set up
// and never changes, and the served checkpoint (atomic).
func (c *Coordinator) bulkSource(_ context.Context, r bulk.Request) (io.ReadCloser, error) {
	switch r.Kind {
	case bulk.KindModel:
		p, ok := c.paths[r.Name]
		if !ok {
			return nil, fmt.Errorf("no model file with SHA-256 %s in model.path %s", r.Name, c.cfg.Model.Path)
		}
		return os.Open(p)
	case bulk.KindCheckpoint:
		ck := c.served.Load()
		if ck == nil || ck.Applied != r.Step {
			return nil, fmt.Errorf("the coordinator serves only the checkpoint it resumed or rolled back to, not step %d", r.Step)
		}
		return ck.OpenState()
	}
	return nil, fmt.Errorf("the coordinator serves model files and its checkpoint, not %q", r.Kind)
}

// hashFile is the SHA-256 (hex) and size of a file, read streaming.
func hashFile(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Checkpoint files are named step-NNNNNNNNN.ckpt in checkpoint.dir:
//
//	"RTCKPT1\n" | uint64 little-endian header length | header JSON | state
//
// where the header records the committed step count, the state's length and
// its SHA-256, and the state is control.EncodeState's layout of rank 0's
// parameters and optimizer state. A file is written under a temporary name,
// synced and renamed, so a checkpoint is either complete or absent; a file
// whose checksum does not match is skipped on resume.
const ckptMagic = "RTCKPT1\n"

type ckptHeader struct {
	Applied int     `json:"applied"`
	Bytes   int64   `json:"bytes"`
	SHA256  string  `json:"sha256"`
	RunSeed int64   `json:"seed"`
	Pin     *RunPin `json:"pin,omitempty"` // nil in checkpoints of older coordinators
}

func ckptName(applied int) string { return fmt.Sprintf("step-%09d.ckpt", applied) }

// WriteCheckpoint writes state for applied committed steps into dir and
// deletes all but the newest keep checkpoints.
func WriteCheckpoint(dir string, applied int, seed int64, pin *RunPin, state []byte, keep int) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint.dir: %w", err)
	}
	sum := sha256.Sum256(state)
	hdr, err := json.Marshal(ckptHeader{Applied: applied, Bytes: int64(len(state)), SHA256: hex.EncodeToString(sum[:]), RunSeed: seed, Pin: pin})
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	buf.WriteString(ckptMagic)
	_ = binary.Write(&buf, binary.LittleEndian, uint64(len(hdr)))
	buf.Write(hdr)
	buf.Write(state)
	path := filepath.Join(dir, ckptName(applied))
	tmp := path + ".tmp"
	if err := writeFileSync(tmp, buf.Bytes()); err != nil {
		return "", fmt.Errorf("checkpoint.dir: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("checkpoint.dir: %w", err)
	}
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

// ReadCheckpoint reads and verifies one checkpoint file.
func ReadCheckpoint(path string) (applied int, state []byte, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, nil, err
	}
	if len(b) < len(ckptMagic)+8 || string(b[:len(ckptMagic)]) != ckptMagic {
		return 0, nil, fmt.Errorf("checkpoint %s: not a ringtune checkpoint (bad magic)", path)
	}
	n := binary.LittleEndian.Uint64(b[len(ckptMagic):])
	rest := b[len(ckptMagic)+8:]
	if n > uint64(len(rest)) {
		return 0, nil, fmt.Errorf("checkpoint %s: truncated header", path)
	}
	var h ckptHeader
	if err := json.Unmarshal(rest[:n], &h); err != nil {
		return 0, nil, fmt.Errorf("checkpoint %s: header: %w", path, err)
	}
	state = rest[n:]
	if int64(len(state)) != h.Bytes {
		return 0, nil, fmt.Errorf("checkpoint %s: state is %d bytes, header says %d (truncated)", path, len(state), h.Bytes)
	}
	if sum := sha256.Sum256(state); hex.EncodeToString(sum[:]) != h.SHA256 {
		return 0, nil, fmt.Errorf("checkpoint %s: checksum mismatch (corrupt)", path)
	}
	return h.Applied, state, nil
}

// LatestCheckpoint returns the newest valid checkpoint in dir, skipping
// (and reporting through skipped) invalid ones.
func LatestCheckpoint(dir string, skipped func(error)) (path string, applied int, state []byte, err error) {
	names, err := listCheckpoints(dir)
	if err != nil {
		return "", 0, nil, err
	}
	for i := len(names) - 1; i >= 0; i-- {
		p := filepath.Join(dir, names[i])
		a, st, err := ReadCheckpoint(p)
		if err != nil {
			if skipped != nil {
				skipped(err)
			}
			continue
		}
		return p, a, st, nil
	}
	return "", 0, nil, fmt.Errorf("checkpoint.dir %s holds no valid checkpoint", dir)
}

func (c *Coordinator) loadCheckpoint() error {
	p, applied, st, err := LatestCheckpoint(c.cfg.Checkpoint.Dir, func(err error) { c.log.Warn("skipping invalid checkpoint", "err", err) })
	if err != nil {
		return badInput(fmt.Errorf("--resume: %w", err))
	}
	if err := c.checkPin(p); err != nil {
		return err
	}
	if applied > c.total {
		return badInput(fmt.Errorf("--resume: checkpoint %s is at step %d, beyond the run's %d steps", p, applied, c.total))
	}
	c.applied, c.resumed = applied, st
	c.log.Info("resuming", "checkpoint", p, "applied", applied)
	return nil
}

// checkpoint streams rank 0's state and writes it.
func (c *Coordinator) checkpoint(ctx context.Context) error {
	if len(c.world) == 0 {
		return errors.New("checkpoint without a world")
	}
	st, err := c.fetchState(ctx, c.world[0])
	if err != nil {
		return err
	}
	p, err := WriteCheckpoint(c.cfg.Checkpoint.Dir, c.applied, c.cfg.Train.Seed, c.pin, st, c.cfg.Checkpoint.Keep)
	if err != nil {
		return err
	}
	c.log.Info("checkpoint written", "path", p, "applied", c.applied)
	return nil
}

package coordinator

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/data"
)

func testPin() *RunPin {
	return &RunPin{Data: strings.Repeat("a", 64), Examples: 96, Seed: 42, GlobalBatch: 8, Epochs: 2, Task: "classification",
		NumLabels: 2, Optimizer: "sgd", ModelConfig: strings.Repeat("b", 64), Params: 1000, Tokenizer: strings.Repeat("c", 64)}
}

// TestPinCompareNamesEveryKey changes every pinned value at once: Compare
// must name each key with both values, and nothing for an equal pin.
func TestPinCompareNamesEveryKey(t *testing.T) {
	old := testPin()
	if d := testPin().Compare(old); len(d) != 0 {
		t.Fatalf("equal pins differ: %v", d)
	}
	p := &RunPin{Data: strings.Repeat("d", 64), Examples: 97, Seed: 7, GlobalBatch: 6, DropLast: true, Epochs: 3, MaxSteps: 5,
		Task: "regression", NumLabels: 1, Optimizer: "adamw", ModelConfig: strings.Repeat("e", 64), Params: 2000, Tokenizer: strings.Repeat("f", 64)}
	diffs := p.Compare(old)
	if len(diffs) != len(pinKeys) {
		t.Errorf("%d differences, want one per pinned key (%d): %v", len(diffs), len(pinKeys), diffs)
	}
	for _, want := range []string{
		"data (the encoded data.train_file): checkpoint has 96 examples, sha256 aaaaaaaaaaaaaaaa, the run has 97 examples, sha256 dddddddddddddddd",
		"train.seed: checkpoint has 42, the run has 7",
		"train.global_batch: checkpoint has 8, the run has 6",
		"train.drop_last: checkpoint has false, the run has true",
		"train.epochs: checkpoint has 2, the run has 3",
		"train.max_steps: checkpoint has 0, the run has 5",
		"train.optimizer: checkpoint has sgd, the run has adamw",
		"model.task: checkpoint has classification, the run has regression",
		"model.num_labels: checkpoint has 2, the run has 1",
		"model config.json: checkpoint has sha256 bbbbbbbbbbbbbbbb, the run has sha256 eeeeeeeeeeeeeeee",
		"model parameters: checkpoint has 1000, the run has 2000",
		"data.tokenizer: checkpoint has sha256 cccccccccccccccc, the run has sha256 ffffffffffffffff",
	} {
		if !strings.Contains(strings.Join(diffs, "\n"), want) {
			t.Errorf("differences lack %q", want)
		}
	}
}

// TestHashEncodedSeesEveryField: the data hash changes with any id, type
// id, label or target, and with the order.
func TestHashEncodedSeesEveryField(t *testing.T) {
	base := []data.Encoded{{IDs: []int{1, 2}, TypeIDs: []int{0, 0}, Label: 1}, {IDs: []int{3}, TypeIDs: []int{0}, Target: 0.5}}
	h := hashEncoded(base)
	for i, edit := range []func(e []data.Encoded){
		func(e []data.Encoded) { e[0].IDs = []int{1, 3} },
		func(e []data.Encoded) { e[0].TypeIDs = []int{0, 1} },
		func(e []data.Encoded) { e[0].Label = 0 },
		func(e []data.Encoded) { e[1].Target = 0.25 },
		func(e []data.Encoded) { e[0], e[1] = e[1], e[0] },
		func(e []data.Encoded) { e[0].IDs = []int{1}; e[1].IDs = []int{2, 3} },
	} {
		e := []data.Encoded{base[0], base[1]}
		edit(e)
		if hashEncoded(e) == h {
			t.Errorf("edit %d left the data hash unchanged", i)
		}
	}
}

// TestCheckPin reads the pin back from a written checkpoint; a checkpoint
// without one (an older coordinator's) is accepted when its seed matches.
func TestCheckPin(t *testing.T) {
	dir := t.TempDir()
	c := &Coordinator{pin: testPin(), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p, err := WriteCheckpoint(dir, 3, 42, testPin(), []byte("state"), 0)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(p string) *Checkpoint {
		t.Helper()
		ck, err := VerifyCheckpoint(p)
		if err != nil {
			t.Fatal(err)
		}
		return ck
	}
	if err := c.checkPin(verify(p)); err != nil {
		t.Fatalf("same run refused: %v", err)
	}
	other := testPin()
	other.GlobalBatch = 16
	p, err = WriteCheckpoint(dir, 4, 42, other, []byte("state"), 0)
	if err != nil {
		t.Fatal(err)
	}
	err = c.checkPin(verify(p))
	if ExitCode(err) != ExitBadInput || !strings.Contains(fmt.Sprint(err), "train.global_batch: checkpoint has 16, the run has 8") || !strings.Contains(fmt.Sprint(err), p) {
		t.Fatalf("different batch: got %v (exit %d)", err, ExitCode(err))
	}
	// Older checkpoints: no pin.
	p, _ = WriteCheckpoint(dir, 5, 42, nil, []byte("state"), 0)
	if err := c.checkPin(verify(p)); err != nil {
		t.Fatalf("unpinned checkpoint with the same seed refused: %v", err)
	}
	p, _ = WriteCheckpoint(dir, 6, 41, nil, []byte("state"), 0)
	if err := c.checkPin(verify(p)); ExitCode(err) != ExitBadInput || !strings.Contains(err.Error(), "train.seed: checkpoint has 41, the run has 42") {
		t.Fatalf("unpinned checkpoint with another seed: got %v", err)
	}
	// A file that is not a checkpoint is never verified, so never pinned.
	bad := filepath.Join(dir, "step-000000007.ckpt")
	os.WriteFile(bad, []byte("nope"), 0o644)
	if _, err := VerifyCheckpoint(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("garbage checkpoint: got %v", err)
	}
}

// TestDirLock: a second lock on the same file fails naming the holder's
// pid and host and the directory; after release it succeeds.
func TestDirLock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, lockName)
	a, err := lockDir("checkpoint.dir", dir, path)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	_, err = lockDir("checkpoint.dir", dir, path)
	if err == nil {
		t.Fatal("second lock taken while the first is held")
	}
	for _, want := range []string{"checkpoint.dir: " + dir + " is in use by another coordinator", fmt.Sprintf("pid %d on host %s", os.Getpid(), host), path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	a.release()
	b, err := lockDir("checkpoint.dir", dir, path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	b.release()
	if got := outputLockPath("/runs/a/model"); got != "/runs/a/.model.ringtune.lock" {
		t.Errorf("output.dir lock at %s, want beside the directory", got)
	}
}

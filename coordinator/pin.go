package coordinator

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ringtune/ringtune/data"
)

// RunPin is what makes a run this run: the settings and inputs a checkpoint
// is only valid with. It is written into every checkpoint header, and
// --resume refuses a checkpoint whose pin differs from the configured run,
// naming each key: continuing on another dataset, seed or batch size would
// replay a different sample order against a ledger that believes it is the
// same, and another model would not even load the state. The world size and
// the tuning settings (learning rate, timeouts) are not pinned: they may
// change across a restart.
type RunPin struct {
	// Data is the SHA-256 of the encoded training set (token ids, type ids
	// and labels, in file order): it changes with the train file, its
	// format and fields, data.max_length and the tokenizer.
	Data string `json:"data"`
	// Examples is the number of training examples.
	Examples int `json:"examples"`
	// Seed, GlobalBatch, DropLast, Epochs and MaxSteps decide the sample
	// order and the step count.
	Seed        int64 `json:"seed"`
	GlobalBatch int   `json:"global_batch"`
	DropLast    bool  `json:"drop_last"`
	Epochs      int   `json:"epochs"`
	MaxSteps    int   `json:"max_steps"`
	// Task, NumLabels and Optimizer decide the head and the shape of the
	// optimizer state.
	Task      string `json:"task"`
	NumLabels int    `json:"num_labels"`
	Optimizer string `json:"optimizer"`
	// ModelConfig is the SHA-256 of the model directory's config.json.
	ModelConfig string `json:"model_config"`
	// Params is the number of parameters the config implies for the task
	// (hfspec's layout), as the nodes will build it.
	Params int64 `json:"params"`
	// Tokenizer is the SHA-256 of the tokenizer file(s) (vocab.json with
	// its merges.txt).
	Tokenizer string `json:"tokenizer"`
	// RunID names the run across coordinator restarts. It is not compared
	// on --resume (a resumed run is the same run and takes the
	// checkpoint's id); nodes that outlived the previous coordinator keep
	// their trainer state when the job they are sent has their run's id,
	// and set up afresh when it is another run's.
	RunID string `json:"run_id,omitempty"`
}

// pinKey is one pinned setting: the config key it comes from and how to
// show its value.
type pinKey struct {
	key string
	val func(p *RunPin) string
}

var pinKeys = []pinKey{
	{"data (the encoded data.train_file)", func(p *RunPin) string { return fmt.Sprintf("%d examples, sha256 %s", p.Examples, short(p.Data)) }},
	{"train.seed", func(p *RunPin) string { return fmt.Sprint(p.Seed) }},
	{"train.global_batch", func(p *RunPin) string { return fmt.Sprint(p.GlobalBatch) }},
	{"train.drop_last", func(p *RunPin) string { return fmt.Sprint(p.DropLast) }},
	{"train.epochs", func(p *RunPin) string { return fmt.Sprint(p.Epochs) }},
	{"train.max_steps", func(p *RunPin) string { return fmt.Sprint(p.MaxSteps) }},
	{"train.optimizer", func(p *RunPin) string { return p.Optimizer }},
	{"model.task", func(p *RunPin) string { return p.Task }},
	{"model.num_labels", func(p *RunPin) string { return fmt.Sprint(p.NumLabels) }},
	{"model config.json", func(p *RunPin) string { return "sha256 " + short(p.ModelConfig) }},
	{"model parameters", func(p *RunPin) string { return fmt.Sprint(p.Params) }},
	{"data.tokenizer", func(p *RunPin) string { return "sha256 " + short(p.Tokenizer) }},
}

func short(h string) string { return h[:min(len(h), 16)] }

// Compare lists every key whose value differs between the pin of a
// checkpoint (old) and that of the configured run (p), as
// "key: checkpoint has X, the run has Y".
func (p *RunPin) Compare(old *RunPin) []string {
	var diffs []string
	for _, k := range pinKeys {
		if a, b := k.val(old), k.val(p); a != b {
			diffs = append(diffs, fmt.Sprintf("%s: checkpoint has %s, the run has %s", k.key, a, b))
		}
	}
	return diffs
}

// hashEncoded hashes the encoded examples: what the nodes actually train on.
func hashEncoded(exs []data.Encoded) string {
	h := sha256.New()
	var b [8]byte
	put := func(v int64) {
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		h.Write(b[:])
	}
	for _, e := range exs {
		put(int64(len(e.IDs)))
		for _, id := range e.IDs {
			put(int64(id))
		}
		put(int64(len(e.TypeIDs)))
		for _, id := range e.TypeIDs {
			put(int64(id))
		}
		put(int64(e.Label))
		_ = binary.Write(h, binary.LittleEndian, e.Target)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hashFiles hashes the contents of files, in order.
func hashFiles(files ...string) (string, error) {
	h := sha256.New()
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, r)
		_ = r.Close()
		if err != nil {
			return "", fmt.Errorf("read %s: %w", f, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// tokenizerFiles are the files tok was read from; none for pre-tokenized
// data read without a tokenizer (the data hash pins the token ids).
func tokenizerFiles(tok *data.Tokenizer) []string {
	if tok == nil {
		return nil
	}
	p := tok.Path()
	if filepath.Base(p) == "vocab.json" {
		return []string{p, filepath.Join(filepath.Dir(p), "merges.txt")}
	}
	return []string{p}
}

// checkPin refuses to resume from the verified checkpoint ck when it was
// written by a run with other pinned settings. A checkpoint written before
// pins existed (no pin in its header) is accepted with a warning after
// checking what its header does record, the seed (and the step count, in
// loadCheckpoint): refusing it would strand runs started with an older
// coordinator.
func (c *Coordinator) checkPin(ck *Checkpoint) error {
	path := ck.Path
	if ck.Pin == nil {
		if ck.Seed != c.pin.Seed {
			return badInput(fmt.Errorf("--resume: checkpoint %s belongs to a different run:\n  train.seed: checkpoint has %d, the run has %d", path, ck.Seed, c.pin.Seed))
		}
		c.log.Warn("checkpoint has no run pin (written by an older coordinator): cannot check that the dataset, batch and model are unchanged", "checkpoint", path)
		return nil
	}
	if diffs := c.pin.Compare(ck.Pin); len(diffs) > 0 {
		return badInput(fmt.Errorf("--resume: checkpoint %s belongs to a different run:\n  %s\nresume with the settings it was written with, or start a new run without --resume (or with another checkpoint.dir)",
			path, strings.Join(diffs, "\n  ")))
	}
	return nil
}

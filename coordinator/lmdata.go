package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
)

// modelMeta is what data loading needs from the model's config.json,
// read here in pure Go because the coordinator does not link libtorch.
type modelMeta struct {
	Vocab    int // vocab_size; 0 when absent
	EOS, PAD int // eos_token_id, pad_token_id; -1 when absent
}

// readModelMeta reads vocab_size, eos_token_id and pad_token_id from
// dir/config.json. An id given as a list (several end tokens) counts by its
// first element.
func readModelMeta(dir string) (modelMeta, error) {
	m := modelMeta{EOS: -1, PAD: -1}
	p := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		return m, fmt.Errorf("model.path: %w", err)
	}
	var c struct {
		Vocab int `json:"vocab_size"`
		EOS   any `json:"eos_token_id"`
		PAD   any `json:"pad_token_id"`
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return m, fmt.Errorf("model.path: %s: %w", p, err)
	}
	id := func(key string, v any) (int, error) {
		if l, ok := v.([]any); ok && len(l) > 0 {
			v = l[0]
		}
		switch x := v.(type) {
		case nil:
			return -1, nil
		case float64:
			if x >= 0 && x == math.Trunc(x) {
				return int(x), nil
			}
		}
		return -1, fmt.Errorf("model.path: %s: %s %v is not a token id", p, key, v)
	}
	m.Vocab = c.Vocab
	if m.EOS, err = id("eos_token_id", c.EOS); err != nil {
		return m, err
	}
	if m.PAD, err = id("pad_token_id", c.PAD); err != nil {
		return m, err
	}
	return m, nil
}

// loadData reads, tokenizes and (with data.pack) packs the train and eval
// sets once; nodes get them as integer batches. Pre-tokenized data
// (data.format tokens_jsonl) needs no tokenizer when data.tokenizer is left
// to default to the model directory and that holds none.
func (c *Coordinator) loadData() error {
	d := c.cfg.Data
	meta, err := readModelMeta(c.cfg.Model.Path)
	if err != nil {
		return err
	}
	tokens := d.Format == config.FormatTokens
	tok, err := data.LoadTokenizer(d.Tokenizer)
	if err != nil && !(tokens && d.Tokenizer == c.cfg.Model.Path) {
		return fmt.Errorf("data.tokenizer: %w", err)
	}
	c.tok = tok // nil for pre-tokenized data without a tokenizer
	vocab, eos := meta.Vocab, meta.EOS
	c.pad = meta.PAD
	if tok != nil {
		if vocab == 0 {
			vocab = tok.VocabSize()
		}
		if eos < 0 {
			eos = tok.EOS
		}
		if tok.PAD >= 0 {
			c.pad = tok.PAD
		}
	}
	// Padding is masked out and never a target; any id in range will do.
	c.pad = max(c.pad, 0)
	if d.Pack && eos < 0 {
		return errors.New("data.pack: no end-of-sequence token to separate documents: set eos_token_id in the model's config.json or use a tokenizer that has one")
	}
	f := data.Fields{Text: d.TextField, TextPair: d.TextPairField, Label: d.LabelField, Task: c.task, Labels: c.cfg.Model.Labels, NumLabels: c.cfg.Model.NumLabels}
	load := func(key, path string) ([]data.Encoded, error) {
		if c.task == data.TokenClassification {
			return loadWords(tok, key, path, c.cfg)
		}
		var enc []data.Encoded
		if tokens {
			if enc, err = data.ReadTokensFile(path, vocab); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			if !d.Pack {
				data.Truncate(enc, d.MaxLength)
			}
		} else {
			exs, err := data.ReadFile(path, d.Format, f)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
			maxLen := d.MaxLength
			if d.Pack {
				maxLen = math.MaxInt32 // whole documents: Pack cuts them
			}
			if enc, err = tok.EncodeAll(path, exs, maxLen); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
		}
		if d.Pack {
			n := len(enc)
			if enc, err = data.Pack(enc, d.MaxLength, eos); err != nil {
				return nil, fmt.Errorf("%s %s: %w", key, path, err)
			}
			c.log.Info("packed", "file", path, "documents", n, "sequences", len(enc), "max_length", d.MaxLength)
		}
		return enc, nil
	}
	if c.train, err = load("data.train_file", d.TrainFile); err != nil {
		return err
	}
	if d.EvalFile != "" {
		if c.eval, err = load("data.eval_file", d.EvalFile); err != nil {
			return err
		}
	}
	return c.setupMasking()
}

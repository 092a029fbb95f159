package coordinator

import (
	"fmt"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
)

// loadWords reads and encodes a token-classification set (JSON Lines with
// an array of words in data.text_field and one tag per word in
// data.label_field, named by model.labels).
func loadWords(tok *data.Tokenizer, key, path string, cfg *config.Config) ([]data.Encoded, error) {
	ws, err := data.ReadWordsFile(path, cfg.Data.TextField, cfg.Data.LabelField, cfg.Model.Labels)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	enc, err := tok.EncodeAllWords(path, ws, cfg.Data.MaxLength)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return enc, nil
}

// setupMasking prepares masked-LM masking: the training samples are masked
// per step (stepSamples), the evaluation set once, with data.EvalEpoch, so
// that every evaluation scores the same masked tokens.
func (c *Coordinator) setupMasking() error {
	if c.task != data.MaskedLM {
		return nil
	}
	mc, err := data.MaskConfigFor(c.tok, c.cfg.Data.MLMProbability, c.cfg.Train.Seed)
	if err != nil {
		return fmt.Errorf("data.tokenizer: %w", err)
	}
	c.mask = &mc
	if len(c.eval) > 0 {
		idx := make([]int, len(c.eval))
		for i := range idx {
			idx[i] = i
		}
		c.eval, _ = mc.MaskSamples(c.eval, idx, data.EvalEpoch)
	}
	return nil
}

// stepSamples returns the samples of global step g and the indices into
// them that RankBatches and GlobalCount take. For masked LM these are the
// step's samples masked for (seed, epoch, sample): the masks depend on
// nothing else, so a step re-sent after an abort, or after a resume from a
// checkpoint, carries the same masks. Otherwise they are the training set
// and indices themselves.
func (c *Coordinator) stepSamples(g int, indices []int) ([]data.Encoded, []int, error) {
	if c.mask == nil {
		return c.train, indices, nil
	}
	epoch, _, err := c.sched.Locate(g)
	if err != nil {
		return nil, nil, err
	}
	enc, pos := c.mask.MaskSamples(c.train, indices, epoch)
	return enc, pos, nil
}

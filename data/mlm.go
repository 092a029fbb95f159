package data

import (
	"fmt"
	"math/rand/v2"
)

// MaskConfig is masked-LM masking as transformers'
// DataCollatorForLanguageModeling does it: each token other than [CLS],
// [SEP] and padding is selected with probability Prob; a selected token
// becomes [MASK] with probability 0.8, a uniformly random vocabulary id
// with 0.1, and stays with 0.1; the label of a selected token is its
// original id, IgnoreIndex elsewhere.
//
// The draws come from a generator seeded by (Seed, epoch, sample index)
// alone, so whoever builds a batch (the coordinator, a restarted
// coordinator, a test) masks a sample identically, and a sample is masked
// afresh each epoch, as the dynamic masking of RoBERTa and HF's collator do.
type MaskConfig struct {
	Prob  float64
	Seed  int64
	Mask  int // [MASK] id
	Vocab int // ids drawn for random replacement are in [0, Vocab)
	// Special ids are never selected ([CLS], [SEP], [PAD]).
	Special []int
}

// MaskConfigFor returns the masking for tokenizer t with probability prob.
func MaskConfigFor(t *Tokenizer, prob float64, seed int64) (MaskConfig, error) {
	if t.MASK < 0 {
		return MaskConfig{}, fmt.Errorf("tokenizer %s has no [MASK] token: masked_lm needs a BERT WordPiece vocabulary", t.path)
	}
	if !(prob > 0 && prob < 1) {
		return MaskConfig{}, fmt.Errorf("masking probability %v: want a value in (0, 1)", prob)
	}
	return MaskConfig{Prob: prob, Seed: seed, Mask: t.MASK, Vocab: t.vocab, Special: []int{t.CLS, t.SEP, t.PAD}}, nil
}

// EvalEpoch is the epoch number evaluation sets are masked with: one fixed
// masking, so that perplexities after different steps are comparable.
const EvalEpoch = -1

// Apply returns a copy of e with masked input ids and per-token Labels for
// sample index of epoch.
func (c MaskConfig) Apply(e Encoded, epoch, index int) Encoded {
	// Seed words: the run seed, and epoch and index packed into one word
	// through SplitMix64 so that neighbouring samples get unrelated streams.
	r := rand.New(rand.NewPCG(uint64(c.Seed), splitmix(uint64(int64(epoch))<<32^uint64(uint32(index)))))
	out := e
	out.IDs = make([]int, len(e.IDs))
	out.Labels = make([]int, len(e.IDs))
	for i, id := range e.IDs {
		out.IDs[i], out.Labels[i] = id, IgnoreIndex
		special := false
		for _, s := range c.Special {
			special = special || id == s
		}
		// Draw for every position, special or not, so that a token's fate
		// depends on its position only.
		u, v, w := r.Float64(), r.Float64(), r.IntN(max(c.Vocab, 1))
		if special || u >= c.Prob {
			continue
		}
		out.Labels[i] = id
		switch {
		case v < 0.8:
			out.IDs[i] = c.Mask
		case v < 0.9:
			out.IDs[i] = w
		}
	}
	return out
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// MaskSamples masks the samples indices of enc for epoch and returns them
// in order, with the positions 0…len-1 to index them: the input
// RankBatches and GlobalCount take.
func (c MaskConfig) MaskSamples(enc []Encoded, indices []int, epoch int) ([]Encoded, []int) {
	out := make([]Encoded, len(indices))
	pos := make([]int, len(indices))
	for i, k := range indices {
		out[i] = c.Apply(enc[k], epoch, k)
		pos[i] = i
	}
	return out, pos
}

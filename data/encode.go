package data

import (
	"fmt"
)

// IgnoreIndex marks label positions the loss skips (torch's
// CrossEntropyLoss ignore_index default).
const IgnoreIndex = -100

// Encoded is one example as token ids, truncated and framed with special
// tokens but not padded; padding happens per batch in Collate.
type Encoded struct {
	IDs     []int
	TypeIDs []int // 0 for the first text, 1 for the pair
	Label   int
	Target  float64
	// Labels are per-token labels, IgnoreIndex where no loss applies: for
	// causal LM the next-token labels (nil means the ids themselves), for
	// token classification the tags, and for masked LM the masked ids once
	// masked; nil otherwise.
	Labels []int
	// Docs is the document index of each token of a packed sequence (see
	// Pack); nil when the example is one document.
	Docs []int
}

// Encode tokenizes an example, truncates it to maxLen tokens including
// special tokens and frames it: [CLS] a [SEP] or [CLS] a [SEP] b [SEP] for
// BERT, a or a b for GPT-2. A pair is truncated longest-first, as Hugging
// Face tokenizers do by default (see longestFirst).
func (t *Tokenizer) Encode(ex Example, maxLen int) (Encoded, error) {
	a, err := t.IDs(ex.Text)
	if err != nil {
		return Encoded{}, err
	}
	var b []int
	hasPair := ex.TextPair != ""
	if hasPair {
		if b, err = t.IDs(ex.TextPair); err != nil {
			return Encoded{}, err
		}
	}
	special := 0
	if t.style == StyleBERT {
		special = 2
		if hasPair {
			special = 3
		}
	}
	budget := maxLen - special
	if budget < 1 || (hasPair && budget < 2) {
		return Encoded{}, fmt.Errorf("max_length %d leaves no room for text after %d special tokens", maxLen, special)
	}
	if len(a)+len(b) > budget {
		na, nb := longestFirst(len(a), len(b), budget)
		a, b = a[:na], b[:nb]
	}
	e := Encoded{Label: ex.Label, Target: ex.Target}
	push := func(typ int, ids ...int) {
		e.IDs = append(e.IDs, ids...)
		for range ids {
			e.TypeIDs = append(e.TypeIDs, typ)
		}
	}
	if t.style == StyleBERT {
		push(0, t.CLS)
		push(0, a...)
		push(0, t.SEP)
		if hasPair {
			push(1, b...)
			push(1, t.SEP)
		}
	} else {
		push(0, a...)
		push(1, b...)
	}
	return e, nil
}

// longestFirst returns the lengths a pair of n1 and n2 tokens is cut to so
// that it fits target, following the tokenizers crate (truncate_encodings,
// LongestFirst): the shorter text is kept whole if the longer can absorb the
// cut; otherwise both get half, the originally longer one the odd token.
func longestFirst(n1, n2, target int) (int, int) {
	if n1+n2 <= target {
		return n1, n2
	}
	swap := n1 > n2
	if swap {
		n1, n2 = n2, n1
	}
	if n1 > target {
		n2 = n1
	} else {
		n2 = max(n1, target-n1)
	}
	if n1+n2 > target {
		n1 = target / 2
		n2 = n1 + target%2
	}
	if swap {
		n1, n2 = n2, n1
	}
	return n1, n2
}

// EncodeAll encodes a dataset once, for the coordinator to slice into batches.
// An error names the example's line in name.
func (t *Tokenizer) EncodeAll(name string, exs []Example, maxLen int) ([]Encoded, error) {
	out := make([]Encoded, len(exs))
	for i, ex := range exs {
		e, err := t.Encode(ex, maxLen)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, ex.Line, err)
		}
		out[i] = e
	}
	return out, nil
}

// Batch is a collated batch as flat row-major arrays of shape (Size, Seq),
// ready to become libtorch tensors without copying.
type Batch struct {
	Size, Seq     int
	InputIDs      []int64 // (Size, Seq), padded with the tokenizer's pad id
	AttentionMask []int64 // (Size, Seq), 1 for tokens, 0 for padding
	TokenTypeIDs  []int64 // (Size, Seq), 0 first text, 1 pair, 0 padding
	// Labels is (Size) class ids for classification, or (Size, Seq): token
	// ids for causal LM, the Encoded per-token labels for masked LM and
	// token classification, with IgnoreIndex on padding; nil for
	// regression.
	Labels []int64
	// Targets is (Size) values for regression; nil otherwise.
	Targets []float32
	// Tokens counts the non-padding tokens, the divisor of a causal-LM loss
	// summed over ranks.
	Tokens int
	// DocIDs is (Size, Seq) for a packed causal-LM batch, nil otherwise:
	// the index of the document each token belongs to within its row,
	// non-decreasing along the row (padding continues the last document).
	// A token attends only to earlier tokens of its own document, its
	// position restarts at 0 where its document starts, and the first
	// token of a document is never a next-token target.
	DocIDs []int64 `json:",omitempty"`
}

// CheckDocIDs reports whether DocIDs, when present, has one entry per token
// and never decreases along a row (each document is one contiguous run).
func (b *Batch) CheckDocIDs() error {
	if b.DocIDs == nil {
		return nil
	}
	if len(b.DocIDs) != b.Size*b.Seq {
		return fmt.Errorf("batch has %d document ids for size %d × seq %d", len(b.DocIDs), b.Size, b.Seq)
	}
	for r := range b.Size {
		row := b.DocIDs[r*b.Seq : (r+1)*b.Seq]
		for j := 1; j < len(row); j++ {
			if row[j] < row[j-1] {
				return fmt.Errorf("batch row %d: document id %d at position %d follows %d: documents must be contiguous runs", r, row[j], j, row[j-1])
			}
		}
	}
	return nil
}

// DocStart reports whether token i (flat index) starts a document other
// than its row's first: a packed row's position where the previous token
// belongs to another document.
func (b *Batch) DocStart(i int) bool {
	return b.DocIDs != nil && i%b.Seq != 0 && b.DocIDs[i] != b.DocIDs[i-1]
}

// PositionIDs returns (Size, Seq) position ids: 0, 1, … along each row,
// restarting at every document start of a packed batch.
func (b *Batch) PositionIDs() []int64 {
	out := make([]int64, b.Size*b.Seq)
	for i := range out {
		switch {
		case i%b.Seq == 0 || b.DocStart(i):
			out[i] = 0
		default:
			out[i] = out[i-1] + 1
		}
	}
	return out
}

// Collate pads items to the longest among them (dynamic padding; Encode has
// already capped each at max_length) and lays them out as a Batch for task.
// For causal LM the labels are the examples' Labels, or the input ids
// themselves; the model shifts them when computing the loss, as Hugging
// Face's models do. Packed examples (Docs set) give the batch DocIDs.
func Collate(items []Encoded, task Task, padID int) (*Batch, error) {
	if len(items) == 0 {
		return nil, fmt.Errorf("collate: empty batch")
	}
	if task == MaskedLM || task == TokenClassification {
		for i, it := range items {
			if len(it.Labels) != len(it.IDs) {
				return nil, fmt.Errorf("collate: %s item %d has %d labels for %d tokens (not masked or not encoded with EncodeWords?)", task, i, len(it.Labels), len(it.IDs))
			}
		}
	}
	seq := 0
	for _, it := range items {
		seq = max(seq, len(it.IDs))
	}
	if seq == 0 {
		return nil, fmt.Errorf("collate: every example encodes to zero tokens")
	}
	n := len(items)
	packed := false
	for _, it := range items {
		if (it.TypeIDs != nil && len(it.TypeIDs) != len(it.IDs)) || (it.Labels != nil && len(it.Labels) != len(it.IDs)) || (it.Docs != nil && len(it.Docs) != len(it.IDs)) {
			return nil, fmt.Errorf("collate: example of %d tokens has %d type ids, %d labels and %d document ids", len(it.IDs), len(it.TypeIDs), len(it.Labels), len(it.Docs))
		}
		packed = packed || it.Docs != nil
	}
	if packed && task != CausalLM {
		return nil, fmt.Errorf("collate: packed examples for task %s: packing is for causal_lm only", task)
	}
	b := &Batch{
		Size: n, Seq: seq,
		InputIDs:      make([]int64, n*seq),
		AttentionMask: make([]int64, n*seq),
		TokenTypeIDs:  make([]int64, n*seq),
	}
	switch task {
	case Classification:
		b.Labels = make([]int64, n)
	case Regression:
		b.Targets = make([]float32, n)
	case CausalLM, MaskedLM, TokenClassification:
		b.Labels = make([]int64, n*seq)
		if packed {
			b.DocIDs = make([]int64, n*seq)
		}
	default:
		return nil, fmt.Errorf("collate: unknown task %q", task)
	}
	for i, it := range items {
		row := i * seq
		for j := 0; j < seq; j++ {
			if j < len(it.IDs) {
				b.InputIDs[row+j] = int64(it.IDs[j])
				b.AttentionMask[row+j] = 1
				if it.TypeIDs != nil {
					b.TokenTypeIDs[row+j] = int64(it.TypeIDs[j])
				}
			} else {
				b.InputIDs[row+j] = int64(padID)
			}
			switch task {
			case CausalLM:
				b.Labels[row+j] = IgnoreIndex
				switch {
				case j >= len(it.IDs):
				case it.Labels != nil:
					b.Labels[row+j] = int64(it.Labels[j])
				default:
					b.Labels[row+j] = int64(it.IDs[j])
				}
			case MaskedLM, TokenClassification:
				b.Labels[row+j] = IgnoreIndex
				if j < len(it.Labels) {
					b.Labels[row+j] = int64(it.Labels[j])
				}
			}
			if b.DocIDs != nil {
				// Padding continues the row's last document; the attention
				// mask keeps it out anyway.
				switch {
				case j < len(it.Docs):
					b.DocIDs[row+j] = int64(it.Docs[j])
				case j > 0:
					b.DocIDs[row+j] = b.DocIDs[row+j-1]
				}
			}
		}
		b.Tokens += len(it.IDs)
		switch task {
		case Classification:
			b.Labels[i] = int64(it.Label)
		case Regression:
			b.Targets[i] = float32(it.Target)
		}
	}
	return b, nil
}

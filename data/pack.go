package data

import "fmt"

// Pack concatenates causal-LM documents into sequences of at most maxLen
// tokens, so that short texts do not waste a batch row each on padding.
//
//   - Every document ends with eos: it is appended (with eos as its label)
//     unless the document already ends with it. The separator belongs to the
//     document it ends, so the model learns to close a document.
//   - A document longer than maxLen is cut into maxLen pieces, each packed
//     as a document of its own (no token is lost; the cut costs the later
//     piece its context, as in Hugging Face's group_texts).
//   - Documents (or pieces) are placed greedily in their order: one that
//     does not fit in the room left starts a new sequence, so no document
//     is split across sequences and the sequences are full except for
//     that remainder.
//
// Each packed sequence records which document each token belongs to (Docs);
// Collate turns that into Batch.DocIDs, from which the model builds a
// block-diagonal causal mask and positions restarting at each document, and
// ignores the target of each document's first token. The result depends
// only on docs, maxLen and eos, so every process that packs the same data
// gets the same sequences; each packed sequence is one sample of the
// sampler and the ledger.
func Pack(docs []Encoded, maxLen, eos int) ([]Encoded, error) {
	if maxLen < 2 {
		return nil, fmt.Errorf("pack: max_length %d: want at least 2", maxLen)
	}
	if eos < 0 {
		return nil, fmt.Errorf("pack: no end-of-sequence token id to separate documents (set eos_token_id in the model's config.json)")
	}
	var out []Encoded
	var cur Encoded
	ndoc := 0
	flush := func() {
		if len(cur.IDs) > 0 {
			out = append(out, cur)
		}
		cur, ndoc = Encoded{}, 0
	}
	for k, d := range docs {
		if len(d.IDs) == 0 {
			return nil, fmt.Errorf("pack: document %d has no tokens", k)
		}
		if d.Labels != nil && len(d.Labels) != len(d.IDs) {
			return nil, fmt.Errorf("pack: document %d has %d labels for %d tokens", k, len(d.Labels), len(d.IDs))
		}
		ids, labels := d.IDs, d.Labels
		if ids[len(ids)-1] != eos {
			ids = append(ids[:len(ids):len(ids)], eos)
			if labels != nil {
				labels = append(labels[:len(labels):len(labels)], eos)
			}
		}
		for start := 0; start < len(ids); start += maxLen {
			end := min(start+maxLen, len(ids))
			if len(cur.IDs)+end-start > maxLen {
				flush()
			}
			if cur.IDs == nil {
				cur = Encoded{IDs: make([]int, 0, maxLen), TypeIDs: make([]int, 0, maxLen),
					Labels: make([]int, 0, maxLen), Docs: make([]int, 0, maxLen)}
			}
			for j := start; j < end; j++ {
				cur.IDs = append(cur.IDs, ids[j])
				cur.TypeIDs = append(cur.TypeIDs, 0)
				l := ids[j]
				if labels != nil {
					l = labels[j]
				}
				cur.Labels = append(cur.Labels, l)
				cur.Docs = append(cur.Docs, ndoc)
			}
			ndoc++
		}
	}
	flush()
	return out, nil
}

// Targets is the number of next-token targets an example contributes to a
// causal-LM loss: every token but the first whose label is not IgnoreIndex
// and that does not start a packed document. The model counts the same
// (see model/hf lmTargets), so this is each sample's share of the divisor
// of a step's summed gradient.
func (e *Encoded) Targets() int {
	n := 0
	for j := 1; j < len(e.IDs); j++ {
		if e.Labels != nil && e.Labels[j] == IgnoreIndex {
			continue
		}
		if e.Docs != nil && e.Docs[j] != e.Docs[j-1] {
			continue
		}
		n++
	}
	return n
}

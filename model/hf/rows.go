package hf

import (
	"errors"
	"fmt"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/torch"
)

// The split embedding (allreduce.sparse_embedding).
//
// An untied input embedding (BERT's for classification, an untied Llama's)
// has only the lookups' gradient: split, its matrix gets none, and its
// segment is left out of the buckets (bucket.Segment.Skip), so that only
// its rows are reduced.
//
// A tied embedding — GPT-2's wte, a tied Llama's embed_tokens, the BERT
// masked-LM decoder's word embeddings — gets two gradients in one backward:
// the output projection's, which is dense and ready at the very start of
// backward (the head is the first layer backward reaches), and the input
// lookup's, which touches only the rows of the step's tokens and is ready
// at the very end. Summed by autograd into one .grad, the matrix is final
// only at the end, and its whole bucket (31% of GPT-2 124M's gradient) is
// reduced after backward. Split, the head's part is reduced first, during
// backward, and only the rows the step's tokens used are reduced at the
// end. The average is linear, so reduce(head) + reduce(rows) is the
// gradient of reduce(head + rows), up to the order of the float additions.
//
// How: for a step, BeginRows copies the rows every rank's batches use (the
// agent agrees on their union with one small reduction) into a leaf of its
// own (torch.Rows); the forward passes look tokens up in it, so autograd
// gives the matrix only the head's gradient and the leaf the lookups'.
// FoldRows adds the (reduced) rows' gradient into the matrix's gradient
// before the optimizer step. The matrix itself never changes shape or name:
// checkpoints, the export and the optimizer see one tied parameter.

// SplitEmbedding names the word-embedding matrix the split applies to,
// and whether the output projection shares it (tied). An untied input
// embedding is split too: its gradient is then all lookup, so with the
// split it is zero in the matrix on every rank and only its rows are
// reduced (GradSegments marks its segment Skip).
func (m *Model) SplitEmbedding() (name string, tied bool) {
	switch m.cfg.Family {
	case GPT2:
		return "transformer.wte.weight", m.cfg.Tied && m.task == data.CausalLM
	case Llama:
		return "model.embed_tokens.weight", m.cfg.Tied && m.task == data.CausalLM
	case BERT:
		return "bert.embeddings.word_embeddings.weight", m.task == data.MaskedLM
	}
	return "", false
}

// SplitEmbeddingNumel is the number of elements of the matrix the split
// applies to (SplitEmbedding), 0 when the model has none. The node splits
// only a matrix big enough to pay for the split's two extra ring
// operations a step (agent.Job.SplitMinBytes).
func (m *Model) SplitEmbeddingNumel() int64 {
	name, _ := m.SplitEmbedding()
	for _, sp := range m.params.Specs {
		if name != "" && sp.Name == name {
			return numelOf(sp.Shape)
		}
	}
	return 0
}

// SetSplitEmbedding turns the split on (or off) and returns the number of
// rows of the split matrix (the vocabulary; 0 when off). Call it before
// GradSegments and outside a step.
func (m *Model) SetSplitEmbedding(on bool) (rows int, err error) {
	if m.rows != nil {
		return 0, errors.New("split embedding: a step's rows are in use (FoldRows or DropRows first)")
	}
	name, tied := m.SplitEmbedding()
	if !on || name == "" {
		m.split, m.splitTied, m.remap = "", false, nil
		return 0, nil
	}
	m.split, m.splitTied = name, tied
	m.remap = make([]int32, m.cfg.Vocab)
	for i := range m.remap {
		m.remap[i] = -1
	}
	return m.cfg.Vocab, nil
}

// MarkRows sets used[id] to 1 for every token id of b that the input
// lookup reads (used has one entry per row of the split matrix). Ids
// outside the vocabulary are left for the forward pass to report.
func (m *Model) MarkRows(b *data.Batch, used []float32) {
	for _, id := range b.InputIDs {
		if id >= 0 && id < int64(len(used)) {
			used[id] = 1
		}
	}
}

// BeginRows starts a step whose input lookups read only rows (sorted
// ascending, distinct: the union over every rank's micro-batches), from a
// copy of them, which collects the lookups' gradient (RowGrads) until
// FoldRows or DropRows. Without the split on it is an error.
func (m *Model) BeginRows(rows []int64) error {
	if m.split == "" {
		return errors.New("begin rows: the embedding split is off (SetSplitEmbedding)")
	}
	for i, r := range rows {
		if r < 0 || r >= int64(len(m.remap)) || (i > 0 && r <= rows[i-1]) {
			return fmt.Errorf("begin rows: row %d at %d: rows must be ascending, distinct and inside the %d-row vocabulary of %s", r, i, len(m.remap), m.split)
		}
	}
	if err := m.DropRows(); err != nil {
		return err
	}
	if len(rows) == 0 {
		return nil
	}
	return m.do(func() error {
		w, _ := m.params.Get(m.split)
		r, err := torch.NewRows(w, rows, m.opt.Device)
		if err != nil {
			return fmt.Errorf("begin rows of %s: %w", m.split, err)
		}
		m.rows, m.rowIDs = r, rows
		for i, id := range rows {
			m.remap[id] = int32(i)
		}
		return nil
	})
}

// RowGrads is the lookups' gradient of the step's rows, row after row
// (len(rows)·hidden), aliased on CPU; nil when the step has no rows, or on
// CUDA (CopyRowGradsTo, SetRowGrads). Valid until FoldRows or DropRows;
// do not use it while a ForwardBackward runs.
func (m *Model) RowGrads() []float32 {
	if m.rows == nil {
		return nil
	}
	return m.rows.GradSlice()
}

// RowGradLen is the length of the step's row gradient (0 without rows).
func (m *Model) RowGradLen() int {
	if m.rows == nil {
		return 0
	}
	return m.rows.Len() * m.rows.Width()
}

// CopyRowGradsTo copies the rows' gradient into dst (len RowGradLen).
func (m *Model) CopyRowGradsTo(dst []float32) error {
	if m.rows == nil {
		return errors.New("copy row gradients: no rows in use (BeginRows)")
	}
	return m.do(func() error { return m.rows.CopyGradTo(dst) })
}

// SetRowGrads overwrites the rows' gradient with src (len RowGradLen).
func (m *Model) SetRowGrads(src []float32) error {
	if m.rows == nil {
		return errors.New("set row gradients: no rows in use (BeginRows)")
	}
	return m.do(func() error { return m.rows.SetGradFrom(src) })
}

// FoldRows adds the rows' gradient into the split matrix's gradient, then
// drops the rows: the gradient block is then what one backward without the
// split gives, up to the order of the additions. Without rows it does
// nothing.
func (m *Model) FoldRows() error {
	if m.rows == nil {
		return nil
	}
	err := m.do(func() error {
		g, ok := m.params.GradOf(m.split)
		if !ok {
			return fmt.Errorf("no parameter %q", m.split)
		}
		return m.rows.AddGradInto(g)
	})
	if err != nil {
		return fmt.Errorf("fold the row gradients into %s: %w", m.split, err)
	}
	return m.DropRows()
}

// DropRows forgets the step's rows and their gradient (an aborted step).
func (m *Model) DropRows() error {
	if m.rows == nil {
		return nil
	}
	return m.do(func() error {
		m.rows.Free()
		for _, id := range m.rowIDs {
			m.remap[id] = -1
		}
		m.rows, m.rowIDs = nil, nil
		return nil
	})
}

// embed looks up in.ids in the embedding matrix name (row pad gets no
// gradient; pad < 0: none). For the split matrix during a step with rows,
// it reads the rows' copy with the remapped ids instead.
func (m *Model) embed(s *torch.Scope, name string, in *inputs, pad int64) torch.Tensor {
	if name != m.split || !in.rowIDs.Defined() {
		return s.EmbeddingPad(m.weight(s, name), in.ids, pad)
	}
	w := m.rows.Leaf
	if m.bf16 {
		w = s.To(w, torch.BFloat16)
	}
	p := int64(-1)
	if pad >= 0 && pad < int64(len(m.remap)) {
		p = int64(m.remap[pad])
	}
	return s.EmbeddingPad(w, in.rowIDs, p)
}

// lookupIDs remaps b's ids to positions in the step's rows, for training
// passes during a step with rows (else it leaves in.rowIDs undefined).
func (m *Model) lookupIDs(s *torch.Scope, b *data.Batch, in *inputs) error {
	if m.rows == nil {
		return nil
	}
	ids := make([]int64, len(b.InputIDs))
	for i, id := range b.InputIDs {
		p := m.remap[id] // inputs checked the range
		if p < 0 {
			return fmt.Errorf("model: input id %d at row %d, position %d is not among the step's %d embedding rows: the rows were agreed from other batches than these", id, i/b.Seq, i%b.Seq, m.rows.Len())
		}
		ids[i] = int64(p)
	}
	in.rowIDs = s.FromSliceOn(ids, m.opt.Device, in.b, in.t)
	return s.Err()
}

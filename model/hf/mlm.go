package hf

import (
	"fmt"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hfspec"
	"github.com/ringtune/ringtune/model/torch"
)

// The masked-LM head's forward pass; its parameters are hfspec's MLMDense,
// MLMNorm and MLMBias, and its decoder weight is the word-embedding matrix.
const (
	mlmDense = hfspec.MLMDense
	mlmNorm  = hfspec.MLMNorm
	mlmBias  = hfspec.MLMBias
)

// mlmLogits maps hidden states [..., H] to vocabulary logits [..., V].
func (n *net) mlmLogits(s *torch.Scope, x torch.Tensor) torch.Tensor {
	c := n.c
	x = s.Linear(x, n.w(s, mlmDense+".weight"), n.w(s, mlmDense+".bias"))
	x = s.Gelu(x, false)
	x = s.LayerNorm(x, []int64{int64(c.Hidden)}, n.w(s, mlmNorm+".weight"), n.w(s, mlmNorm+".bias"), c.NormEps)
	return s.Linear(x, n.w(s, "bert.embeddings.word_embeddings.weight"), n.w(s, mlmBias))
}

// tokenTargets checks per-token labels against [0, n) (IgnoreIndex
// allowed) and returns the flat positions that carry one.
func tokenTargets(b *data.Batch, n int, what string) ([]int64, []int64, error) {
	if len(b.Labels) != b.Size*b.Seq {
		return nil, nil, fmt.Errorf("model: %s batch has %d labels for size %d × seq %d (one per token)", what, len(b.Labels), b.Size, b.Seq)
	}
	var pos, tgt []int64
	for i, l := range b.Labels {
		if l == data.IgnoreIndex {
			continue
		}
		if l < 0 || l >= int64(n) {
			return nil, nil, fmt.Errorf("model: %s label %d at row %d, position %d is outside [0, %d)", what, l, i/b.Seq, i%b.Seq, n)
		}
		pos = append(pos, int64(i))
		tgt = append(tgt, l)
	}
	return pos, tgt, nil
}

// mlmLoss is the summed cross-entropy over the masked positions. Only those
// rows of the hidden states go through the head and the vocabulary
// projection: the loss and every gradient equal transformers' (which
// projects every position and ignores the unlabelled ones), at a fraction
// of the cost.
func (m *Model) mlmLoss(s *torch.Scope, in *inputs, b *data.Batch, train bool) (torch.Tensor, int, error) {
	pos, tgt, err := tokenTargets(b, m.cfg.Vocab, "masked-LM")
	if err != nil || len(pos) == 0 {
		return torch.Tensor{}, 0, err
	}
	dev := m.opt.Device
	h := s.Reshape(m.net.bertEncoder(s, in, train), -1, int64(m.cfg.Hidden))
	sel := s.Embedding(h, s.FromSliceOn(pos, dev, int64(len(pos)))) // rows of h: index_select
	logits := m.f32(s, m.net.mlmLogits(s, sel))
	return s.CrossEntropy(logits, s.FromSliceOn(tgt, dev, int64(len(tgt))), torch.ReduceSum, data.IgnoreIndex), len(pos), s.Err()
}

// evalMLM adds a batch's masked-token loss sum and count to e (perplexity
// is exp of their ratio).
func (m *Model) evalMLM(e *Eval, b *data.Batch) error {
	err := m.do(func() error {
		s := m.scope
		defer s.Release()
		prev := torch.SetGradEnabled(false)
		defer torch.SetGradEnabled(prev)
		in, err := m.inputs(s, b)
		if err != nil {
			return err
		}
		loss, n, err := m.mlmLoss(s, in, b, false)
		if err != nil || n == 0 {
			return err
		}
		e.LossSum += s.Item(loss)
		e.Count += int64(n)
		return s.Err()
	})
	if err != nil {
		return fmt.Errorf("evaluate: %w", err)
	}
	return nil
}

// predictTokens fills out with every position's logits, argmax and, when
// the batch has per-token labels, each row's mean loss over its labelled
// tokens (masked LM and token classification).
func (m *Model) predictTokens(s *torch.Scope, in *inputs, b *data.Batch, out *Output) error {
	var logits torch.Tensor
	width := m.numLabels
	if m.task == data.MaskedLM {
		width = m.cfg.Vocab
		logits = m.net.mlmLogits(s, m.net.bertEncoder(s, in, false))
	} else {
		logits = m.net.tokenLogits(s, in, false)
	}
	logits = m.f32(s, logits)
	if s.Err() != nil {
		return s.Err()
	}
	flat := make([]float32, b.Size*b.Seq*width)
	if err := logits.CopyTo(flat); err != nil {
		return err
	}
	var labels []int64
	if len(b.Labels) == b.Size*b.Seq {
		labels = b.Labels
	}
	for r := range b.Size {
		row := flat[r*b.Seq*width : (r+1)*b.Seq*width]
		out.Logits = append(out.Logits, row)
		best := make([]int, b.Seq)
		var sum float64
		n := 0
		for j := range b.Seq {
			tok := row[j*width : (j+1)*width]
			best[j] = argmax(tok)
			if labels == nil {
				continue
			}
			l := labels[r*b.Seq+j]
			if l == data.IgnoreIndex {
				continue
			}
			if l < 0 || l >= int64(width) {
				return fmt.Errorf("label %d at row %d, position %d is outside [0, %d)", l, r, j, width)
			}
			sum += crossEntropy(tok, int(l))
			n++
		}
		out.TokenLabels = append(out.TokenLabels, best)
		if labels != nil {
			out.Counts = append(out.Counts, n)
			out.Losses = append(out.Losses, sum/float64(n))
		}
	}
	return nil
}

package hf

import (
	"fmt"
	"math"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/torch"
)

// The token-classification head, as transformers'
// BertForTokenClassification builds it: BertModel without the pooler,
// dropout (classifier_dropout, else hidden_dropout_prob), and a linear
// classifier applied to every position. Positions labelled IgnoreIndex
// (-100: special tokens, padding, a word's later sub-tokens) add nothing to
// the loss.

// tokenLogits returns the per-position class logits [B,T,labels].
func (n *net) tokenLogits(s *torch.Scope, in *inputs, train bool) torch.Tensor {
	x := s.Dropout(n.bertEncoder(s, in, train), n.drop("classifier"), train)
	return s.Linear(x, n.w(s, "classifier.weight"), n.w(s, "classifier.bias"))
}

// tokenLoss is the summed cross-entropy over the labelled positions, and
// their count.
func (m *Model) tokenLoss(s *torch.Scope, in *inputs, b *data.Batch, train bool) (torch.Tensor, int, error) {
	pos, _, err := tokenTargets(b, m.numLabels, "token-classification")
	if err != nil || len(pos) == 0 {
		return torch.Tensor{}, 0, err
	}
	logits := m.f32(s, m.net.tokenLogits(s, in, train))
	k := int64(m.numLabels)
	return s.CrossEntropy(s.Reshape(logits, -1, k), s.FromSliceOn(b.Labels, m.opt.Device, in.b*in.t),
		torch.ReduceSum, data.IgnoreIndex), len(pos), s.Err()
}

// evalTokens adds a batch's labelled tokens to e: the confusion matrix
// (token accuracy, macro F1) and the summed cross-entropy.
func (m *Model) evalTokens(e *Eval, b *data.Batch) error {
	if len(b.Labels) != b.Size*b.Seq {
		return fmt.Errorf("evaluate: token-classification batch has %d labels for size %d × seq %d", len(b.Labels), b.Size, b.Seq)
	}
	out, err := m.Predict(b)
	if err != nil {
		return err
	}
	k := m.numLabels
	for r := range b.Size {
		for j := range b.Seq {
			l := b.Labels[r*b.Seq+j]
			if l == data.IgnoreIndex {
				continue
			}
			e.Confusion[int(l)*k+out.TokenLabels[r][j]]++
			e.LossSum += crossEntropy(out.Logits[r][j*k:(j+1)*k], int(l))
			e.Count++
		}
	}
	return nil
}

func argmax(v []float32) int {
	best := 0
	for j, x := range v {
		if x > v[best] {
			best = j
		}
	}
	return best
}

// crossEntropy is -log softmax(logits)[label], in float64.
func crossEntropy(logits []float32, label int) float64 {
	mx := logits[0]
	for _, v := range logits {
		mx = max(mx, v)
	}
	var z float64
	for _, v := range logits {
		z += math.Exp(float64(v - mx))
	}
	return math.Log(z) + float64(mx) - float64(logits[label])
}

// LoadReport summarises a pretrained load the way from_pretrained's
// warnings do: how many tensors were loaded, and which parameters were
// newly initialised (to be trained) and which checkpoint tensors were
// ignored. It is empty for init: random.
func (m *Model) LoadReport() string {
	if len(m.Loaded) == 0 && len(m.NewlyInitialized) == 0 && len(m.Ignored) == 0 {
		return ""
	}
	r := fmt.Sprintf("%s from %s: %d tensors loaded", m.lay.Class, m.dir, len(m.Loaded))
	if len(m.NewlyInitialized) > 0 {
		r += fmt.Sprintf("; newly initialised (train before use): %v", m.NewlyInitialized)
		if len(m.Redrawn) > 0 {
			r += fmt.Sprintf(" (%d of them in the checkpoint but drawn afresh, as its config.json %s asks for a sequence head)", len(m.Redrawn), SequenceHeadRedrawKey)
		}
	}
	if len(m.Ignored) > 0 {
		r += fmt.Sprintf("; ignored (not used by %s): %v", m.lay.Class, m.Ignored)
	}
	return r
}

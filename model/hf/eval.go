package hf

import (
	"fmt"
	"math"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/torch"
)

// Eval accumulates evaluation results over batches (and, by Merge, over
// nodes): sums and counts only, so the merged metrics equal those of one
// pass over the whole set.
type Eval struct {
	Task      data.Task
	NumLabels int
	// LossSum and Count: summed loss (CE, squared error, or next-token CE)
	// and its count (samples, or target tokens).
	LossSum float64
	Count   int64
	// Confusion[true*NumLabels+pred] counts classification outcomes.
	Confusion []int64
}

// NewEval starts an empty accumulator for the model's task.
func (m *Model) NewEval() *Eval {
	e := &Eval{Task: m.task, NumLabels: m.numLabels}
	if m.task == data.Classification || m.task == data.TokenClassification {
		e.Confusion = make([]int64, m.numLabels*m.numLabels)
	}
	return e
}

// Merge adds another accumulator of the same task into e.
func (e *Eval) Merge(o *Eval) error {
	if o.Task != e.Task || o.NumLabels != e.NumLabels || len(o.Confusion) != len(e.Confusion) {
		return fmt.Errorf("merge evaluation: %s/%d labels into %s/%d labels", o.Task, o.NumLabels, e.Task, e.NumLabels)
	}
	e.LossSum += o.LossSum
	e.Count += o.Count
	for i, v := range o.Confusion {
		e.Confusion[i] += v
	}
	return nil
}

// Metrics are a task's evaluation figures; those of other tasks are zero.
type Metrics struct {
	Task  data.Task
	Count int64
	// Loss is the mean loss (cross-entropy, squared error, or next-token
	// cross-entropy per token).
	Loss float64
	// Accuracy and MacroF1 (classification; F1 averaged over the classes
	// that occur in the labels or the predictions, as scikit-learn does).
	Accuracy, MacroF1 float64
	// MSE (regression).
	MSE float64
	// Perplexity is exp(Loss) (causal LM).
	Perplexity float64
}

// String prints the task's metrics as key=value pairs.
func (mt Metrics) String() string {
	switch mt.Task {
	case data.TokenClassification:
		return fmt.Sprintf("task=%s tokens=%d loss=%.6g token_accuracy=%.6g macro_f1=%.6g", mt.Task, mt.Count, mt.Loss, mt.Accuracy, mt.MacroF1)
	case data.Classification:
		return fmt.Sprintf("task=%s n=%d loss=%.6g accuracy=%.6g macro_f1=%.6g", mt.Task, mt.Count, mt.Loss, mt.Accuracy, mt.MacroF1)
	case data.Regression:
		return fmt.Sprintf("task=%s n=%d mse=%.6g", mt.Task, mt.Count, mt.MSE)
	}
	return fmt.Sprintf("task=%s tokens=%d loss=%.6g perplexity=%.6g", mt.Task, mt.Count, mt.Loss, mt.Perplexity)
}

// Metrics computes the figures from the sums.
func (e *Eval) Metrics() Metrics {
	mt := Metrics{Task: e.Task, Count: e.Count}
	if e.Count > 0 {
		mt.Loss = e.LossSum / float64(e.Count)
	}
	switch e.Task {
	case data.Classification, data.TokenClassification:
		n, l := int64(0), e.NumLabels
		var correct int64
		var f1sum float64
		classes := 0
		for c := range l {
			correct += e.Confusion[c*l+c]
			var support, predicted int64
			for j := range l {
				support += e.Confusion[c*l+j]
				predicted += e.Confusion[j*l+c]
			}
			n += support
			if support == 0 && predicted == 0 {
				continue
			}
			classes++
			tp := float64(e.Confusion[c*l+c])
			f1sum += 2 * tp / float64(support+predicted)
		}
		if n > 0 {
			mt.Accuracy = float64(correct) / float64(n)
		}
		if classes > 0 {
			mt.MacroF1 = f1sum / float64(classes)
		}
	case data.Regression:
		mt.MSE = mt.Loss
	case data.CausalLM, data.MaskedLM:
		mt.Perplexity = math.Exp(mt.Loss)
	}
	return mt
}

// EvalBatch runs a batch in evaluation mode (no dropout, no gradients) and
// adds it to e.
func (m *Model) EvalBatch(e *Eval, b *data.Batch) error {
	switch m.task {
	case data.MaskedLM:
		return m.evalMLM(e, b)
	case data.TokenClassification:
		return m.evalTokens(e, b)
	}
	out, err := m.Predict(b)
	if err != nil {
		return err
	}
	switch m.task {
	case data.Classification:
		if len(b.Labels) != b.Size {
			return fmt.Errorf("evaluate: batch has %d labels for %d rows", len(b.Labels), b.Size)
		}
		for i, l := range b.Labels {
			if l == data.IgnoreIndex {
				continue
			}
			if l < 0 || l >= int64(m.numLabels) {
				return fmt.Errorf("evaluate: label %d of row %d is outside [0, %d)", l, i, m.numLabels)
			}
			e.Confusion[int(l)*m.numLabels+out.Labels[i]]++
			e.LossSum += out.Losses[i]
			e.Count++
		}
	case data.Regression:
		for i := range b.Size {
			e.LossSum += out.Losses[i]
			e.Count++
		}
	default:
		for i := range b.Size {
			if out.Counts[i] == 0 {
				// No targets (one token, or every label -100): its mean
				// loss is NaN and it adds nothing.
				continue
			}
			e.LossSum += out.Losses[i] * float64(out.Counts[i])
			e.Count += int64(out.Counts[i])
		}
	}
	return nil
}

// Output is the evaluation-mode output for each row of a batch.
type Output struct {
	// Logits per row: class logits (one value for regression), for a
	// causal LM the next-token logits after the row's last real token, and
	// for masked LM and token classification every position's logits,
	// flattened [Seq × vocabulary or labels].
	Logits [][]float32
	// Labels is the argmax class per row (classification).
	Labels []int
	// Losses per row: cross-entropy or squared error against the batch's
	// labels or targets when it has them, or the mean next-token
	// cross-entropy of the row (causal LM; NaN for a row of one token).
	Losses []float64
	// Counts per row: next-token targets (causal LM), or labelled tokens
	// (masked LM, token classification).
	Counts []int
	// TokenLabels is the argmax class (token classification) or vocabulary
	// id (masked LM) per row and position.
	TokenLabels [][]int
}

// Predict runs a batch in evaluation mode. Labels and targets are optional
// for classification and regression (Losses are then nil).
func (m *Model) Predict(b *data.Batch) (*Output, error) {
	out := &Output{}
	err := m.do(func() error {
		s := m.scope
		defer s.Release()
		prev := torch.SetGradEnabled(false)
		defer torch.SetGradEnabled(prev)
		in, err := m.inputs(s, b)
		if err != nil {
			return err
		}
		if m.task == data.MaskedLM || m.task == data.TokenClassification {
			return m.predictTokens(s, in, b, out)
		}
		if m.task != data.CausalLM {
			logits := m.f32(s, m.net.bert(s, in, false))
			flat := make([]float32, b.Size*m.numLabels)
			if s.Err() != nil {
				return s.Err()
			}
			if err := logits.CopyTo(flat); err != nil {
				return err
			}
			for i := range b.Size {
				row := flat[i*m.numLabels : (i+1)*m.numLabels]
				out.Logits = append(out.Logits, row)
				best := 0
				for j, v := range row {
					if v > row[best] {
						best = j
					}
				}
				out.Labels = append(out.Labels, best)
			}
			return m.rowLosses(out, b)
		}
		v := int64(m.cfg.Vocab)
		logits := m.f32(s, m.net.lmHead(s, m.hidden(s, in, false))) // [B,T,V]
		labels := b.Labels
		if labels == nil { // predict: the inputs are the targets
			labels = make([]int64, len(b.InputIDs))
			for i, id := range b.InputIDs {
				labels[i] = id
				if b.AttentionMask != nil && b.AttentionMask[i] == 0 {
					labels[i] = data.IgnoreIndex
				}
			}
		}
		shifted, _, err := lmTargets(&data.Batch{Size: b.Size, Seq: b.Seq, Labels: labels, DocIDs: b.DocIDs})
		if err != nil {
			return err
		}
		for i, t := range shifted {
			if t != data.IgnoreIndex && (t < 0 || t >= v) {
				return fmt.Errorf("label %d at row %d, position %d is outside the vocabulary [0, %d)", t, i/(b.Seq-1), i%(b.Seq-1)+1, v)
			}
		}
		// Per-token losses stay on the device side until reduced to
		// [B, T-1]; the full logits are never copied out.
		var tokLoss []float32
		if b.Seq > 1 {
			ce := s.CrossEntropy(s.Reshape(s.Narrow(logits, 1, 0, in.t-1), -1, v),
				s.FromSliceOn(shifted, m.opt.Device, int64(len(shifted))), torch.ReduceNone, data.IgnoreIndex)
			if s.Err() != nil {
				return s.Err()
			}
			tokLoss = make([]float32, len(shifted))
			if err := ce.CopyTo(tokLoss); err != nil {
				return err
			}
		}
		for r := range b.Size {
			last := 0
			for j := range b.Seq {
				if b.AttentionMask == nil || b.AttentionMask[r*b.Seq+j] != 0 {
					last = j
				}
			}
			row := make([]float32, v)
			next := s.Select(s.Select(logits, 0, int64(r)), 0, int64(last))
			if s.Err() != nil {
				return s.Err()
			}
			if err := next.CopyTo(row); err != nil {
				return err
			}
			out.Logits = append(out.Logits, row)
			var sum float64
			n := 0
			for j := range b.Seq - 1 {
				if shifted[r*(b.Seq-1)+j] != data.IgnoreIndex {
					sum += float64(tokLoss[r*(b.Seq-1)+j])
					n++
				}
			}
			out.Counts = append(out.Counts, n)
			out.Losses = append(out.Losses, sum/float64(n))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("predict: %w", err)
	}
	return out, nil
}

// rowLosses fills per-row losses for a classifier when the batch has labels.
func (m *Model) rowLosses(out *Output, b *data.Batch) error {
	switch {
	case m.task == data.Regression && len(b.Targets) == b.Size:
		for i, t := range b.Targets {
			d := float64(out.Logits[i][0]) - float64(t)
			out.Losses = append(out.Losses, d*d)
		}
	case m.task == data.Classification && len(b.Labels) == b.Size:
		for i, l := range b.Labels {
			if l < 0 || l >= int64(m.numLabels) {
				out.Losses = append(out.Losses, math.NaN())
				continue
			}
			row := out.Logits[i]
			mx := row[0]
			for _, v := range row {
				mx = max(mx, v)
			}
			var z float64
			for _, v := range row {
				z += math.Exp(float64(v - mx))
			}
			out.Losses = append(out.Losses, math.Log(z)+float64(mx)-float64(row[l]))
		}
	}
	return nil
}

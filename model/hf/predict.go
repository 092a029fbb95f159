package hf

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/ringtune/ringtune/data"
)

// PredictInput is one line of a predict input file: text (and an optional
// pair), or token ids with optional mask and token types.
type PredictInput struct {
	Text          string  `json:"text"`
	TextPair      string  `json:"text_pair"`
	InputIDs      []int64 `json:"input_ids"`
	AttentionMask []int64 `json:"attention_mask"`
	TokenTypeIDs  []int64 `json:"token_type_ids"`
}

// PredictOutput is one line of predict output.
type PredictOutput struct {
	Logits          []float32 `json:"logits,omitempty"`
	Label           *int      `json:"label,omitempty"`
	Loss            *float64  `json:"loss,omitempty"`
	NextTokenLogits []float32 `json:"next_token_logits,omitempty"`
}

// PredictJSONL reads input lines from r (name for errors), runs them through
// m in batches of batchSize and writes one JSON line per input to w.
// tok encodes text lines (nil allows only input_ids lines); maxLen caps
// their length (0: the model's positions).
func PredictJSONL(m *Model, tok *data.Tokenizer, r io.Reader, name string, w io.Writer, batchSize, maxLen int) error {
	if batchSize < 1 {
		batchSize = 1
	}
	if maxLen == 0 {
		maxLen = m.cfg.MaxPositions
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	bw := bufio.NewWriter(w)
	var rows []row
	line := 0
	flush := func() error {
		if len(rows) == 0 {
			return nil
		}
		err := m.predictRows(rows, bw)
		rows = rows[:0]
		if err != nil {
			return fmt.Errorf("%s: lines %d and before: %w", name, line, err)
		}
		return nil
	}
	for sc.Scan() {
		line++
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var in PredictInput
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			return fmt.Errorf("%s:%d: not a JSON object: %w", name, line, err)
		}
		rw, err := m.encodeInput(in, tok, maxLen)
		if err != nil {
			return fmt.Errorf("%s:%d: %w", name, line, err)
		}
		rows = append(rows, rw)
		if len(rows) == batchSize {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if err := flush(); err != nil {
		return err
	}
	return bw.Flush()
}

// row is one encoded predict input.
type row struct{ ids, mask, types []int64 }

func (m *Model) encodeInput(in PredictInput, tok *data.Tokenizer, maxLen int) (row, error) {
	if len(in.InputIDs) > 0 {
		n := len(in.InputIDs)
		r := row{ids: in.InputIDs, mask: in.AttentionMask, types: in.TokenTypeIDs}
		if r.mask == nil {
			r.mask = ones(n)
		}
		if r.types == nil {
			r.types = make([]int64, n)
		}
		if len(r.mask) != n || len(r.types) != n {
			return row{}, fmt.Errorf("input_ids has %d entries but attention_mask %d and token_type_ids %d", n, len(r.mask), len(r.types))
		}
		return r, nil
	}
	if in.Text == "" {
		return row{}, fmt.Errorf("line has neither text nor input_ids")
	}
	if tok == nil {
		return row{}, fmt.Errorf("text input needs a tokenizer, and the model directory has none")
	}
	e, err := tok.Encode(data.Example{Text: in.Text, TextPair: in.TextPair}, maxLen)
	if err != nil {
		return row{}, err
	}
	r := row{mask: ones(len(e.IDs))}
	for i := range e.IDs {
		r.ids = append(r.ids, int64(e.IDs[i]))
		r.types = append(r.types, int64(e.TypeIDs[i]))
	}
	return r, nil
}

func ones(n int) []int64 {
	v := make([]int64, n)
	for i := range v {
		v[i] = 1
	}
	return v
}

func (m *Model) predictRows(rows []row, w *bufio.Writer) error {
	seq := 0
	for _, r := range rows {
		seq = max(seq, len(r.ids))
	}
	b := &data.Batch{Size: len(rows), Seq: seq}
	for _, r := range rows {
		pad := seq - len(r.ids)
		b.InputIDs = append(append(b.InputIDs, r.ids...), make([]int64, pad)...)
		b.AttentionMask = append(append(b.AttentionMask, r.mask...), make([]int64, pad)...)
		b.TokenTypeIDs = append(append(b.TokenTypeIDs, r.types...), make([]int64, pad)...)
	}
	out, err := m.Predict(b)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	for i := range rows {
		var o PredictOutput
		if m.task == data.CausalLM {
			o.NextTokenLogits = out.Logits[i]
			l := out.Losses[i]
			if out.Counts[i] > 0 {
				o.Loss = &l
			}
		} else {
			o.Logits = out.Logits[i]
			if m.task == data.Classification {
				o.Label = &out.Labels[i]
			}
		}
		if err := enc.Encode(o); err != nil {
			return err
		}
	}
	return nil
}

// EvaluateFile evaluates m on a dataset file (jsonl, csv or tsv with a text
// field, and a label field unless the task is causal LM) and returns the
// task's metrics.
func EvaluateFile(m *Model, tok *data.Tokenizer, path string, f data.Fields, batchSize, maxLen int) (Metrics, error) {
	f.Task = m.task
	if m.task == data.Classification && f.NumLabels == 0 && len(f.Labels) == 0 {
		f.NumLabels = m.numLabels
	}
	exs, err := data.ReadFile(path, "", f)
	if err != nil {
		return Metrics{}, err
	}
	if maxLen == 0 {
		maxLen = m.cfg.MaxPositions
	}
	enc, err := tok.EncodeAll(filepath.Base(path), exs, maxLen)
	if err != nil {
		return Metrics{}, err
	}
	pad := max(tok.PAD, 0)
	e := m.NewEval()
	for i := 0; i < len(enc); i += max(batchSize, 1) {
		b, err := data.Collate(enc[i:min(i+max(batchSize, 1), len(enc))], m.task, pad)
		if err != nil {
			return Metrics{}, fmt.Errorf("evaluate %s: %w", path, err)
		}
		if err := m.EvalBatch(e, b); err != nil {
			return Metrics{}, fmt.Errorf("evaluate %s: examples %d..: %w", path, i, err)
		}
	}
	return e.Metrics(), nil
}

// EvaluateTokensFile evaluates a causal LM on pre-tokenized rows
// (data.ReadTokens: input_ids, optional -100 labels), each truncated to
// maxLen tokens (0: the model's positions), and returns the mean loss per
// target token and the perplexity.
func EvaluateTokensFile(m *Model, path string, batchSize, maxLen int) (Metrics, error) {
	if m.task != data.CausalLM {
		return Metrics{}, fmt.Errorf("evaluate %s: pre-tokenized rows are causal-LM data, the model's task is %s", path, m.task)
	}
	enc, err := data.ReadTokensFile(path, m.cfg.Vocab)
	if err != nil {
		return Metrics{}, err
	}
	if maxLen == 0 {
		maxLen = m.cfg.MaxPositions
	}
	data.Truncate(enc, maxLen)
	e := m.NewEval()
	pad := max(m.cfg.PadTokenID, 0)
	for i := 0; i < len(enc); i += max(batchSize, 1) {
		b, err := data.Collate(enc[i:min(i+max(batchSize, 1), len(enc))], m.task, pad)
		if err != nil {
			return Metrics{}, fmt.Errorf("evaluate %s: %w", path, err)
		}
		if err := m.EvalBatch(e, b); err != nil {
			return Metrics{}, fmt.Errorf("evaluate %s: rows %d..: %w", path, i, err)
		}
	}
	return e.Metrics(), nil
}

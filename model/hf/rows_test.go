package hf_test

import (
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/safetensors"
)

// TestSplitEmbeddingMatchesPyTorch: with the tied embedding split
// (allreduce.sparse_embedding), the output projection's gradient lands in
// the matrix and the lookups' in the step's rows; folded together they are
// PyTorch's gradient, for GPT-2 and BERT masked LM (tied, with a padding
// row) and BERT classification and Llama (untied: the matrix gets no
// gradient of its own), over two micro-batches, with rows no token of this
// rank used (other ranks' rows) left at zero.
func TestSplitEmbeddingMatchesPyTorch(t *testing.T) {
	for _, tc := range []struct {
		family, task, name string
		tied               bool
	}{
		{"gpt2", "causal_lm", "transformer.wte.weight", true},
		{"bert", "masked_lm", "bert.embeddings.word_embeddings.weight", true},
		{"bert", "classification", "bert.embeddings.word_embeddings.weight", false},
		{"llama", "causal_lm", "model.embed_tokens.weight", false},
	} {
		t.Run(tc.family+"_"+tc.task, func(t *testing.T) {
			dir := t.TempDir()
			oracle(t, "make", tc.family, tc.task, dir)
			ref, err := safetensors.Load(filepath.Join(dir, "ref.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			task := data.Task(tc.task)
			m, err := hf.Load(dir, hf.Options{Task: task, Dropout: zero(), Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if got, tied := m.SplitEmbedding(); got != tc.name || tied != tc.tied {
				t.Fatalf("split embedding %q (tied %v), want %q (%v)", got, tied, tc.name, tc.tied)
			}
			if n, err := m.SetSplitEmbedding(false); err != nil || n != 0 {
				t.Fatalf("split off: %d rows, %v", n, err)
			}
			if err := m.BeginRows([]int64{1}); err == nil {
				t.Errorf("rows begun without a split")
			}
			vocab, err := m.SetSplitEmbedding(true)
			if err != nil {
				t.Fatal(err)
			}
			if vocab != m.Config().Vocab {
				t.Fatalf("split rows %d, vocabulary %d", vocab, m.Config().Vocab)
			}
			// A tied split matrix is the first segment backward finishes,
			// in a bucket group of its own; an untied one is skipped.
			segs, seg := m.GradSegments()
			for i, sp := range m.Params().Specs {
				s := segs[seg[i]]
				switch {
				case sp.Name == tc.name && tc.tied && (s.Order != 0 || s.Group != 2 || s.Skip):
					t.Errorf("segment of %s: order %d group %d skip %v, want 0, 2, false", sp.Name, s.Order, s.Group, s.Skip)
				case sp.Name == tc.name && !tc.tied && !s.Skip:
					t.Errorf("segment of untied %s not skipped", sp.Name)
				case sp.Name != tc.name && (s.Order <= 0 || s.Group == 2 || s.Skip):
					t.Errorf("segment of %s: order %d group %d skip %v", sp.Name, s.Order, s.Group, s.Skip)
				}
			}

			b := readBatch(t, dir, task)
			used := make([]float32, vocab)
			m.MarkRows(b, used)
			var rows []int64
			for i, u := range used {
				// Every third unused row too: another rank's tokens.
				if u > 0 || i%3 == 0 {
					rows = append(rows, int64(i))
				}
			}
			if err := m.BeginRows(rows); err != nil {
				t.Fatal(err)
			}
			if m.RowGradLen() != len(rows)*m.Config().Hidden {
				t.Fatalf("row gradient of %d elements for %d rows", m.RowGradLen(), len(rows))
			}
			var count int
			for range 2 {
				_, n, err := m.ForwardBackward(b)
				if err != nil {
					t.Fatal(err)
				}
				count += n
			}
			h := m.Config().Hidden
			rg := m.RowGrads()
			for k, r := range rows {
				if used[r] == 0 && slices.ContainsFunc(rg[k*h:(k+1)*h], func(v float32) bool { return v != 0 }) {
					t.Fatalf("row %d, used by no token, has a gradient", r)
				}
			}
			// Before the fold the matrix holds the head's part only.
			head := slices.Clone(paramsByName(m, m.GradSlice())[tc.name])
			whole, err := ref.Float32s("grad/" + tc.name)
			if err != nil {
				t.Fatal(err)
			}
			for i := range whole {
				whole[i] *= 2
			}
			if e := relErr(head, whole); e < 1e-3 {
				t.Fatalf("before the fold %s already holds its whole gradient (relative error %.3g): the lookups did not use the rows", tc.name, e)
			}
			if !tc.tied && slices.ContainsFunc(head, func(v float32) bool { return v != 0 }) {
				t.Fatalf("untied %s got a gradient of its own: the lookups did not use the rows", tc.name)
			}
			if err := m.FoldRows(); err != nil {
				t.Fatal(err)
			}
			if m.RowGradLen() != 0 {
				t.Fatalf("rows still held after FoldRows")
			}
			grads := paramsByName(m, m.GradSlice())
			var scale float64
			want := map[string][]float32{}
			for name := range grads {
				v, err := ref.Float32s("grad/" + name)
				if err != nil {
					t.Fatal(err)
				}
				w := make([]float32, len(v))
				for i, x := range v {
					w[i] = 2 * x // two micro-batches of the same batch
					scale = math.Max(scale, math.Abs(float64(w[i])))
				}
				want[name] = w
			}
			for name, g := range grads {
				checkScaled(t, "gradient of "+name, g, want[name], scale)
			}

			// Without the split's rows in use the same model computes the
			// plain tied gradient again.
			if err := m.ZeroGrad(); err != nil {
				t.Fatal(err)
			}
			if _, _, err := m.ForwardBackward(b); err != nil {
				t.Fatal(err)
			}
			v, _ := ref.Float32s("grad/" + tc.name)
			checkScaled(t, "unsplit gradient of "+tc.name, paramsByName(m, m.GradSlice())[tc.name], v, scale/2)
		})
	}
}

// TestSplitEmbeddingErrors: rows that are not ascending, repeat or leave
// the vocabulary are refused before anything is allocated; a batch with a
// token outside the step's rows fails its forward pass naming the token;
// the split cannot change while rows are in use.
func TestSplitEmbeddingErrors(t *testing.T) {
	dir := t.TempDir()
	oracle(t, "make", "gpt2", "causal_lm", dir)
	m, err := hf.Load(dir, hf.Options{Task: data.CausalLM, Dropout: zero(), Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	vocab, err := m.SetSplitEmbedding(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, rows := range [][]int64{{3, 2}, {2, 2}, {-1}, {int64(vocab)}} {
		if err := m.BeginRows(rows); err == nil || !strings.Contains(err.Error(), "ascending, distinct and inside") {
			t.Errorf("rows %v: %v", rows, err)
		}
	}
	b := readBatch(t, dir, data.CausalLM)
	used := make([]float32, vocab)
	m.MarkRows(b, used)
	var rows []int64
	missing := int64(-1)
	for i, u := range used {
		if u > 0 && missing < 0 && i > 0 {
			missing = int64(i) // leave one used row out
			continue
		}
		if u > 0 {
			rows = append(rows, int64(i))
		}
	}
	if err := m.BeginRows(rows); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SetSplitEmbedding(false); err == nil {
		t.Errorf("split turned off with rows in use")
	}
	_, _, err = m.ForwardBackward(b)
	if err == nil || !strings.Contains(err.Error(), "not among the step's") || !strings.Contains(err.Error(), "input id "+strconv.FormatInt(missing, 10)+" ") {
		t.Errorf("token outside the rows: %v", err)
	}
	if err := m.DropRows(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.ForwardBackward(b); err != nil {
		t.Errorf("after DropRows the lookups read the matrix again: %v", err)
	}
}

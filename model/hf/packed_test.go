package hf_test

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

// lmDocs writes pre-tokenized rows (some with -100 labels) to a
// tokens_jsonl file and reads them back through the data package, so the
// tests below start from the same file a user gives.
func lmDocs(t *testing.T, vocab, eos int, lens []int) []data.Encoded {
	t.Helper()
	rng := rand.New(rand.NewSource(7))
	var sb strings.Builder
	for k, n := range lens {
		row := map[string][]int{"input_ids": nil}
		for range n {
			id := rng.Intn(vocab - 2)
			if id >= eos {
				id++ // no eos inside a document
			}
			row["input_ids"] = append(row["input_ids"], id)
		}
		if k%2 == 1 { // a prompt the loss skips
			row["labels"] = append([]int{}, row["input_ids"]...)
			for j := 0; j < n/2; j++ {
				row["labels"][j] = data.IgnoreIndex
			}
		}
		b, _ := json.Marshal(row)
		sb.Write(b)
		sb.WriteByte('\n')
	}
	p := filepath.Join(t.TempDir(), "lm.jsonl")
	if err := os.WriteFile(p, []byte(sb.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	docs, err := data.ReadTokensFile(p, vocab)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

// withEOS is a document as Pack lays it out: followed by eos.
func withEOS(d data.Encoded, eos int) data.Encoded {
	out := data.Encoded{IDs: append(append([]int{}, d.IDs...), eos)}
	out.TypeIDs = make([]int, len(out.IDs))
	if d.Labels != nil {
		out.Labels = append(append([]int{}, d.Labels...), eos)
	}
	return out
}

func relClose(a, b, tol float64) bool {
	return math.Abs(a-b) <= tol*math.Max(math.Abs(a), math.Abs(b))
}

// Pre-tokenized documents packed into shared rows (block-diagonal causal
// attention, positions restarting per document) give each document the
// same summed loss, the same target count and the same gradients as
// feeding the same tokens one sequence at a time.
func TestPackedEqualsOneSequenceAtATime(t *testing.T) {
	for _, family := range []string{"gpt2", "llama"} {
		t.Run(family, func(t *testing.T) {
			const vocab, eos, maxLen = 50, 49, 16
			m, err := hf.Load(tinyDir(t, family), hf.Options{Init: config.InitRandom, Seed: 3, Dropout: zero()})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			docs := lmDocs(t, vocab, eos, []int{5, 9, 3, 6, 2, 11, 4, 7})
			seqs, err := data.Pack(docs, maxLen, eos)
			if err != nil {
				t.Fatal(err)
			}
			if len(seqs) >= len(docs) {
				t.Fatalf("%d documents packed into %d sequences", len(docs), len(seqs))
			}

			// One sequence at a time.
			if err := m.ZeroGrad(); err != nil {
				t.Fatal(err)
			}
			alone := make([]float64, len(docs))
			aloneN := make([]int, len(docs))
			for k, d := range docs {
				b, err := data.Collate([]data.Encoded{withEOS(d, eos)}, data.CausalLM, 0)
				if err != nil {
					t.Fatal(err)
				}
				if alone[k], aloneN[k], err = m.ForwardBackward(b); err != nil {
					t.Fatal(err)
				}
			}
			sepGrad := append([]float32{}, m.GradSlice()...)

			// Packed, all rows in one batch (the last row is padded).
			b, err := data.Collate(seqs, data.CausalLM, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.ZeroGrad(); err != nil {
				t.Fatal(err)
			}
			sum, n, err := m.ForwardBackward(b)
			if err != nil {
				t.Fatal(err)
			}
			var wantSum float64
			wantN := 0
			for k := range docs {
				wantSum += alone[k]
				wantN += aloneN[k]
			}
			if n != wantN {
				t.Fatalf("packed batch has %d targets, one at a time %d", n, wantN)
			}
			targets := 0
			for _, s := range seqs {
				targets += s.Targets()
			}
			if targets != n {
				t.Fatalf("data counts %d targets (the coordinator's divisor), the model %d", targets, n)
			}
			if !relClose(sum, wantSum, 1e-6) {
				t.Errorf("packed loss sum %.9g, one at a time %.9g", sum, wantSum)
			}
			var scale float64
			for _, v := range sepGrad {
				scale = math.Max(scale, math.Abs(float64(v)))
			}
			checkScaled(t, "gradient", m.GradSlice(), sepGrad, scale)

			// Per document: the packed batch with every other document's
			// labels ignored.
			k := 0
			for s, seq := range seqs {
				for d := 0; d <= seq.Docs[len(seq.Docs)-1]; d, k = d+1, k+1 {
					one := *b
					one.Labels = append([]int64{}, b.Labels...)
					for j := range one.Labels {
						r, p := j/b.Seq, j%b.Seq
						if r != s || p >= len(seq.Docs) || seq.Docs[p] != d {
							one.Labels[j] = data.IgnoreIndex
						}
					}
					got, gotN, err := m.ForwardBackward(&one)
					if err != nil {
						t.Fatal(err)
					}
					if gotN != aloneN[k] || !relClose(got, alone[k], 1e-6) {
						t.Errorf("document %d (row %d, document %d there): packed loss %.9g over %d targets, alone %.9g over %d",
							k, s, d, got, gotN, alone[k], aloneN[k])
					}
				}
			}
			if k != len(docs) {
				t.Fatalf("walked %d documents of %d", k, len(docs))
			}
		})
	}
}

// The packed batch's mask, loss and logits equal PyTorch's on the same
// batch with an explicit 4D block-diagonal causal mask and restarting
// position ids, built independently in testdata/hf_ref.py.
func TestPackedMatchesPyTorch(t *testing.T) {
	for _, family := range []string{"gpt2", "llama"} {
		t.Run(family, func(t *testing.T) {
			dir := t.TempDir()
			oracle(t, "make", family, "causal_lm", dir)
			m, err := hf.Load(dir, hf.Options{Task: data.CausalLM, Dropout: zero(), Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			vocab := m.Config().Vocab
			eos := vocab - 1
			docs := lmDocs(t, vocab, eos, []int{4, 6, 2, 9, 3, 5, 1})
			seqs, err := data.Pack(docs, 12, eos)
			if err != nil {
				t.Fatal(err)
			}
			b, err := data.Collate(seqs, data.CausalLM, 0)
			if err != nil {
				t.Fatal(err)
			}
			rows := func(v []int64) [][]int64 {
				var out [][]int64
				for r := range b.Size {
					out = append(out, v[r*b.Seq:(r+1)*b.Seq])
				}
				return out
			}
			raw, _ := json.Marshal(map[string][][]int64{"ids": rows(b.InputIDs), "mask": rows(b.AttentionMask),
				"docs": rows(b.DocIDs), "labels": rows(b.Labels)})
			bp := filepath.Join(dir, "packed.json")
			if err := os.WriteFile(bp, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			var ref struct {
				Loss       float64     `json:"loss"`
				Count      int         `json:"count"`
				LastLogits [][]float32 `json:"last_logits"`
				Mask4      [][][]int   `json:"mask4"`
			}
			if err := json.Unmarshal(oracle(t, "packed", dir, bp), &ref); err != nil {
				t.Fatal(err)
			}

			mask, shape, err := hf.AttnMask(m, b)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(shape) != fmt.Sprint([]int64{int64(b.Size), 1, int64(b.Seq), int64(b.Seq)}) {
				t.Fatalf("mask shape %v", shape)
			}
			bad := 0
			for r := range b.Size {
				for i := range b.Seq {
					for j := range b.Seq {
						got := mask[(r*b.Seq+i)*b.Seq+j]
						want := float32(0)
						if ref.Mask4[r][i][j] == 0 {
							want = -math.MaxFloat32
						}
						if got != want && bad < 5 {
							bad++
							t.Errorf("mask[%d,0,%d,%d] = %g, PyTorch %g", r, i, j, got, want)
						}
					}
				}
			}

			sum, n, err := m.ForwardBackward(b)
			if err != nil {
				t.Fatal(err)
			}
			if n != ref.Count {
				t.Errorf("count %d, PyTorch %d", n, ref.Count)
			}
			check(t, "packed loss sum", []float32{float32(sum)}, []float32{float32(ref.Loss)})
			out, err := m.Predict(b)
			if err != nil {
				t.Fatal(err)
			}
			var got, want []float32
			for r := range b.Size {
				got = append(got, out.Logits[r]...)
				want = append(want, ref.LastLogits[r]...)
			}
			check(t, "packed next-token logits", got, want)
		})
	}
}

// A packed batch's document ids must be contiguous runs, and BERT does not
// take them.
func TestPackedBatchErrors(t *testing.T) {
	m, err := hf.Load(tinyDir(t, "gpt2"), hf.Options{Init: config.InitRandom, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := &data.Batch{Size: 1, Seq: 4, InputIDs: []int64{1, 2, 3, 4}, AttentionMask: []int64{1, 1, 1, 1},
		Labels: []int64{1, 2, 3, 4}, DocIDs: []int64{0, 1, 0, 1}}
	if _, _, err := m.ForwardBackward(b); err == nil || !strings.Contains(err.Error(), "contiguous") {
		t.Errorf("interleaved documents: error %v", err)
	}
	b.DocIDs = []int64{0, 1}
	if _, _, err := m.ForwardBackward(b); err == nil || !strings.Contains(err.Error(), "2 document ids") {
		t.Errorf("short document ids: error %v", err)
	}
	bert, err := hf.Load(tinyDir(t, "bert"), hf.Options{Init: config.InitRandom, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer bert.Close()
	cb := &data.Batch{Size: 1, Seq: 2, InputIDs: []int64{1, 2}, Labels: []int64{0}, DocIDs: []int64{0, 1}}
	if _, _, err := bert.ForwardBackward(cb); err == nil || !strings.Contains(err.Error(), "causal LM only") {
		t.Errorf("packed BERT batch: error %v", err)
	}
}

// Evaluation counts target tokens only: a row whose labels are all -100
// adds nothing (rather than a NaN), and the perplexity is exp of the mean
// token loss of the others.
func TestEvalSkipsRowsWithoutTargets(t *testing.T) {
	m, err := hf.Load(tinyDir(t, "gpt2"), hf.Options{Init: config.InitRandom, Seed: 1, Dropout: zero()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	enc := []data.Encoded{{IDs: []int{3, 4, 5, 6}, Labels: []int{-100, -100, -100, -100}}, {IDs: []int{7, 8, 9}}}
	b, err := data.Collate(enc, data.CausalLM, 0)
	if err != nil {
		t.Fatal(err)
	}
	e := m.NewEval()
	if err := m.EvalBatch(e, b); err != nil {
		t.Fatal(err)
	}
	sum, n, err := m.ForwardBackward(b)
	if err != nil {
		t.Fatal(err)
	}
	mt := e.Metrics()
	if mt.Count != 2 || n != 2 || !relClose(e.LossSum, sum, 1e-5) {
		t.Fatalf("eval: %d targets, loss sum %v; training: %d targets, loss sum %v", mt.Count, e.LossSum, n, sum)
	}
	if math.IsNaN(mt.Perplexity) || !relClose(mt.Perplexity, math.Exp(sum/2), 1e-5) {
		t.Fatalf("perplexity %v, want exp(%v)", mt.Perplexity, sum/2)
	}
}

// EvaluateTokensFile (node eval --format tokens_jsonl) reports the mean
// loss per target token of pre-tokenized rows, -100 labels skipped, and its
// exponential as the perplexity; a bad row names the file and line.
func TestEvaluateTokensFile(t *testing.T) {
	m, err := hf.Load(tinyDir(t, "llama"), hf.Options{Init: config.InitRandom, Seed: 4, Dropout: zero()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p := filepath.Join(t.TempDir(), "eval.jsonl")
	os.WriteFile(p, []byte(`{"input_ids":[5,6,7,8]}
{"input_ids":[9,10,11],"labels":[-100,-100,11]}
`), 0o644)
	mt, err := hf.EvaluateTokensFile(m, p, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := data.Collate([]data.Encoded{{IDs: []int{5, 6, 7, 8}}, {IDs: []int{9, 10, 11}, Labels: []int{-100, -100, 11}}}, data.CausalLM, 0)
	sum, n, err := m.ForwardBackward(b)
	if err != nil {
		t.Fatal(err)
	}
	if mt.Count != 4 || n != 4 || !relClose(mt.Loss, sum/4, 1e-5) || !relClose(mt.Perplexity, math.Exp(sum/4), 1e-5) {
		t.Fatalf("metrics %v; training: %d targets, mean %v", mt, n, sum/float64(n))
	}
	os.WriteFile(p, []byte("{\"input_ids\":[5]}\n{\"input_ids\":[50]}\n"), 0o644)
	if _, err := hf.EvaluateTokensFile(m, p, 1, 0); err == nil || !strings.Contains(err.Error(), p+":2:") {
		t.Errorf("id out of the vocabulary: error %v", err)
	}
}

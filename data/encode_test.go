package data

import (
	"path/filepath"
	"slices"
	"testing"
)

func TestEncodeBERTPairAndTruncation(t *testing.T) {
	d := dataDir(t)
	tk := loadTok(t, filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json"))
	a, _ := tk.IDs("the movie was great")
	b, _ := tk.IDs("i loved it")
	e, err := tk.Encode(Example{Text: "the movie was great", TextPair: "i loved it", Label: 1}, 128)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]int{tk.CLS}, a...), tk.SEP), append(b, tk.SEP)...)
	if !slices.Equal(e.IDs, want) {
		t.Fatalf("ids %v, want [CLS] a [SEP] b [SEP] = %v", e.IDs, want)
	}
	wantTypes := make([]int, len(want))
	for i := len(a) + 2; i < len(want); i++ {
		wantTypes[i] = 1
	}
	if !slices.Equal(e.TypeIDs, wantTypes) || e.Label != 1 {
		t.Fatalf("type ids %v label %d, want %v 1", e.TypeIDs, e.Label, wantTypes)
	}
	// Longest-first as the tokenizers crate: 4+3 tokens into 5 -> 3+2.
	e, err = tk.Encode(Example{Text: "the movie was great", TextPair: "i loved it"}, 8)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{tk.CLS, a[0], a[1], a[2], tk.SEP, b[0], b[1], tk.SEP}; !slices.Equal(e.IDs, want) {
		t.Fatalf("truncated to %v, want %v", e.IDs, want)
	}
	e, _ = tk.Encode(Example{Text: "the movie was great"}, 4)
	if !slices.Equal(e.IDs, []int{tk.CLS, a[0], a[1], tk.SEP}) {
		t.Fatalf("single truncation %v", e.IDs)
	}
	if _, err := tk.Encode(Example{Text: "x", TextPair: "y"}, 3); err == nil {
		t.Fatal("max_length 3 with a pair leaves no room, yet accepted")
	}
}

func TestLongestFirst(t *testing.T) {
	for _, c := range [][5]int{
		// n1, n2, target, want1, want2
		{4, 3, 5, 3, 2},
		{3, 4, 5, 2, 3},
		{10, 2, 6, 4, 2}, // the short text survives whole
		{2, 10, 6, 2, 4},
		{5, 5, 7, 3, 4},
		{3, 3, 6, 3, 3},
	} {
		if a, b := longestFirst(c[0], c[1], c[2]); a != c[3] || b != c[4] || a+b > c[2] {
			t.Errorf("longestFirst(%d, %d, %d) = %d, %d; want %d, %d", c[0], c[1], c[2], a, b, c[3], c[4])
		}
	}
}

func TestCollateClassification(t *testing.T) {
	items := []Encoded{
		{IDs: []int{101, 7, 8, 102}, TypeIDs: []int{0, 0, 0, 0}, Label: 1},
		{IDs: []int{101, 9, 102, 5, 102, 6}, TypeIDs: []int{0, 0, 0, 1, 1, 1}, Label: 0},
	}
	b, err := Collate(items, Classification, 0)
	if err != nil {
		t.Fatal(err)
	}
	if b.Size != 2 || b.Seq != 6 || b.Tokens != 10 {
		t.Fatalf("shape (%d,%d) tokens %d, want (2,6) 10", b.Size, b.Seq, b.Tokens)
	}
	check := func(name string, got, want []int64) {
		if !slices.Equal(got, want) {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("input_ids", b.InputIDs, []int64{101, 7, 8, 102, 0, 0, 101, 9, 102, 5, 102, 6})
	check("attention_mask", b.AttentionMask, []int64{1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1})
	check("token_type_ids", b.TokenTypeIDs, []int64{0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1})
	check("labels", b.Labels, []int64{1, 0})
	if b.Targets != nil {
		t.Error("classification batch has regression targets")
	}
}

func TestCollateCausalLMAndRegression(t *testing.T) {
	const eos = 50256
	items := []Encoded{{IDs: []int{5, 6, 7}, TypeIDs: []int{0, 0, 0}}, {IDs: []int{8}, TypeIDs: []int{0}, Target: 2.5}}
	b, err := Collate(items, CausalLM, eos)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(b.InputIDs, []int64{5, 6, 7, 8, eos, eos}) {
		t.Errorf("input_ids %v", b.InputIDs)
	}
	// Padding is the same id as a real <|endoftext|>; only the mask tells
	// them apart, so labels must follow the mask.
	if !slices.Equal(b.Labels, []int64{5, 6, 7, 8, IgnoreIndex, IgnoreIndex}) || b.Tokens != 4 {
		t.Errorf("labels %v tokens %d", b.Labels, b.Tokens)
	}
	r, err := Collate(items, Regression, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Targets, []float32{0, 2.5}) || r.Labels != nil {
		t.Errorf("targets %v labels %v", r.Targets, r.Labels)
	}
	if _, err := Collate(nil, Classification, 0); err == nil {
		t.Error("empty batch accepted")
	}
	if _, err := Collate(items, "ner", 0); err == nil {
		t.Error("unknown task accepted")
	}
}

func TestEncodeAllSentimentEval(t *testing.T) {
	d := dataDir(t)
	tk := loadTok(t, filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json"))
	exs, err := ReadFile(filepath.Join(d, "sentiment", "eval.jsonl"), "", Fields{Text: "text", Label: "label", Labels: SentimentLabels})
	if err != nil {
		t.Fatal(err)
	}
	encs, err := tk.EncodeAll("eval.jsonl", exs, 32)
	if err != nil {
		t.Fatal(err)
	}
	longest := 0
	for i, e := range encs {
		if len(e.IDs) > 32 || e.IDs[0] != tk.CLS || e.IDs[len(e.IDs)-1] != tk.SEP || e.Label != exs[i].Label {
			t.Fatalf("example %d badly framed: %v", i, e.IDs)
		}
		longest = max(longest, len(e.IDs))
	}
	if longest != 32 {
		t.Errorf("no eval sentence reached max_length 32 (longest %d): truncation untested", longest)
	}
	b, err := Collate(encs[:8], Classification, tk.PAD)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.InputIDs) != b.Size*b.Seq || b.Seq > 32 {
		t.Fatalf("batch shape (%d,%d) with %d ids", b.Size, b.Seq, len(b.InputIDs))
	}
}

package data

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestReadTokens(t *testing.T) {
	p := write(t, "lm.jsonl", `{"input_ids":[5,6,7],"text":"ignored"}

{"input_ids":[1,2],"labels":[-100,2]}
`)
	enc, err := ReadTokensFile(p, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(enc) != 2 {
		t.Fatalf("%d rows, want 2", len(enc))
	}
	if !slices.Equal(enc[0].IDs, []int{5, 6, 7}) || enc[0].Labels != nil || len(enc[0].TypeIDs) != 3 {
		t.Errorf("row 1 = %+v", enc[0])
	}
	if !slices.Equal(enc[1].Labels, []int{-100, 2}) {
		t.Errorf("row 3 labels = %v", enc[1].Labels)
	}
	// Labels reach the batch; -100 and padding are ignored targets.
	b, err := Collate(enc, CausalLM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{5, 6, 7, -100, 2, -100}; !slices.Equal(b.Labels, want) {
		t.Errorf("batch labels %v, want %v", b.Labels, want)
	}
	if b.DocIDs != nil {
		t.Errorf("unpacked batch has document ids %v", b.DocIDs)
	}
	if n := enc[0].Targets() + enc[1].Targets(); n != 3 {
		t.Errorf("targets %d, want 3 (6 and 7 of row 1, 2 of row 3)", n)
	}
	Truncate(enc, 2)
	if !slices.Equal(enc[0].IDs, []int{5, 6}) || len(enc[0].TypeIDs) != 2 {
		t.Errorf("truncated row 1 = %+v", enc[0])
	}
}

// Every kind of bad row is an error that names the file, the line and the
// key.
func TestReadTokensBadRows(t *testing.T) {
	good := `{"input_ids":[1,2,3]}` + "\n"
	for _, tc := range []struct {
		name, row string
		want      []string
	}{
		{"not JSON", `{"input_ids":[1,2`, []string{"bad JSON"}},
		{"two values", `{"input_ids":[1]} {"input_ids":[2]}`, []string{"more than one value"}},
		{"no input_ids", `{"ids":[1,2]}`, []string{`"input_ids"`, "missing"}},
		{"null input_ids", `{"input_ids":null}`, []string{`"input_ids"`, "missing"}},
		{"not an array", `{"input_ids":"1 2 3"}`, []string{`"input_ids"`, "array", `"1 2 3"`}},
		{"float id", `{"input_ids":[1,2.5]}`, []string{`"input_ids"`, "element 1", "2.5", "not an integer"}},
		{"string id", `{"input_ids":[1,"2"]}`, []string{`"input_ids"`, "element 1", `"2"`, "not an integer"}},
		{"nested", `{"input_ids":[[1,2]]}`, []string{`"input_ids"`, "element 0", "array"}},
		{"id too large", `{"input_ids":[1,50]}`, []string{`"input_ids"`, "element 1", "50", "[0, 50)"}},
		{"negative id", `{"input_ids":[-1]}`, []string{`"input_ids"`, "element 0", "-1", "vocabulary"}},
		{"-100 input id", `{"input_ids":[-100]}`, []string{`"input_ids"`, "-100", "vocabulary"}},
		{"empty", `{"input_ids":[]}`, []string{`"input_ids"`, "empty"}},
		{"labels length", `{"input_ids":[1,2,3],"labels":[1,2]}`, []string{`"labels"`, "2 labels for 3 input_ids"}},
		{"label out of range", `{"input_ids":[1,2],"labels":[-100,99]}`, []string{`"labels"`, "element 1", "99", "-100 to skip"}},
		{"label not integer", `{"input_ids":[1,2],"labels":[true,1]}`, []string{`"labels"`, "element 0", "true"}},
		{"array row", `[1,2,3]`, []string{"bad JSON"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(t, "bad.jsonl", good+"\n"+tc.row+"\n"+good)
			_, err := ReadTokensFile(p, 50)
			if err == nil {
				t.Fatalf("row %s: no error", tc.row)
			}
			for _, w := range append([]string{p + ":3:"}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := ReadTokensFile(write(t, "empty.jsonl", "\n\n"), 50); err == nil || !strings.Contains(err.Error(), "no rows") {
		t.Errorf("empty file: error %v", err)
	}
	if _, err := ReadTokensFile("/nonexistent/x.jsonl", 50); err == nil || !strings.Contains(err.Error(), "/nonexistent/x.jsonl") {
		t.Errorf("missing file: error %v", err)
	}
}

func TestPack(t *testing.T) {
	const eos = 9
	docs := []Encoded{
		{IDs: []int{1, 2, 3}},                         // + eos: 4 tokens
		{IDs: []int{4, eos}},                          // already ends with eos: 2
		{IDs: []int{5, 6}, Labels: []int{-100, 6}},    // + eos: 3, doesn't fit the 2 left
		{IDs: []int{7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7}}, // + eos: 12 = 6 + 6 pieces
		{IDs: []int{8}},                               // + eos: 2
	}
	seqs, err := Pack(docs, 6, eos)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ ids, labels, docs []int }{
		{[]int{1, 2, 3, eos, 4, eos}, []int{1, 2, 3, eos, 4, eos}, []int{0, 0, 0, 0, 1, 1}},
		{[]int{5, 6, eos}, []int{-100, 6, eos}, []int{0, 0, 0}},
		{[]int{7, 7, 7, 7, 7, 7}, []int{7, 7, 7, 7, 7, 7}, []int{0, 0, 0, 0, 0, 0}},
		{[]int{7, 7, 7, 7, 7, eos}, []int{7, 7, 7, 7, 7, eos}, []int{0, 0, 0, 0, 0, 0}},
		{[]int{8, eos}, []int{8, eos}, []int{0, 0}},
	}
	if len(seqs) != len(want) {
		t.Fatalf("%d sequences, want %d: %+v", len(seqs), len(want), seqs)
	}
	for i, w := range want {
		s := seqs[i]
		if !slices.Equal(s.IDs, w.ids) || !slices.Equal(s.Labels, w.labels) || !slices.Equal(s.Docs, w.docs) || len(s.TypeIDs) != len(s.IDs) {
			t.Errorf("sequence %d = ids %v labels %v docs %v, want %v %v %v", i, s.IDs, s.Labels, s.Docs, w.ids, w.labels, w.docs)
		}
	}
	if !slices.Equal(docs[0].IDs, []int{1, 2, 3}) {
		t.Errorf("Pack changed its input: %v", docs[0].IDs)
	}
	// Targets: a document's first token is never a target.
	if n := seqs[0].Targets(); n != 4 {
		t.Errorf("sequence 0 has %d targets, want 4 (2, 3, eos; eos)", n)
	}
	if n := seqs[1].Targets(); n != 2 {
		t.Errorf("sequence 1 has %d targets, want 2", n)
	}
	// Deterministic.
	again, _ := Pack(docs, 6, eos)
	if fmt.Sprint(again) != fmt.Sprint(seqs) {
		t.Error("packing the same documents twice differs")
	}

	// Collated: padding continues the last document and is ignored.
	b, err := Collate(seqs[:2], CausalLM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0}; !slices.Equal(b.DocIDs, want) {
		t.Errorf("doc ids %v, want %v", b.DocIDs, want)
	}
	if want := []int64{0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5}; !slices.Equal(b.PositionIDs(), want) {
		t.Errorf("position ids %v, want %v", b.PositionIDs(), want)
	}
	if want := []int64{-100, 6, eos, -100, -100, -100}; !slices.Equal(b.Labels[6:], want) {
		t.Errorf("row 1 labels %v, want %v", b.Labels[6:], want)
	}
	if err := b.CheckDocIDs(); err != nil {
		t.Error(err)
	}
	b.DocIDs[5] = 0
	if err := b.CheckDocIDs(); err == nil || !strings.Contains(err.Error(), "row 0") || !strings.Contains(err.Error(), "position 5") {
		t.Errorf("decreasing doc ids: error %v", err)
	}
	if _, err := Collate(seqs[:1], Classification, 0); err == nil || !strings.Contains(err.Error(), "causal_lm") {
		t.Errorf("packed classification batch: error %v", err)
	}
}

func TestPackErrors(t *testing.T) {
	if _, err := Pack([]Encoded{{IDs: []int{1}}}, 8, -1); err == nil || !strings.Contains(err.Error(), "eos_token_id") {
		t.Errorf("no eos: error %v", err)
	}
	if _, err := Pack([]Encoded{{IDs: []int{1}}}, 1, 0); err == nil || !strings.Contains(err.Error(), "max_length 1") {
		t.Errorf("max_length 1: error %v", err)
	}
	if _, err := Pack([]Encoded{{IDs: []int{1}}, {}}, 8, 0); err == nil || !strings.Contains(err.Error(), "document 1") {
		t.Errorf("empty document: error %v", err)
	}
}

package data

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func writeFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadBrownStripsTags(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, filepath.Join(dir, "ca01"), "\n\n\tThe/at Fulton/np-tl jury/nn said/vbd 1/2/cd ./.\n\n\n\tIt/pps didn't/dod* ./.\n")
	ss, err := ReadBrownFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 {
		t.Fatalf("%d sentences, want 2", len(ss))
	}
	if got := ss[0].Text(); got != "The Fulton jury said 1/2 ." {
		t.Errorf("text %q: tags not stripped (or a word with a slash split wrongly)", got)
	}
	if !slices.Equal(ss[0].Tags, []string{"at", "np-tl", "nn", "vbd", "cd", "."}) || ss[0].Line != 3 || ss[1].Line != 6 {
		t.Errorf("tags %v, lines %d and %d", ss[0].Tags, ss[0].Line, ss[1].Line)
	}
	// Only corpus files are listed.
	writeFile(t, filepath.Join(dir, "README"), "x")
	writeFile(t, filepath.Join(dir, "cats.txt"), "x")
	files, err := BrownFiles(dir)
	if err != nil || len(files) != 1 || filepath.Base(files[0]) != "ca01" {
		t.Errorf("BrownFiles = %v, %v", files, err)
	}
}

func TestMalformedCorpusFilesNameTheLine(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name, body, want string
		read             func(string) ([]Sentence, error)
	}{
		{"cb01", "\tGood/jj line/nn ./.\n\n\tno-tag-here/nn broken ./.\n", "cb01:3: token \"broken\" is not word/tag", ReadBrownFile},
		{"cb02", "\tempty/ tag\n", "cb02:1: token \"empty/\"", ReadBrownFile},
		{"builds/doc-1.json", "[\n  \"one\",\n  \"two\",\n  3\n]", "doc-1.json:4: want a sentence", ReadNLPCorpusFile},
		{"builds/doc-2.json", "[\n  \"one\",\n  \"two\"\n  \"three\"\n]", "doc-2.json:4: bad JSON", ReadNLPCorpusFile},
		{"builds/doc-3.json", "{\"a\": 1}", "doc-3.json:1: want a JSON array", ReadNLPCorpusFile},
	}
	for _, tc := range cases {
		p := writeFile(t, filepath.Join(dir, tc.name), tc.body)
		_, err := tc.read(p)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %v, want the path and %q", tc.name, err, tc.want)
		}
	}
	good := writeFile(t, filepath.Join(dir, "builds/doc-0.json"), "[\n  \"First one.\",\n  \"  \",\n  \"Second one.\"\n]")
	ss, err := ReadNLPCorpusFile(good)
	if err != nil || len(ss) != 2 || ss[1].Text() != "Second one." || ss[1].Line != 4 {
		t.Errorf("good nlp-corpus file: %+v, %v", ss, err)
	}
}

func TestCoarseTagMap(t *testing.T) {
	for tag, want := range map[string]string{
		"nn": "NOUN", "np-tl": "NOUN", "nns$": "NOUN", "np$-hl": "NOUN", "nr": "NOUN",
		"vbd": "VERB", "bedz": "VERB", "md*": "VERB", "dod*": "VERB", "hvz": "VERB",
		"jj-tl": "ADJ", "od": "ADJ", "jjt": "ADJ",
		"rb": "ADV", "ql": "ADV", "wrb": "ADV",
		"pps": "PRON", "pp$": "PRON", "pp$$": "PRON", "wp$": "PRON", "ppss+ber": "PRON",
		"at": "DET", "dt+bez": "DET", "wdt": "DET", "ex": "DET", "abn": "DET",
		"in": "ADP", "in-tl": "ADP", "cd": "NUM", "cc": "CONJ", "cs": "CONJ",
		"to": "PRT", "rp": "PRT", "*": "PRT",
		".": ".", ",": ".", "``": ".", "''": ".", "--": ".", "(": ".",
		"fw-nn": "X", "fw-in+at": "X", "uh": "X", "nil": "X", "zz": "X", "NN": "NOUN",
	} {
		if got := CoarseTag(tag); got != want {
			t.Errorf("CoarseTag(%q) = %q, want %q", tag, got, want)
		}
		if !slices.Contains(CoarseTags, want) {
			t.Errorf("%q is not in CoarseTags", want)
		}
	}
}

func TestDedupAgainstHeldOut(t *testing.T) {
	d := NewDedup([]string{
		"This movie was a complete waste of my time and money, avoid it.",
		"Great phone.",
	})
	for text, want := range map[string]bool{
		"this MOVIE was a complete waste of my time -- and money":              true, // casing and punctuation differ
		"He said: this movie was a complete waste of my time and nothing else": true,
		"great phone!":                         true,
		"A great phone for the price, really.": false, // a short held-out text only matches whole
		"This movie was a complete delight.":   false,
	} {
		if got := d.Overlaps(text); got != want {
			t.Errorf("Overlaps(%q) = %v, want %v", text, got, want)
		}
	}
}

// TestPreparedCorpusHasNoLeak checks the sets fetch-data.sh builds: no
// pre-training sentence overlaps the sentiment eval split or the held-out
// slice, the POS sets use the coarse tags only, and the held-out slice is
// the fixed one.
func TestPreparedCorpusHasNoLeak(t *testing.T) {
	d := dataDir(t)
	corpus := filepath.Join(d, "corpus")
	if _, err := os.Stat(filepath.Join(corpus, MLMTrainFile)); err != nil {
		t.Fatalf("%v: run scripts/fetch-data.sh", err)
	}
	sent, err := ReadFile(filepath.Join(d, "sentiment", "eval.jsonl"), "jsonl", Fields{Text: "text", Task: MaskedLM})
	if err != nil {
		t.Fatal(err)
	}
	held, err := ReadFile(filepath.Join(corpus, MLMEvalFile), "jsonl", Fields{Text: "text", Task: MaskedLM})
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != HeldOutSentences {
		t.Errorf("%d held-out sentences, want %d", len(held), HeldOutSentences)
	}
	var out []string
	for _, e := range append(sent, held...) {
		out = append(out, e.Text)
	}
	dd := NewDedup(out)
	train, err := ReadFile(filepath.Join(corpus, MLMTrainFile), "jsonl", Fields{Text: "text", Task: MaskedLM})
	if err != nil {
		t.Fatal(err)
	}
	if len(train) < 100000 {
		t.Errorf("only %d pre-training sentences", len(train))
	}
	for _, e := range train {
		if dd.Overlaps(e.Text) {
			t.Fatalf("%s line %d overlaps held-out or sentiment eval text: %q", MLMTrainFile, e.Line, e.Text)
		}
	}
	f, err := os.Open(filepath.Join(corpus, POSEvalFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r struct {
			Words, Tags []string
			Source      string
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if len(r.Words) != len(r.Tags) {
			t.Fatalf("%s: %d words, %d tags", r.Source, len(r.Words), len(r.Tags))
		}
		for _, tg := range r.Tags {
			if !slices.Contains(CoarseTags, tg) {
				t.Fatalf("%s: tag %q is not a coarse tag", r.Source, tg)
			}
		}
	}
	if _, err := ReadWordsFile(filepath.Join(corpus, POSEvalFile), "words", "tags", CoarseTags); err != nil {
		t.Fatal(err)
	}
}

func TestEncodeWordsLabelsFirstSubToken(t *testing.T) {
	tok, err := LoadTokenizer(filepath.Join(dataDir(t), "tokenizers", "bert-base-uncased", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	w := Words{Words: []string{"The", "presentments", "said", "."}, Tags: []int{5, 0, 1, 10}}
	e, err := tok.EncodeWords(w, 64)
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := tok.IDs("presentments")
	if len(sub) < 2 {
		t.Fatalf("%q is one word piece; pick a rarer word for this test", "presentments")
	}
	want := []int{IgnoreIndex, 5, 0}
	for range sub[1:] {
		want = append(want, IgnoreIndex)
	}
	want = append(want, 1, 10, IgnoreIndex)
	if !slices.Equal(e.Labels, want) || len(e.IDs) != len(want) || e.IDs[0] != tok.CLS || e.IDs[len(e.IDs)-1] != tok.SEP {
		t.Errorf("labels %v (ids %v), want %v framed by [CLS]/[SEP]", e.Labels, e.IDs, want)
	}
	// The cached batch encoder agrees with the single one.
	all, err := tok.EncodeAllWords("x", []Words{w, {Words: []string{"said", "presentments"}, Tags: []int{1, 0}}, w}, 64)
	if err != nil || !slices.Equal(all[2].IDs, e.IDs) || !slices.Equal(all[2].Labels, e.Labels) || all[1].IDs[2] != sub[0] {
		t.Errorf("EncodeAllWords: %v, %v", all, err)
	}
	// Truncation keeps [SEP] and drops the labels of words cut off.
	e, err = tok.EncodeWords(w, 4)
	if err != nil || !slices.Equal(e.Labels, []int{IgnoreIndex, 5, 0, IgnoreIndex}) || e.IDs[3] != tok.SEP {
		t.Errorf("truncated: labels %v ids %v err %v", e.Labels, e.IDs, err)
	}
	b, err := Collate([]Encoded{e, {IDs: []int{tok.CLS, tok.SEP}, TypeIDs: []int{0, 0}, Labels: []int{IgnoreIndex, IgnoreIndex}}}, TokenClassification, tok.PAD)
	if err != nil || !slices.Equal(b.Labels, []int64{-100, 5, 0, -100, -100, -100, -100, -100}) {
		t.Errorf("collated labels %v, err %v", b.Labels, err)
	}
	if _, err := Collate([]Encoded{{IDs: []int{1, 2}, TypeIDs: []int{0, 0}}}, TokenClassification, 0); err == nil {
		t.Error("collated token-classification items without labels")
	}
}

func TestReadWordsFileErrorsNameTheLine(t *testing.T) {
	dir := t.TempDir()
	labels := []string{"NOUN", "VERB"}
	for body, want := range map[string]string{
		`{"words": ["a", "b"], "tags": ["NOUN", "VERB"]}` + "\n" + `{"words": ["a"], "tags": ["NOUN", "VERB"]}`: ":2: field \"tags\": want an array of 1 tags",
		`{"words": ["a"], "tags": ["ADJ"]}`: ":1: field \"tags\": tag \"ADJ\" of word 1 is not in model.labels",
		`{"words": [], "tags": []}`:         ":1: field \"words\": want a non-empty array",
		`{"words": ["a"], "tags": [7]}`:     ":1: field \"tags\": tag 7 of word 1 is not a class id in [0, 2)",
		`not json`:                          ":1: bad JSON",
	} {
		p := writeFile(t, filepath.Join(dir, "w.jsonl"), body)
		if _, err := ReadWordsFile(p, "words", "tags", labels); err == nil || !strings.Contains(err.Error(), p+want) {
			t.Errorf("error %v, want %q", err, p+want)
		}
	}
}

func TestMaskingIsDeterministicAndFollowsHF(t *testing.T) {
	const vocab, mask, cls, sep, pad = 1000, 3, 1, 2, 0
	c := MaskConfig{Prob: 0.15, Seed: 42, Mask: mask, Vocab: vocab, Special: []int{cls, sep, pad}}
	ids := []int{cls}
	for i := range 5000 {
		ids = append(ids, 10+i%900)
	}
	ids = append(ids, sep)
	e := Encoded{IDs: ids, TypeIDs: make([]int, len(ids))}
	a := c.Apply(e, 0, 7)
	if !slices.Equal(a.IDs, c.Apply(e, 0, 7).IDs) || !slices.Equal(a.Labels, c.Apply(e, 0, 7).Labels) {
		t.Fatal("same (seed, epoch, sample) masked differently")
	}
	for _, other := range []Encoded{c.Apply(e, 1, 7), c.Apply(e, 0, 8), (MaskConfig{Prob: 0.15, Seed: 43, Mask: mask, Vocab: vocab, Special: c.Special}).Apply(e, 0, 7)} {
		if slices.Equal(a.Labels, other.Labels) {
			t.Error("another epoch, sample or seed gave the same masks")
		}
	}
	if !slices.Equal(e.IDs, ids) {
		t.Fatal("Apply changed its input")
	}
	var selected, masked, random, kept int
	for i, l := range a.Labels {
		if i == 0 || i == len(ids)-1 {
			if l != IgnoreIndex || a.IDs[i] != ids[i] {
				t.Fatalf("special token at %d masked", i)
			}
			continue
		}
		if l == IgnoreIndex {
			if a.IDs[i] != ids[i] {
				t.Fatalf("unselected token %d changed", i)
			}
			continue
		}
		if l != ids[i] {
			t.Fatalf("label %d at %d, want the original id %d", l, i, ids[i])
		}
		selected++
		switch a.IDs[i] {
		case mask:
			masked++
		case ids[i]:
			kept++
		default:
			random++
		}
	}
	// 5000 tokens: 750 expected selected (sd ≈ 25); 80/10/10 of those.
	if selected < 650 || selected > 850 {
		t.Errorf("%d of 5000 tokens selected, want about 15%%", selected)
	}
	fm, fr, fk := float64(masked)/float64(selected), float64(random)/float64(selected), float64(kept)/float64(selected)
	if fm < 0.74 || fm > 0.86 || fr < 0.06 || fr > 0.14 || fk < 0.06 || fk > 0.14 {
		t.Errorf("[MASK] %.3f, random %.3f, kept %.3f of selected; want 0.8/0.1/0.1", fm, fr, fk)
	}
	tok, err := LoadTokenizer(filepath.Join(dataDir(t), "tokenizers", "bert-base-uncased", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	mc, err := MaskConfigFor(tok, 0.15, 1)
	if err != nil || mc.Mask != 103 || mc.Vocab != 30522 {
		t.Errorf("BERT uncased masking %+v, %v: want [MASK] 103 and 30522 ids", mc, err)
	}
	gpt, err := LoadTokenizer(filepath.Join(dataDir(t), "tokenizers", "gpt2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MaskConfigFor(gpt, 0.15, 1); err == nil || !strings.Contains(err.Error(), "[MASK]") {
		t.Errorf("GPT-2 tokenizer accepted for masked LM: %v", err)
	}
}

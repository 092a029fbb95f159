package data

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

type referenceCase struct {
	Text string `json:"text"`
	BERT []int  `json:"bert"`
	GPT2 []int  `json:"gpt2"`
}

func references(t *testing.T) []referenceCase {
	t.Helper()
	raw, err := os.ReadFile("testdata/reference_ids.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct{ Cases []referenceCase }
	if err := json.Unmarshal(raw, &ref); err != nil {
		t.Fatal(err)
	}
	if len(ref.Cases) < 300 {
		t.Fatalf("reference fixture has %d cases, want >= 300", len(ref.Cases))
	}
	return ref.Cases
}

// compare checks our ids against the reference for every case and reports
// the first few mismatches with both token lists.
func compare(t *testing.T, tk *Tokenizer, cases []referenceCase, want func(referenceCase) []int) {
	t.Helper()
	bad := 0
	for _, c := range cases {
		got, err := tk.IDs(c.Text)
		if err != nil {
			t.Fatalf("%q: %v", c.Text, err)
		}
		if !slices.Equal(got, want(c)) {
			bad++
			if bad <= 5 {
				t.Errorf("%q:\n got  %v\n want %v", c.Text, got, want(c))
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d sentences differ from the reference", bad, len(cases))
	}
}

func TestBERTTokenizerJSONMatchesReference(t *testing.T) {
	d := dataDir(t)
	tk := loadTok(t, filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json"))
	if tk.Style() != StyleBERT || tk.CLS != 101 || tk.SEP != 102 || tk.PAD != 0 || tk.VocabSize() != 30522 {
		t.Fatalf("style %v cls %d sep %d pad %d vocab %d: not bert-base-uncased", tk.Style(), tk.CLS, tk.SEP, tk.PAD, tk.VocabSize())
	}
	compare(t, tk, references(t), func(c referenceCase) []int { return c.BERT })
}

func TestBERTVocabTxtMatchesReference(t *testing.T) {
	d := dataDir(t)
	// Derive vocab.txt from the tokenizer.json, as a BERT checkpoint ships it.
	raw, err := os.ReadFile(filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tj struct {
		Model struct{ Vocab map[string]int } `json:"model"`
	}
	if err := json.Unmarshal(raw, &tj); err != nil {
		t.Fatal(err)
	}
	toks := make([]string, len(tj.Model.Vocab))
	for tok, id := range tj.Model.Vocab {
		toks[id] = tok
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vocab.txt"), []byte(strings.Join(toks, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tk := loadTok(t, dir) // a directory: LoadTokenizer must find vocab.txt
	if !strings.HasSuffix(tk.Path(), "vocab.txt") || tk.Style() != StyleBERT {
		t.Fatalf("loaded %s style %v", tk.Path(), tk.Style())
	}
	compare(t, tk, references(t), func(c referenceCase) []int { return c.BERT })
}

func TestGPT2VocabAndMergesMatchReference(t *testing.T) {
	d := dataDir(t)
	tk := loadTok(t, filepath.Join(d, "tokenizers", "gpt2"))
	if tk.Style() != StyleGPT2 || tk.EOS != 50256 || tk.PAD != 50256 {
		t.Fatalf("style %v eos %d pad %d: not GPT-2", tk.Style(), tk.EOS, tk.PAD)
	}
	compare(t, tk, references(t), func(c referenceCase) []int { return c.GPT2 })
}

func TestMalformedTokenizerJSONIsAnError(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		// sugarme/tokenizer type-asserts "type" to string and panics.
		"panic.json":   `{"model": {"type": 42, "vocab": {}}}`,
		"syntax.json":  `{"model": {`,
		"nomodel.json": `{"normalizer": null}`,
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(cases[name]), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadTokenizer(p)
		if err == nil {
			t.Errorf("%s: malformed tokenizer accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", name, err)
		}
		if name == "panic.json" && !strings.Contains(err.Error(), "panicked") {
			t.Errorf("panic.json: want the recovered panic reported, got %q", err)
		}
	}
}

func TestTokenizerFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadTokenizer(filepath.Join(dir, "absent")); err == nil {
		t.Error("missing path accepted")
	}
	if _, err := LoadTokenizer(dir); err == nil || !strings.Contains(err.Error(), "none of tokenizer.json") {
		t.Errorf("empty directory: got %v", err)
	}
	vocab := filepath.Join(dir, "vocab.txt")
	os.WriteFile(vocab, []byte("[PAD]\nhello\n"), 0o644)
	if _, err := LoadTokenizer(vocab); err == nil || !strings.Contains(err.Error(), "no [UNK] token") || !strings.Contains(err.Error(), vocab) {
		t.Errorf("vocab.txt without specials: got %v", err)
	}
	g := filepath.Join(dir, "g")
	os.MkdirAll(g, 0o755)
	os.WriteFile(filepath.Join(g, "vocab.json"), []byte(`{"a":0,"b":1,"<|endoftext|>":2}`), 0o644)
	if _, err := LoadTokenizer(g); err == nil || !strings.Contains(err.Error(), "merges.txt") {
		t.Errorf("vocab.json without merges.txt: got %v", err)
	}
	os.WriteFile(filepath.Join(g, "merges.txt"), []byte("#version: 0.2\na b\n"), 0o644)
	if _, err := LoadTokenizer(g); err == nil || !strings.Contains(err.Error(), `merges.txt:2: merge result "ab" is not in`) {
		t.Errorf("merge into unknown token: got %v", err)
	}
}

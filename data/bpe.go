package data

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"unicode/utf8"
)

// byteBPE is GPT-2's byte-level BPE, written out because sugarme/tokenizer's
// BPE merges in the wrong order on runs of a repeated pair ("....." came out
// as "..." ".." instead of the single "....." token); the reference test
// against OpenAI's encoder caught it. This follows encoder.py: take the
// lowest-ranked pair, merge all its occurrences left to right, repeat.
type byteBPE struct {
	vocab map[string]int
	ranks map[[2]string]int
	mu    sync.Mutex
	cache map[string][]int
}

// gpt2Split is GPT-2's pre-tokenisation pattern with \s spelt out as
// JavaScript's and Python's Unicode whitespace (Go's \s is ASCII only).
// The pattern's `\s+(?!\S)` alternative needs a lookahead, which Go lacks;
// splitPieces emulates it.
var gpt2Split = regexp.MustCompile(`'s|'t|'re|'ve|'m|'ll|'d| ?\pL+| ?\pN+| ?[^` + ws + `\pL\pN]+|[` + ws + `]+`)

const ws = `\t\n\v\f\r \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}\x{feff}`

var isWS = regexp.MustCompile(`^[` + ws + `]+$`)

// byteToRune is GPT-2's bytes_to_unicode: printable bytes map to themselves,
// the rest to code points from 256 up, so every byte is a visible symbol.
var byteToRune = func() [256]rune {
	var m [256]rune
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			m[b] = rune(b)
		} else {
			m[b] = rune(256 + n)
			n++
		}
	}
	return m
}()

func newByteBPE(vocab map[string]int, merges [][2]string) *byteBPE {
	ranks := make(map[[2]string]int, len(merges))
	for i, m := range merges {
		if _, dup := ranks[m]; !dup {
			ranks[m] = i
		}
	}
	return &byteBPE{vocab: vocab, ranks: ranks, cache: map[string][]int{}}
}

// splitPieces applies gpt2Split, then gives a whitespace run's last
// character to the following token, which is what `\s+(?!\S)` achieves:
// "a   b" splits as "a", "  ", " b".
func splitPieces(text string) []string {
	var out []string
	pos := 0
	for pos < len(text) {
		loc := gpt2Split.FindStringIndex(text[pos:])
		if loc == nil {
			break
		}
		start, end := pos+loc[0], pos+loc[1]
		piece := text[start:end]
		if end < len(text) && isWS.MatchString(piece) && utf8.RuneCountInString(piece) > 1 {
			_, size := utf8.DecodeLastRuneInString(piece)
			end -= size
			piece = text[start:end]
		}
		out = append(out, piece)
		pos = end
	}
	return out
}

func (m *byteBPE) encode(text string) ([]int, error) {
	var ids []int
	for _, piece := range splitPieces(text) {
		m.mu.Lock()
		cached, ok := m.cache[piece]
		m.mu.Unlock()
		if ok {
			ids = append(ids, cached...)
			continue
		}
		var sb strings.Builder
		for i := 0; i < len(piece); i++ {
			sb.WriteRune(byteToRune[piece[i]])
		}
		var pieceIDs []int
		for _, tok := range m.merge(sb.String()) {
			id, ok := m.vocab[tok]
			if !ok {
				return nil, fmt.Errorf("byte-level BPE: token %q not in the vocabulary (vocab and merges do not belong together)", tok)
			}
			pieceIDs = append(pieceIDs, id)
		}
		m.mu.Lock()
		m.cache[piece] = pieceIDs
		m.mu.Unlock()
		ids = append(ids, pieceIDs...)
	}
	return ids, nil
}

func (m *byteBPE) merge(token string) []string {
	var word []string
	for _, r := range token {
		word = append(word, string(r))
	}
	for len(word) > 1 {
		best, bestRank := [2]string{}, -1
		for i := 0; i+1 < len(word); i++ {
			p := [2]string{word[i], word[i+1]}
			if r, ok := m.ranks[p]; ok && (bestRank < 0 || r < bestRank) {
				best, bestRank = p, r
			}
		}
		if bestRank < 0 {
			break
		}
		next := word[:0:0]
		for i := 0; i < len(word); {
			if i+1 < len(word) && word[i] == best[0] && word[i+1] == best[1] {
				next = append(next, best[0]+best[1])
				i += 2
			} else {
				next = append(next, word[i])
				i++
			}
		}
		word = next
	}
	return word
}

package data

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
)

// FormatTokens is the data.format of pre-tokenized causal-LM data: JSONL
// rows {"input_ids": [...], "labels": [...]} whose labels are optional.
const FormatTokens = "tokens_jsonl"

// ReadTokensFile reads pre-tokenized causal-LM rows (see ReadTokens) from
// path.
func ReadTokensFile(path string, vocab int) ([]Encoded, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read dataset: %w", err)
	}
	defer f.Close()
	return ReadTokens(f, path, vocab)
}

// ReadTokens reads pre-tokenized causal-LM data, as LLM toolkits write it:
// one JSON object per line with "input_ids", a non-empty array of token
// ids in [0, vocab), and optionally "labels", an array of the same length
// holding token ids or IgnoreIndex (-100) for positions the loss skips (a
// prompt, say). Without labels every token is a target. Other keys are
// ignored; blank lines are skipped. Rows are not truncated here (see
// Truncate and Pack). Every error names the file, the line and the key;
// name is the file name used in errors. vocab <= 0 skips the range check.
func ReadTokens(r io.Reader, name string, vocab int) ([]Encoded, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 256<<20)
	var out []Encoded
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		e, err := tokenRow(b, vocab)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no rows: want one JSON object with input_ids per line", name)
	}
	return out, nil
}

func tokenRow(b []byte, vocab int) (Encoded, error) {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil {
		return Encoded{}, fmt.Errorf("bad JSON: %v", err)
	}
	if dec.More() {
		return Encoded{}, fmt.Errorf("bad JSON: more than one value on the line")
	}
	raw, ok := obj["input_ids"]
	if !ok || raw == nil {
		return Encoded{}, fmt.Errorf(`key "input_ids": missing: every row needs its token ids`)
	}
	ids, err := intArray("input_ids", raw, vocab, false)
	if err != nil {
		return Encoded{}, err
	}
	if len(ids) == 0 {
		return Encoded{}, fmt.Errorf(`key "input_ids": empty: a row needs at least one token`)
	}
	e := Encoded{IDs: ids, TypeIDs: make([]int, len(ids))}
	if raw, ok := obj["labels"]; ok && raw != nil {
		if e.Labels, err = intArray("labels", raw, vocab, true); err != nil {
			return Encoded{}, err
		}
		if len(e.Labels) != len(ids) {
			return Encoded{}, fmt.Errorf(`key "labels": %d labels for %d input_ids: want one per token (-100 to skip one)`, len(e.Labels), len(ids))
		}
	}
	return e, nil
}

// intArray checks that v is a JSON array of integer token ids in [0, vocab)
// (or IgnoreIndex, when ignore is true).
func intArray(key string, v any, vocab int, ignore bool) ([]int, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("key %q: want an array of integer token ids, got %s", key, jsonKind(v))
	}
	out := make([]int, len(arr))
	for i, x := range arr {
		n, ok := x.(json.Number)
		var id int64
		var err error
		if ok {
			id, err = n.Int64()
		}
		if !ok || err != nil {
			return nil, fmt.Errorf("key %q: element %d is %s, not an integer token id", key, i, jsonKind(x))
		}
		switch {
		case ignore && id == IgnoreIndex:
		case id < 0 || (vocab > 0 && id >= int64(vocab)) || id > math.MaxInt32:
			hint := ""
			if ignore {
				hint = " (or -100 to skip it)"
			}
			return nil, fmt.Errorf("key %q: element %d is token id %d, outside the model's vocabulary [0, %d)%s", key, i, id, vocab, hint)
		}
		out[i] = int(id)
	}
	return out, nil
}

func jsonKind(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case json.Number:
		return "the number " + x.String()
	case string:
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprint(x)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// Truncate cuts every example to at most maxLen tokens (labels too), for
// unpacked pre-tokenized data.
func Truncate(enc []Encoded, maxLen int) {
	for i := range enc {
		e := &enc[i]
		if len(e.IDs) > maxLen {
			e.IDs, e.TypeIDs = e.IDs[:maxLen], e.TypeIDs[:maxLen]
			if e.Labels != nil {
				e.Labels = e.Labels[:maxLen]
			}
		}
	}
}

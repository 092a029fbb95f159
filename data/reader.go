// Package data turns a labelled text dataset into the integer batches the
// nodes train on: dataset readers, tokenizers, encoding and collation, and the
// deterministic sampler that splits each epoch across ranks.
package data

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Task says how labels are read and encoded. The values equal the config's
// model.task strings.
type Task string

// Tasks.
const (
	Classification Task = "classification"
	Regression     Task = "regression"
	CausalLM       Task = "causal_lm"
	// MaskedLM is BERT's masked-language-model pre-training (see MaskTokens).
	MaskedLM Task = "masked_lm"
	// TokenClassification labels every word (part-of-speech tagging, NER);
	// the label goes to each word's first sub-token (see EncodeWords).
	TokenClassification Task = "token_classification"
)

// unlabelled reports whether the task reads text only (language models).
func (t Task) unlabelled() bool { return t == CausalLM || t == MaskedLM }

// Example is one row of a dataset.
type Example struct {
	Text     string
	TextPair string  // empty unless the dataset has a pair field
	Label    int     // class id, for Classification
	Target   float64 // value, for Regression
	Line     int     // 1-based line in the source file, for error messages
}

// Fields says which column or JSON key holds what, and how labels map to ids.
type Fields struct {
	Text     string // required
	TextPair string // optional
	Label    string // required unless Task is CausalLM
	Task     Task
	// Labels names the classes in id order; a label given as one of these
	// strings maps to its index. Optional.
	Labels []string
	// NumLabels bounds integer class ids to [0, NumLabels); 0 means
	// len(Labels).
	NumLabels int
}

// ReadFile reads a dataset in format "jsonl", "csv" or "tsv" ("" infers it
// from the extension). CSV and TSV files start with a header row naming the
// fields. Every error names the file, the line and the field.
func ReadFile(path, format string, f Fields) ([]Example, error) {
	if format == "" {
		switch strings.ToLower(filepath.Ext(path)) {
		case ".jsonl", ".json", ".ndjson":
			format = "jsonl"
		case ".csv":
			format = "csv"
		case ".tsv":
			format = "tsv"
		default:
			return nil, fmt.Errorf("%s: cannot infer the format from the extension; set data.format to jsonl, csv or tsv", path)
		}
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read dataset: %w", err)
	}
	defer file.Close()
	return Read(file, path, format, f)
}

// Read is ReadFile on an open stream; name is used in errors.
func Read(r io.Reader, name, format string, f Fields) ([]Example, error) {
	if f.Text == "" {
		return nil, fmt.Errorf("%s: no text field configured (data.text_field)", name)
	}
	if f.Task == "" {
		f.Task = Classification
	}
	if !f.Task.unlabelled() && f.Label == "" {
		return nil, fmt.Errorf("%s: no label field configured (data.label_field)", name)
	}
	if f.NumLabels == 0 {
		f.NumLabels = len(f.Labels)
	}
	var (
		out []Example
		err error
	)
	switch format {
	case "jsonl":
		out, err = readJSONL(r, name, f)
	case "csv":
		out, err = readDelimited(r, name, ',', f)
	case "tsv":
		out, err = readDelimited(r, name, '\t', f)
	default:
		return nil, fmt.Errorf("%s: unknown format %q: want jsonl, csv or tsv", name, format)
	}
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no examples", name)
	}
	return out, nil
}

// row gives a reader-independent view of one record.
type row struct {
	get func(field string) (value any, present bool)
}

func readJSONL(r io.Reader, name string, f Fields) ([]Example, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var out []Example
	for line := 1; sc.Scan(); line++ {
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var obj map[string]any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		if err := dec.Decode(&obj); err != nil {
			return nil, fmt.Errorf("%s:%d: bad JSON: %v", name, line, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("%s:%d: bad JSON: more than one value on the line", name, line)
		}
		ex, err := f.example(row{get: func(k string) (any, bool) { v, ok := obj[k]; return v, ok && v != nil }})
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		ex.Line = line
		out = append(out, ex)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

func readDelimited(r io.Reader, name string, comma rune, f Fields) ([]Example, error) {
	cr := csv.NewReader(r)
	cr.Comma = comma
	if comma == '\t' {
		// TSV has no quoting: a quote character is just text.
		cr.LazyQuotes = true
	}
	header, err := cr.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%s: empty file: want a header row naming the fields", name)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(strings.TrimPrefix(h, "\ufeff"))] = i
	}
	for _, want := range []string{f.Text, f.TextPair, f.Label} {
		if _, ok := col[want]; want != "" && !ok && !(want == f.Label && f.Task.unlabelled()) {
			return nil, fmt.Errorf("%s:1: header has no field %q (fields: %s)", name, want, strings.Join(header, ", "))
		}
	}
	var out []Example
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("%s:%d: %v", name, pe.Line, pe.Err)
			}
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		ex, err := f.example(row{get: func(k string) (any, bool) {
			i, ok := col[k]
			if !ok || i >= len(rec) || rec[i] == "" {
				return nil, false
			}
			return rec[i], true
		}})
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, line, err)
		}
		ex.Line = line
		out = append(out, ex)
	}
	return out, nil
}

func (f Fields) example(r row) (Example, error) {
	var ex Example
	text, err := f.text(r, f.Text)
	if err != nil {
		return ex, err
	}
	ex.Text = text
	if f.TextPair != "" {
		if ex.TextPair, err = f.text(r, f.TextPair); err != nil {
			return ex, err
		}
	}
	if f.Task.unlabelled() {
		return ex, nil
	}
	v, ok := r.get(f.Label)
	if !ok {
		return ex, fmt.Errorf("field %q: missing label", f.Label)
	}
	if f.Task == Regression {
		x, err := number(v)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			return ex, fmt.Errorf("field %q: regression label %v is not a finite number", f.Label, v)
		}
		ex.Target = x
		return ex, nil
	}
	id, err := f.classID(v)
	if err != nil {
		return ex, fmt.Errorf("field %q: %w", f.Label, err)
	}
	ex.Label = id
	return ex, nil
}

func (f Fields) text(r row, field string) (string, error) {
	v, ok := r.get(field)
	if !ok {
		return "", fmt.Errorf("field %q: missing text", field)
	}
	s, isString := v.(string)
	if !isString {
		return "", fmt.Errorf("field %q: text must be a string, got %v", field, v)
	}
	if strings.TrimSpace(s) == "" {
		return "", fmt.Errorf("field %q: empty text", field)
	}
	return s, nil
}

// classID accepts an integer id, a string naming a class, or a string
// holding an integer id (CSV has no other kind of value).
func (f Fields) classID(v any) (int, error) {
	if s, ok := v.(string); ok {
		for i, l := range f.Labels {
			if l == s {
				return i, nil
			}
		}
		if _, err := strconv.Atoi(strings.TrimSpace(s)); err != nil {
			if len(f.Labels) == 0 {
				return 0, fmt.Errorf("label %q is not an integer class id and model.labels is empty", s)
			}
			return 0, fmt.Errorf("unknown label %q: want one of %s or an id", s, strings.Join(f.Labels, ", "))
		}
		v = json.Number(strings.TrimSpace(s))
	}
	x, err := number(v)
	if err != nil || x != math.Trunc(x) {
		return 0, fmt.Errorf("label %v is not an integer class id", v)
	}
	if f.NumLabels > 0 && (x < 0 || x >= float64(f.NumLabels)) {
		return 0, fmt.Errorf("label %v out of range [0, %d)", v, f.NumLabels)
	}
	if x < 0 {
		return 0, fmt.Errorf("label %v out of range: must be >= 0", v)
	}
	return int(x), nil
}

func number(v any) (float64, error) {
	switch x := v.(type) {
	case json.Number:
		return x.Float64()
	case string:
		return strconv.ParseFloat(strings.TrimSpace(x), 64)
	}
	return 0, fmt.Errorf("not a number: %v", v)
}

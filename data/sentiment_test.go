package data

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestPrepareSentimentIsDeterministic rebuilds the demo split from the npm
// fixtures and requires byte-identical files to those fetch-data.sh wrote.
func TestPrepareSentimentIsDeterministic(t *testing.T) {
	d := dataDir(t)
	fixtures := filepath.Join(d, "npm", "sentiment-5.0.2", "package", "test", "fixtures")
	out := t.TempDir()
	train, eval, err := PrepareSentiment(fixtures, out)
	if err != nil {
		t.Fatal(err)
	}
	if train+eval != 3000 {
		t.Fatalf("%d + %d sentences, want 3000", train, eval)
	}
	for _, name := range []string{"train.jsonl", "eval.jsonl"} {
		a, _ := os.ReadFile(filepath.Join(out, name))
		b, _ := os.ReadFile(filepath.Join(d, "sentiment", name))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs from .data/sentiment/%s: the split is not deterministic", name, name)
		}
	}
	if _, _, err := PrepareSentiment(t.TempDir(), out); err == nil {
		t.Error("missing fixtures accepted")
	}
}

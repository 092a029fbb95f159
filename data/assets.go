package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// BERTTokenizerModule is the Go module whose files include a BERT-uncased
// tokenizer.json (all-MiniLM-L6-v2 uses bert-base-uncased's vocabulary).
const BERTTokenizerModule = "github.com/clems4ever/all-minilm-l6-v2-go@v0.0.9"

// DataDir returns the .data directory that scripts/fetch-data.sh fills, at
// the root of the repository containing the working directory (found by
// walking up to go.mod). It need not exist yet.
func DataDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find .data: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".data"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find .data: no go.mod above the working directory; run from inside the ringtune repository")
		}
		dir = parent
	}
}

// BERTTokenizerFile returns the path of a BERT-uncased tokenizer.json: the
// copy fetch-data.sh puts under .data, else the file in the Go module cache,
// downloading the module if needed (`go mod download`, outside any module so
// that go.mod and go.sum are left alone).
func BERTTokenizerFile() (string, error) {
	if d, err := DataDir(); err == nil {
		p := filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	cmd := exec.Command("go", "mod", "download", "-json", BERTTokenizerModule)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GO111MODULE=on", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w: %s (or run scripts/fetch-data.sh)", BERTTokenizerModule, err, stderr.String())
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return "", fmt.Errorf("go mod download %s: %w", BERTTokenizerModule, err)
	}
	if mod.Error != "" {
		return "", fmt.Errorf("go mod download %s: %s", BERTTokenizerModule, mod.Error)
	}
	p := filepath.Join(mod.Dir, "all_minilm_l6_v2", "tokenizer.json")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("module %s has no tokenizer.json where expected: %w", BERTTokenizerModule, err)
	}
	return p, nil
}

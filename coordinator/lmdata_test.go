package coordinator

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/internal/clustertest"
)

// lmCoordinator is a coordinator of a causal-LM run over the files of
// dir, ready for loadData.
func lmCoordinator(t *testing.T, dir, modelConfig string, mutate func(*config.DataConfig)) *Coordinator {
	t.Helper()
	md := filepath.Join(dir, "model")
	if err := os.MkdirAll(md, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(md, "config.json"), []byte(modelConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Model.Path, cfg.Model.Task = md, config.TaskCausalLM
	cfg.Data.TrainFile, cfg.Data.Format, cfg.Data.Tokenizer = filepath.Join(dir, "train.jsonl"), config.FormatTokens, md
	cfg.Data.MaxLength = 8
	mutate(&cfg.Data)
	return &Coordinator{cfg: cfg, task: data.CausalLM, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func TestLoadTokensAndPack(t *testing.T) {
	dir := t.TempDir()
	rows := `{"input_ids":[1,2,3]}
{"input_ids":[4,5],"labels":[-100,5]}
{"input_ids":[6,7,8,9,10,11,12,13,14,15]}
`
	if err := os.WriteFile(filepath.Join(dir, "train.jsonl"), []byte(rows), 0o644); err != nil {
		t.Fatal(err)
	}
	// No tokenizer in the model directory: pre-tokenized data needs none.
	c := lmCoordinator(t, dir, `{"model_type":"gpt2","vocab_size":20,"eos_token_id":19,"pad_token_id":0}`, func(d *config.DataConfig) {})
	if err := c.loadData(); err != nil {
		t.Fatal(err)
	}
	if len(c.train) != 3 || len(c.train[2].IDs) != 8 || c.train[0].Docs != nil {
		t.Fatalf("unpacked rows: %+v (want 3, the last truncated to max_length 8)", c.train)
	}
	c = lmCoordinator(t, dir, `{"model_type":"gpt2","vocab_size":20,"eos_token_id":19}`, func(d *config.DataConfig) { d.Pack = true })
	if err := c.loadData(); err != nil {
		t.Fatal(err)
	}
	// [1 2 3 19] [4 5 19] → one row of 7; [6..15 19] → 8 + 3.
	if len(c.train) != 3 || len(c.train[0].IDs) != 7 || c.train[0].Docs[6] != 1 || len(c.train[1].IDs) != 8 || len(c.train[2].IDs) != 3 {
		t.Fatalf("packed: %+v", c.train)
	}
	if n := GlobalCount(data.CausalLM, c.train, []int{0, 1, 2}); n != 3+2+7+2 {
		t.Fatalf("packed targets %d, want 14", n)
	}
}

func TestLoadTokensErrors(t *testing.T) {
	for _, tc := range []struct {
		name, rows, model string
		mutate            func(*config.DataConfig)
		want              []string
	}{
		{"id beyond config.json's vocab", "{\"input_ids\":[1]}\n{\"input_ids\":[1,20]}\n", `{"model_type":"gpt2","vocab_size":20}`,
			func(*config.DataConfig) {}, []string{"data.train_file", "train.jsonl:2:", `"input_ids"`, "[0, 20)"}},
		{"pack without eos", "{\"input_ids\":[1]}\n", `{"model_type":"gpt2","vocab_size":20}`,
			func(d *config.DataConfig) { d.Pack = true }, []string{"data.pack", "eos_token_id"}},
		{"bad eos", "{\"input_ids\":[1]}\n", `{"model_type":"gpt2","vocab_size":20,"eos_token_id":"x"}`,
			func(*config.DataConfig) {}, []string{"config.json", "eos_token_id"}},
		{"named tokenizer missing", "{\"input_ids\":[1]}\n", `{"model_type":"gpt2","vocab_size":20}`,
			func(d *config.DataConfig) { d.Tokenizer = "/nonexistent/tok.json" }, []string{"data.tokenizer", "/nonexistent/tok.json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "train.jsonl"), []byte(tc.rows), 0o644); err != nil {
				t.Fatal(err)
			}
			err := lmCoordinator(t, dir, tc.model, tc.mutate).loadData()
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// Text packs too: GPT-2 BPE documents, each followed by <|endoftext|>.
func TestLoadTextPack(t *testing.T) {
	dir := t.TempDir()
	clustertest.HeadLines(t, clustertest.DataFile(t, "sentiment/train.jsonl"), filepath.Join(dir, "train.jsonl"), 40)
	c := lmCoordinator(t, dir, `{"model_type":"gpt2","vocab_size":50257}`, func(d *config.DataConfig) {
		d.Format, d.TextField, d.Pack, d.MaxLength = config.FormatJSONL, "text", true, 64
		d.Tokenizer = clustertest.DataFile(t, "tokenizers/gpt2")
	})
	if err := c.loadData(); err != nil {
		t.Fatal(err)
	}
	docs, tokens := 0, 0
	for _, s := range c.train {
		if len(s.IDs) > 64 {
			t.Fatalf("packed sequence of %d tokens > max_length 64", len(s.IDs))
		}
		for j, id := range s.IDs {
			if id == 50256 {
				docs++
				if j+1 < len(s.IDs) && s.Docs[j+1] != s.Docs[j]+1 {
					t.Fatalf("token after <|endoftext|> is not a new document: %v", s.Docs)
				}
			}
		}
		tokens += len(s.IDs)
	}
	if docs < 40 || len(c.train) >= 20 {
		t.Fatalf("40 sentences: %d documents ended by <|endoftext|> in %d sequences (%d tokens)", docs, len(c.train), tokens)
	}
}

package hfspec

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/safetensors"
)

var tinyBERT = map[string]any{"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
	"num_attention_heads": 2, "intermediate_size": 24, "max_position_embeddings": 32}

// modelDir writes config.json (cfg) and, unless tensors is nil,
// model.safetensors.
func modelDir(t *testing.T, cfg map[string]any, tensors []safetensors.Tensor) string {
	t.Helper()
	dir := t.TempDir()
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if tensors != nil {
		if err := safetensors.Write(filepath.Join(dir, safetensors.SingleFileName), tensors, nil); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// weightsFor returns zero tensors for every parameter of l.
func weightsFor(l *Layout) []safetensors.Tensor {
	var ts []safetensors.Tensor
	for _, p := range l.Params {
		ts = append(ts, safetensors.FromFloat32(p.Name, p.Shape, make([]float32, p.Numel())))
	}
	return ts
}

func mustParse(t *testing.T, cfg map[string]any) *Config {
	t.Helper()
	raw, _ := json.Marshal(cfg)
	c, err := ParseConfig(raw, "config.json")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func tinyLayout(t *testing.T) *Layout {
	t.Helper()
	raw, _ := json.Marshal(tinyBERT)
	c, err := ParseConfig(raw, "config.json")
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLayout(c, data.Classification, 2)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestCheckDirAcceptsAGoodModel(t *testing.T) {
	l := tinyLayout(t)
	// BertForSequenceClassification of this config, counted by hand:
	// embeddings 50·16 + 32·16 + 2·16 + 2·16, one layer 4·(16·16+16) +
	// 2·2·16 + 24·16+24 + 16·24+16, pooler 16·16+16, classifier 2·16+2.
	want := int64(50*16 + 32*16 + 2*16 + 2*16 + 4*(16*16+16) + 2*2*16 + 24*16 + 24 + 16*24 + 16 + 16*16 + 16 + 2*16 + 2)
	if got := l.Numel(); got != want {
		t.Fatalf("tiny BERT has %d parameters, want %d", got, want)
	}
	dir := modelDir(t, tinyBERT, weightsFor(l))
	got, err := CheckDir(dir, data.Classification, 2, true)
	if err != nil {
		t.Fatal(err)
	}
	if got.Layout.Numel() != want || got.Config.Family != BERT {
		t.Errorf("checked %s with %d parameters, want bert with %d", got.Config.Family, got.Layout.Numel(), want)
	}
	// A base-model checkpoint (no "bert." prefix, no head) is fine too.
	var base []safetensors.Tensor
	for _, ts := range weightsFor(l) {
		if strings.HasPrefix(ts.Name, "bert.") && !strings.Contains(ts.Name, "pooler") {
			ts.Name = strings.TrimPrefix(ts.Name, "bert.")
			base = append(base, ts)
		}
	}
	if _, err := CheckDir(modelDir(t, tinyBERT, base), data.Classification, 2, true); err != nil {
		t.Errorf("base checkpoint: %v", err)
	}
	// A marked checkpoint (scripts/pretrain.sh) checks for every task: the
	// names match for classification, and other tasks load everything.
	marked := map[string]any{SequenceHeadRedrawKey: []any{".attention.self.query.", ".attention.self.key."}}
	for k, v := range tinyBERT {
		marked[k] = v
	}
	for _, task := range []data.Task{data.Classification, data.Regression, data.TokenClassification} {
		labels := map[data.Task]int{data.Classification: 2, data.Regression: 1, data.TokenClassification: 2}[task]
		tl, err := NewLayout(mustParse(t, marked), task, labels)
		if err != nil {
			t.Fatal(err)
		}
		got, err := CheckDir(modelDir(t, marked, weightsFor(tl)), task, labels, true)
		if err != nil {
			t.Errorf("%s from a marked checkpoint: %v", task, err)
			continue
		}
		if want := []string{".attention.self.query.", ".attention.self.key."}; !slices.Equal(got.Config.SequenceHeadRedraw, want) {
			t.Errorf("parsed %s = %v, want %v", SequenceHeadRedrawKey, got.Config.SequenceHeadRedraw, want)
		}
	}
	// init: random needs no weights.
	if _, err := CheckDir(modelDir(t, tinyBERT, nil), data.Classification, 2, false); err != nil {
		t.Errorf("random init without weights: %v", err)
	}
}

// TestCheckDirNamesTheFault covers every way a model directory can be
// broken; each error must name the file (and key or tensor).
func TestCheckDirNamesTheFault(t *testing.T) {
	l := tinyLayout(t)
	const victim = "bert.encoder.layer.0.output.dense.weight"
	with := func(key string, v any) map[string]any {
		m := map[string]any{}
		for k, x := range tinyBERT {
			m[k] = x
		}
		if v == nil {
			delete(m, key)
		} else {
			m[key] = v
		}
		return m
	}
	edit := func(f func(ts []safetensors.Tensor) []safetensors.Tensor) []safetensors.Tensor {
		return f(weightsFor(l))
	}
	cases := []struct {
		name   string
		dir    func(t *testing.T) string
		task   data.Task
		labels int
		want   []string
	}{
		{"no config.json", func(t *testing.T) string { return t.TempDir() }, data.Classification, 2, []string{"config.json", "no such file"}},
		{"config.json not JSON", func(t *testing.T) string {
			d := t.TempDir()
			os.WriteFile(filepath.Join(d, "config.json"), []byte("{model_type: bert"), 0o644)
			return d
		}, data.Classification, 2, []string{"config.json", "not valid JSON"}},
		{"model_type missing", func(t *testing.T) string { return modelDir(t, with("model_type", nil), nil) }, data.Classification, 2, []string{"config.json", `"model_type": missing`}},
		{"model_type unknown", func(t *testing.T) string { return modelDir(t, with("model_type", "t5"), nil) }, data.Classification, 2, []string{`"t5" is not supported`}},
		{"hidden size zero", func(t *testing.T) string { return modelDir(t, with("hidden_size", 0), nil) }, data.Classification, 2, []string{"hidden size", "must be at least 1"}},
		{"heads do not divide", func(t *testing.T) string { return modelDir(t, with("num_attention_heads", 3), nil) }, data.Classification, 2, []string{"not divisible"}},
		{"wrong type", func(t *testing.T) string { return modelDir(t, with("num_hidden_layers", "two"), nil) }, data.Classification, 2, []string{`"num_hidden_layers"`, "want an integer"}},
		{"bert as causal lm", func(t *testing.T) string { return modelDir(t, tinyBERT, nil) }, data.CausalLM, 0, []string{"bert has no causal-LM head"}},
		{"no weights", func(t *testing.T) string { return modelDir(t, tinyBERT, nil) }, data.Classification, 2, []string{"model.safetensors", "init: random"}},
		{"wrong shape", func(t *testing.T) string {
			return modelDir(t, tinyBERT, edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
				for i := range ts {
					if ts[i].Name == victim {
						ts[i] = safetensors.FromFloat32(victim, []int64{3, 4}, make([]float32, 12))
					}
				}
				return ts
			}))
		}, data.Classification, 2, []string{victim, "shape [3 4]", "model.safetensors"}},
		{"missing tensor", func(t *testing.T) string {
			return modelDir(t, tinyBERT, edit(func(ts []safetensors.Tensor) []safetensors.Tensor {
				for i := range ts {
					if ts[i].Name == victim {
						return append(ts[:i], ts[i+1:]...)
					}
				}
				return ts
			}))
		}, data.Classification, 2, []string{victim, "has no tensor"}},
		{"config says more layers", func(t *testing.T) string {
			return modelDir(t, with("num_hidden_layers", 2), weightsFor(l))
		}, data.Classification, 2, []string{"bert.encoder.layer.1.", "has no tensor"}},
		{"truncated", func(t *testing.T) string {
			d := modelDir(t, tinyBERT, weightsFor(l))
			p := filepath.Join(d, safetensors.SingleFileName)
			st, _ := os.Stat(p)
			os.Truncate(p, st.Size()-10)
			return d
		}, data.Classification, 2, []string{"model.safetensors", "corrupt"}},
		{"garbage header", func(t *testing.T) string {
			d := modelDir(t, tinyBERT, nil)
			os.WriteFile(filepath.Join(d, safetensors.SingleFileName), []byte("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), 0o644)
			return d
		}, data.Classification, 2, []string{"model.safetensors", "bad header JSON"}},
		{"corrupt bin", func(t *testing.T) string {
			d := modelDir(t, tinyBERT, nil)
			os.WriteFile(filepath.Join(d, BinFileName), []byte("PK not really a zip"), 0o644)
			return d
		}, data.Classification, 2, []string{BinFileName}},
		{"redraw key not a list", func(t *testing.T) string {
			return modelDir(t, with(SequenceHeadRedrawKey, ".attention.self.query."), weightsFor(l))
		}, data.Classification, 2, []string{"config.json", SequenceHeadRedrawKey, "want a non-empty list"}},
		{"redraw key with an empty name", func(t *testing.T) string {
			return modelDir(t, with(SequenceHeadRedrawKey, []any{".attention.self.query.", ""}), weightsFor(l))
		}, data.Classification, 2, []string{"config.json", SequenceHeadRedrawKey, "want a non-empty list"}},
		{"redraw key matches nothing", func(t *testing.T) string {
			return modelDir(t, with(SequenceHeadRedrawKey, []any{".attention.self.qeury."}), weightsFor(l))
		}, data.Classification, 2, []string{"config.json", SequenceHeadRedrawKey, "matches no parameter of BertForSequenceClassification"}},
		{"index names a missing shard", func(t *testing.T) string {
			d := modelDir(t, tinyBERT, nil)
			os.WriteFile(filepath.Join(d, safetensors.IndexFileName), []byte(`{"weight_map":{"`+victim+`":"model-00001-of-00002.safetensors"}}`), 0o644)
			return d
		}, data.Classification, 2, []string{"model-00001-of-00002.safetensors"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			_, err := CheckDir(dir, tc.task, tc.labels, true)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error does not name the directory %s: %v", dir, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q: %v", w, err)
				}
			}
		})
	}
}

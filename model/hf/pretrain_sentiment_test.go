package hf_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

// sentimentBudget is a fine-tuning budget for the demo's sentiment task:
// Epochs passes over the 2,694 labelled training sentences in steps of
// Batch, AdamW at LR with a linear warm-up over WarmupRatio of the steps,
// then linear decay, on sentences cut to MaxLen tokens.
type sentimentBudget struct {
	Epochs, Batch, MaxLen int
	LR, WarmupRatio       float64
}

// demoSentiment is scripts/demo.sh's budget: 3 epochs of 32, lr 1e-3, 10%
// warm-up, 64 tokens (255 steps; the cluster evaluates after the same).
var demoSentiment = sentimentBudget{Epochs: 3, Batch: 32, MaxLen: 64, LR: 1e-3, WarmupRatio: 0.1}

// readSentiment encodes .data/sentiment/NAME (written by
// scripts/fetch-data.sh) cut to maxLen tokens.
func readSentiment(t testing.TB, tok *data.Tokenizer, name string, maxLen int) []data.Encoded {
	t.Helper()
	d, err := data.DataDir()
	if err != nil {
		t.Fatal(err)
	}
	exs, err := data.ReadFile(filepath.Join(d, "sentiment", name), "jsonl", data.Fields{Text: "text", Label: "label", Task: data.Classification, NumLabels: 2})
	if err != nil {
		t.Fatalf("%v: run scripts/fetch-data.sh", err)
	}
	enc, err := tok.EncodeAll(name, exs, maxLen)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

// finetuneSentiment fine-tunes binary sentiment classification from dir's
// weights (init pretrained: the encoder loads, the pooler and classifier
// are new; init random: dir's config from the seed) on budget b, and
// evaluates on the 306 held-out sentences; it returns that and the fit on
// the training set.
func finetuneSentiment(t testing.TB, dir, init string, b sentimentBudget) (eval, fit hf.Metrics) {
	t.Helper()
	_, tokPath := corpusDir(t)
	tok, err := data.LoadTokenizer(tokPath)
	if err != nil {
		t.Fatal(err)
	}
	train, held := readSentiment(t, tok, "train.jsonl", b.MaxLen), readSentiment(t, tok, "eval.jsonl", b.MaxLen)
	steps := (b.Epochs*len(train) + b.Batch - 1) / b.Batch
	start := time.Now()
	m, err := hf.Load(dir, hf.Options{Task: data.Classification, NumLabels: 2, Init: init, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.SetOptimizer(adamW(b.LR, steps, int(float64(steps)*b.WarmupRatio))); err != nil {
		t.Fatal(err)
	}
	trainSteps(t, m, train, data.Classification, tok.PAD, 0, steps, b.Batch, nil)
	met := evaluate(t, m, held, data.Classification, tok.PAD)
	// The fit on the training set tells under- from over-fitting.
	fit = evaluate(t, m, train, data.Classification, tok.PAD)
	t.Logf("sentiment from %s weights: %d steps × %d at lr %g, %d tokens (%s): %s (training set: accuracy %.4f, loss %.4g)",
		init, steps, b.Batch, b.LR, b.MaxLen, time.Since(start).Round(time.Second), met, fit.Accuracy, fit.Loss)
	return met, fit
}

// sentimentGap is the least gain in held-out accuracy that drawing the
// attention query and key afresh must bring the pre-trained start, and
// sentimentNoise how far below random init it may then stay (9 of the 306
// held-out sentences). Measured on this machine (README, "Why the
// checkpoint loses on sentiment"): 0.660 from the checkpoint as loaded by
// from_pretrained, 0.846 with its query and key drawn afresh at load (0.837
// and 0.820 with two other draws), 0.846 from random weights; training-set
// accuracy 0.75, 0.97 and 0.98.
const (
	sentimentGap   = 0.08
	sentimentNoise = 0.03
)

// TestPretrainedSentimentLossIsAttention is issue 14's sentiment finding as
// a test. A masked-LM checkpoint fine-tuned on the demo's sentiment budget
// under-fits (it cannot even fit the training set) because its attention
// heads are sharp and positional, so [CLS], which the classifier reads,
// attends to itself and [SEP] instead of the words (scripts/cls-attention.py
// DIR shows it); the masked LM computes no loss at [CLS] and has no
// sentence-level objective to train it. With the query and key drawn
// afresh (hf.SequenceHeadRedrawKey, which scripts/pretrain.sh writes into
// its checkpoints; every other pre-trained tensor kept) the fit must come
// back and the accuracy be that of random init within the noise. The
// checkpoint is RINGTUNE_PRETRAINED (e.g. scripts/pretrain.sh --print-dir)
// or, unset, posRecipe pre-trained in process (13 minutes or more).
// Opt-in: RINGTUNE_PRETRAIN_SENTIMENT=1.
func TestPretrainedSentimentLossIsAttention(t *testing.T) {
	if os.Getenv("RINGTUNE_PRETRAIN_SENTIMENT") != "1" {
		t.Skip("set RINGTUNE_PRETRAIN_SENTIMENT=1 (and optionally RINGTUNE_PRETRAINED=DIR) to run the sentiment diagnosis")
	}
	pre := os.Getenv("RINGTUNE_PRETRAINED")
	if pre == "" {
		pre, _, _, _ = pretrainMLM(t, posRecipe, os.Getenv("RINGTUNE_PRETRAIN_OUT"))
	}
	plain := withConfigKey(t, pre, hf.SequenceHeadRedrawKey, nil)
	marked := withConfigKey(t, pre, hf.SequenceHeadRedrawKey, []any{".attention.self.query.", ".attention.self.key."})
	r, rf := finetuneSentiment(t, plain, config.InitRandom, demoSentiment)
	p, pf := finetuneSentiment(t, plain, config.InitPretrained, demoSentiment)
	q, qf := finetuneSentiment(t, marked, config.InitPretrained, demoSentiment)
	t.Logf("held-out accuracy (training set): random %.3f (%.3f), pre-trained %.3f (%.3f), pre-trained with query and key drawn afresh %.3f (%.3f)",
		r.Accuracy, rf.Accuracy, p.Accuracy, pf.Accuracy, q.Accuracy, qf.Accuracy)
	if qf.Accuracy < 0.9 {
		t.Errorf("with the attention query and key drawn afresh the pre-trained start fits only %.3f of the training set; want 0.9 (random init fits %.3f)", qf.Accuracy, rf.Accuracy)
	}
	if q.Accuracy < r.Accuracy-sentimentNoise {
		t.Errorf("with the attention query and key drawn afresh the pre-trained start reaches %.3f held-out accuracy, random init %.3f; want at most %.2f below", q.Accuracy, r.Accuracy, sentimentNoise)
	}
	if q.Accuracy-p.Accuracy < sentimentGap {
		t.Errorf("drawing the attention query and key afresh moved held-out accuracy %.3f -> %.3f; want a gain of %.2f: if the checkpoint no longer under-fits (training-set accuracy %.3f), its [CLS] attention is no longer the problem and the README's diagnosis needs re-measuring",
			p.Accuracy, q.Accuracy, sentimentGap, pf.Accuracy)
	}
}

// Package gotrainer is a pure-Go agent.Trainer for tests: softmax regression
// over a bag of token ids (mean of per-token weight columns plus a bias),
// trained with SGD (momentum, L2 weight decay) or AdamW, gradient clipping
// and the linear/cosine/constant schedules with warm-up. It is a real model
// with a real loss, small enough to train in milliseconds, deterministic,
// and its result does not depend on how a global batch is split.
//
// The model directory needs config.json with "vocab_size"; Export writes
// config.json, model.safetensors (tensors "weight" [labels, vocab] and
// "bias" [labels]) and copies the tokenizer files.
package gotrainer

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/safetensors"
	"github.com/ringtune/ringtune/node/agent"
)

// Trainer implements agent.Trainer.
type Trainer struct {
	job    agent.Job
	vocab  int
	labels int
	params []float32 // weight (labels×vocab, row-major) then bias (labels)
	grad   []float32
	m, v   []float32 // optimizer state (SGD uses m only)
	steps  int
}

// New returns an empty trainer; Setup builds it.
func New() (agent.Trainer, error) { return &Trainer{}, nil }

var _ agent.Trainer = (*Trainer)(nil)

type modelConfig struct {
	ModelType string `json:"model_type"`
	VocabSize int    `json:"vocab_size"`
}

// Setup implements agent.Trainer.
func (t *Trainer) Setup(job agent.Job) (int, error) {
	raw, err := os.ReadFile(filepath.Join(job.ModelDir, "config.json"))
	if err != nil {
		return 0, fmt.Errorf("gotrainer: %w", err)
	}
	var mc modelConfig
	if err := json.Unmarshal(raw, &mc); err != nil {
		return 0, fmt.Errorf("gotrainer: config.json: %w", err)
	}
	if mc.VocabSize <= 0 {
		return 0, fmt.Errorf("gotrainer: config.json: vocab_size must be > 0, got %d", mc.VocabSize)
	}
	if job.Task != "classification" || job.NumLabels < 2 {
		return 0, fmt.Errorf("gotrainer: only classification with >= 2 labels, got task %q with %d labels", job.Task, job.NumLabels)
	}
	t.job, t.vocab, t.labels = job, mc.VocabSize, job.NumLabels
	n := t.labels*t.vocab + t.labels
	t.params = make([]float32, n)
	t.grad = make([]float32, n)
	t.m = make([]float32, n)
	if job.Train.Optimizer == "adamw" {
		t.v = make([]float32, n)
	}
	switch job.Init {
	case "random":
		r := rand.New(rand.NewPCG(uint64(job.Seed), 0x6f746e65))
		for i := 0; i < t.labels*t.vocab; i++ {
			t.params[i] = float32(r.NormFloat64() * 0.02)
		}
	case "pretrained":
		f, err := safetensors.Open(filepath.Join(job.ModelDir, "model.safetensors"))
		if err != nil {
			return 0, fmt.Errorf("gotrainer: %w", err)
		}
		defer f.Close()
		w, err := f.Float32s("weight")
		if err != nil {
			return 0, fmt.Errorf("gotrainer: %w", err)
		}
		b, err := f.Float32s("bias")
		if err != nil {
			return 0, fmt.Errorf("gotrainer: %w", err)
		}
		if len(w) != t.labels*t.vocab || len(b) != t.labels {
			return 0, fmt.Errorf("gotrainer: model.safetensors holds %d+%d values, want %d×%d+%d", len(w), len(b), t.labels, t.vocab, t.labels)
		}
		copy(t.params, w)
		copy(t.params[len(w):], b)
	default:
		return 0, fmt.Errorf("gotrainer: unknown init %q", job.Init)
	}
	return n, nil
}

// logits computes the class scores of row i of b in float64.
func (t *Trainer) logits(b *data.Batch, i int, out []float64) (tokens int) {
	bias := t.params[t.labels*t.vocab:]
	for c := range out {
		out[c] = float64(bias[c])
	}
	for j := 0; j < b.Seq; j++ {
		if b.AttentionMask[i*b.Seq+j] == 0 {
			continue
		}
		tokens++
	}
	if tokens == 0 {
		return 0
	}
	for j := 0; j < b.Seq; j++ {
		k := i*b.Seq + j
		if b.AttentionMask[k] == 0 {
			continue
		}
		id := int(b.InputIDs[k])
		for c := range out {
			out[c] += float64(t.params[c*t.vocab+id]) / float64(tokens)
		}
	}
	return tokens
}

func softmax(z []float64) {
	m := math.Inf(-1)
	for _, x := range z {
		m = math.Max(m, x)
	}
	s := 0.0
	for i, x := range z {
		z[i] = math.Exp(x - m)
		s += z[i]
	}
	for i := range z {
		z[i] /= s
	}
}

func (t *Trainer) check(b *data.Batch) error {
	if b == nil || b.Size <= 0 || len(b.InputIDs) != b.Size*b.Seq || len(b.AttentionMask) != b.Size*b.Seq || len(b.Labels) != b.Size {
		return errors.New("gotrainer: malformed batch")
	}
	for _, id := range b.InputIDs {
		if id < 0 || int(id) >= t.vocab {
			return fmt.Errorf("gotrainer: token id %d outside vocabulary of %d", id, t.vocab)
		}
	}
	for _, l := range b.Labels {
		if l < 0 || int(l) >= t.labels {
			return fmt.Errorf("gotrainer: label %d outside [0, %d)", l, t.labels)
		}
	}
	return nil
}

// Accumulate implements agent.Trainer.
func (t *Trainer) Accumulate(b *data.Batch) (float64, int, error) {
	if err := t.check(b); err != nil {
		return 0, 0, err
	}
	p := make([]float64, t.labels)
	loss := 0.0
	gb := t.grad[t.labels*t.vocab:]
	for i := 0; i < b.Size; i++ {
		tokens := t.logits(b, i, p)
		softmax(p)
		y := int(b.Labels[i])
		loss -= math.Log(math.Max(p[y], 1e-300))
		p[y]--
		for c := range p {
			gb[c] += float32(p[c])
		}
		if tokens == 0 {
			continue
		}
		for j := 0; j < b.Seq; j++ {
			k := i*b.Seq + j
			if b.AttentionMask[k] == 0 {
				continue
			}
			id := int(b.InputIDs[k])
			for c := range p {
				t.grad[c*t.vocab+id] += float32(p[c] / float64(tokens))
			}
		}
	}
	return loss, b.Size, nil
}

var _ agent.Overlapper = (*Trainer)(nil)

// GradSegments implements agent.Overlapper: the bias, then the weight rows
// from the last label's back, as a layered model's backward would finish
// them.
func (t *Trainer) GradSegments() []bucket.Segment {
	segs := []bucket.Segment{{Off: t.labels * t.vocab, Len: t.labels, Order: 0}}
	for c := t.labels - 1; c >= 0; c-- {
		segs = append(segs, bucket.Segment{Off: c * t.vocab, Len: t.vocab, Order: t.labels - c})
	}
	return segs
}

// GradBuffer implements agent.Overlapper.
func (t *Trainer) GradBuffer() []float32 { return t.grad }

// AccumulateReady implements agent.Overlapper. This model has no backward
// to overlap with: it reports every segment once the micro-batch is done.
// That still runs the node's overlap path (buckets started from the ready
// calls, in the plan's order) in the pure-Go cluster tests.
func (t *Trainer) AccumulateReady(b *data.Batch, ready func(seg int)) (float64, int, error) {
	loss, n, err := t.Accumulate(b)
	if err != nil {
		return 0, 0, err
	}
	for i := t.labels; i >= 0; i-- {
		ready(i)
	}
	return loss, n, nil
}

// Gradients implements agent.Trainer.
func (t *Trainer) Gradients() ([]float32, error) { return t.grad, nil }

// lr is the schedule's learning rate at step (0-based).
func (t *Trainer) lr(step int) float64 {
	s := t.job.Train
	total := max(t.job.TotalSteps, 1)
	if s.WarmupSteps > 0 && step < s.WarmupSteps {
		return s.LR * float64(step+1) / float64(s.WarmupSteps)
	}
	frac := float64(step-s.WarmupSteps) / float64(max(total-s.WarmupSteps, 1))
	switch s.Schedule {
	case "linear":
		return s.LR * math.Max(0, 1-frac)
	case "cosine":
		return s.LR * 0.5 * (1 + math.Cos(math.Pi*math.Min(frac, 1)))
	}
	return s.LR
}

// Apply implements agent.Trainer.
func (t *Trainer) Apply(step, globalCount int) error {
	if globalCount <= 0 {
		return fmt.Errorf("gotrainer: global count %d", globalCount)
	}
	s := t.job.Train
	inv := 1 / float64(globalCount)
	norm := 0.0
	for _, g := range t.grad {
		x := float64(g) * inv
		norm += x * x
	}
	norm = math.Sqrt(norm)
	scale := inv
	if s.MaxGradNorm > 0 && norm > s.MaxGradNorm {
		scale *= s.MaxGradNorm / (norm + 1e-6)
	}
	lr := t.lr(step)
	t.steps++
	nw := t.labels * t.vocab
	for i := range t.params {
		g := float64(t.grad[i]) * scale
		p := float64(t.params[i])
		decay := s.WeightDecay
		if i >= nw {
			decay = 0 // biases are exempt
		}
		if s.Optimizer == "adamw" {
			b1, b2 := s.Betas[0], s.Betas[1]
			m := b1*float64(t.m[i]) + (1-b1)*g
			v := b2*float64(t.v[i]) + (1-b2)*g*g
			t.m[i], t.v[i] = float32(m), float32(v)
			mh := m / (1 - math.Pow(b1, float64(t.steps)))
			vh := v / (1 - math.Pow(b2, float64(t.steps)))
			p -= lr * (mh/(math.Sqrt(vh)+s.Eps) + decay*p)
		} else {
			g += decay * p
			m := s.Momentum*float64(t.m[i]) + g
			t.m[i] = float32(m)
			p -= lr * m
		}
		t.params[i] = float32(p)
		t.grad[i] = 0
	}
	return nil
}

// Discard implements agent.Trainer.
func (t *Trainer) Discard() error {
	clear(t.grad)
	return nil
}

// Digest implements agent.Trainer.
func (t *Trainer) Digest() ([]byte, error) {
	h := sha256.New()
	h.Write(control.Float32Bytes(t.params))
	h.Write(control.Float32Bytes(t.m))
	h.Write(control.Float32Bytes(t.v))
	return h.Sum(nil), nil
}

// WriteState implements agent.Trainer: parameters, then m, then v, written
// from the trainer's own slices.
func (t *Trainer) WriteState(w io.Writer) error {
	if err := control.WriteStateHeader(w, len(t.params), len(t.m)+len(t.v), t.steps); err != nil {
		return fmt.Errorf("gotrainer: write state: %w", err)
	}
	for _, b := range [][]float32{t.params, t.m, t.v} {
		if err := control.WriteFloat32s(w, b); err != nil {
			return fmt.Errorf("gotrainer: write state: %w", err)
		}
	}
	return nil
}

// StateView implements agent.StateViewer: the trainer's own slices, which
// only Apply and ReadState write.
func (t *Trainer) StateView() (agent.StateView, bool, error) {
	return agent.StateView{Blocks: [][]float32{t.params, t.m, t.v}, Step: int64(t.steps)}, true, nil
}

// ReadState implements agent.Trainer: it reads straight into the trainer's
// slices after checking the header's sizes.
func (t *Trainer) ReadState(r io.Reader) error {
	np, no, steps, err := control.ReadStateHeader(r)
	if err != nil {
		return fmt.Errorf("gotrainer: read state: %w", err)
	}
	if np != len(t.params) || no != len(t.m)+len(t.v) {
		return fmt.Errorf("gotrainer: state has %d parameters and %d optimizer values, want %d and %d", np, no, len(t.params), len(t.m)+len(t.v))
	}
	for _, b := range [][]float32{t.params, t.m, t.v} {
		if err := control.ReadFloat32s(r, b); err != nil {
			return fmt.Errorf("gotrainer: read state: %w", err)
		}
	}
	t.steps = steps
	clear(t.grad)
	return nil
}

// Evaluate implements agent.Trainer.
func (t *Trainer) Evaluate(b *data.Batch) (control.EvalSums, error) {
	var e control.EvalSums
	if err := t.check(b); err != nil {
		return e, err
	}
	e.Confusion = make([]float64, t.labels*t.labels)
	p := make([]float64, t.labels)
	for i := 0; i < b.Size; i++ {
		t.logits(b, i, p)
		softmax(p)
		y := int(b.Labels[i])
		pred := 0
		for c := range p {
			if p[c] > p[pred] {
				pred = c
			}
		}
		e.LossSum -= math.Log(math.Max(p[y], 1e-300))
		e.Count++
		if pred == y {
			e.Correct++
		}
		e.Confusion[y*t.labels+pred]++
	}
	return e, nil
}

// Export implements agent.Trainer.
func (t *Trainer) Export(dir string) error {
	nw := t.labels * t.vocab
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), []safetensors.Tensor{
		safetensors.FromFloat32("weight", []int64{int64(t.labels), int64(t.vocab)}, t.params[:nw]),
		safetensors.FromFloat32("bias", []int64{int64(t.labels)}, t.params[nw:]),
	}, nil); err != nil {
		return fmt.Errorf("gotrainer: export: %w", err)
	}
	ents, err := os.ReadDir(t.job.ModelDir)
	if err != nil {
		return fmt.Errorf("gotrainer: export: %w", err)
	}
	for _, e := range ents {
		if e.Name() == "model.safetensors" || !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(t.job.ModelDir, e.Name()))
		if err != nil {
			return fmt.Errorf("gotrainer: export: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return fmt.Errorf("gotrainer: export: %w", err)
		}
	}
	return nil
}

// Close implements agent.Trainer.
func (t *Trainer) Close() error { return nil }

// OptimizerBytes is the optimizer state held (the agent reports it with
// every reduced step).
func (t *Trainer) OptimizerBytes() int64 { return 4 * int64(len(t.m)+len(t.v)) }

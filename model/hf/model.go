// Package hf runs Hugging Face transformer models — BERT with a
// sequence-classification or regression head, GPT-2 and Llama causal LMs —
// on ringtune's torch layer, with transformers' exact semantics and
// parameter names: it loads and saves HF model directories (config.json,
// safetensors or PyTorch .bin weights, tokenizer files), computes summed
// losses and flat gradients for data-parallel training, applies AdamW or SGD
// with HF's learning-rate schedules, and evaluates.
//
// A Model owns one locked OS thread (libtorch's grad mode and error slot are
// per thread); every method runs on it, so a Model may be called from any
// goroutine, but not from several at once.
package hf

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/torch"
)

// Options say how to build a model from a directory.
type Options struct {
	// Task is classification, regression or causal_lm; empty infers it from
	// config.json (architectures, num_labels).
	Task data.Task
	// NumLabels sizes a classification head; 0 takes config.json's
	// num_labels (or id2label), else 2. Regression always has 1.
	NumLabels int
	// Init is config.InitPretrained (default: load the weights in the
	// directory) or config.InitRandom (HF-style initialisation from Seed).
	Init string
	// Seed seeds libtorch's generators before initialisation; the same seed
	// and Threads give bit-identical weights in any process.
	Seed int64
	// Threads is libtorch's intra-op thread count (0 means 1).
	Threads int
	// Device is where parameters and compute live.
	Device torch.Device
	// Dropout, when set, replaces every dropout probability of config.json.
	Dropout *float64
	// Precision is config.PrecisionFP32 (default) or config.PrecisionBF16:
	// bf16 compute with fp32 master weights and gradients, CUDA only.
	Precision string
}

// Model is a loaded model with its parameters in one flat block.
type Model struct {
	cfg       *Config
	task      data.Task
	numLabels int
	opt       Options
	dir       string
	lay       *layout
	th        *torch.Thread
	params    *torch.Params
	scope     *torch.Scope
	net       *net
	bf16      bool

	// NewlyInitialized lists the parameters a pretrained load did not find
	// in the checkpoint and initialised randomly (a new task head).
	NewlyInitialized []string
	// Loaded lists the parameters a pretrained load read from the
	// checkpoint, and Ignored the checkpoint tensors it skipped (another
	// head's, tied copies, buffers), as from_pretrained reports them; see
	// LoadReport.
	Loaded, Ignored []string
	// Redrawn lists the parameters among NewlyInitialized that the
	// checkpoint held but config.json's SequenceHeadRedrawKey asked to draw
	// afresh for this sequence-level head.
	Redrawn []string

	ropeLen          int64
	ropeCos, ropeSin torch.Tensor // owned, cached for ropeLen positions

	optim    optimizer
	optimCfg OptimConfig
	// watch reports ready gradients during backward (WatchGrads); nil
	// until asked for.
	watch *torch.GradWatch
	shard *torch.ShardedAdamW // train.shard_optimizer zero1, instead of optim

	// split is the tied embedding whose lookups a step reads from rows of
	// its own (SetSplitEmbedding; "" when off); rows and rowIDs are the
	// step's (BeginRows), remap maps a token id to its row in rows (-1:
	// none). See rows.go.
	split     string
	splitTied bool
	rows      *torch.Rows
	rowIDs    []int64
	remap     []int32
}

// Load builds a model from a Hugging Face model directory.
func Load(dir string, opt Options) (*Model, error) {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	task, numLabels, err := resolveTask(cfg, opt)
	if err != nil {
		return nil, err
	}
	if opt.Threads == 0 {
		opt.Threads = 1
	}
	switch opt.Precision {
	case "", config.PrecisionFP32:
	case config.PrecisionBF16:
		if !opt.Device.IsCUDA() {
			return nil, fmt.Errorf("load model %s: precision bf16 needs a CUDA device (got %s); use precision fp32 on CPU", dir, opt.Device)
		}
	default:
		return nil, fmt.Errorf("load model %s: precision %q: want fp32 or bf16", dir, opt.Precision)
	}
	switch opt.Init {
	case "", config.InitPretrained, config.InitRandom:
	default:
		return nil, fmt.Errorf("load model %s: init %q: want pretrained or random", dir, opt.Init)
	}
	lay, err := newLayout(cfg, task, numLabels)
	if err != nil {
		return nil, err
	}
	m := &Model{cfg: cfg, task: task, numLabels: numLabels, opt: opt, dir: dir, lay: lay,
		th: torch.NewThread(), bf16: opt.Precision == config.PrecisionBF16}
	m.net = &net{c: cfg, w: m.weight, drop: m.dropout, rope: m.rope, embed: m.embed}
	err = m.th.Do(func() error {
		if err := opt.Device.Check(); err != nil {
			return err
		}
		if err := torch.SetThreads(opt.Threads); err != nil {
			return err
		}
		if err := torch.Seed(opt.Seed); err != nil {
			return err
		}
		p, err := torch.NewParams(lay.specs, opt.Device)
		if err != nil {
			return fmt.Errorf("load model %s: %w", dir, err)
		}
		m.params = p
		m.scope = torch.NewScope()
		if opt.Init == config.InitRandom {
			return m.initRandom(nil)
		}
		return m.loadWeights()
	})
	if err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func resolveTask(c *Config, opt Options) (data.Task, int, error) {
	task := opt.Task
	if task == "" {
		switch {
		case c.Family == GPT2 || c.Family == Llama:
			task = data.CausalLM
		case c.Family == BERT && c.Architecture == "BertForMaskedLM":
			task = data.MaskedLM
		case c.Family == BERT && c.Architecture == "BertForTokenClassification":
			task = data.TokenClassification
		case c.ProblemType == "regression" || c.NumLabels == 1:
			task = data.Regression
		default:
			task = data.Classification
		}
	}
	n := 0
	switch task {
	case data.Classification, data.TokenClassification:
		n = opt.NumLabels
		if n == 0 {
			n = c.NumLabels
		}
		if n == 0 {
			n = 2
		}
		if n < 2 {
			return "", 0, fmt.Errorf("model %s: %s needs at least 2 labels, got %d (use task regression for one output)", c.Path, task, n)
		}
	case data.Regression:
		if opt.NumLabels > 1 {
			return "", 0, fmt.Errorf("model %s: regression has one output, got num_labels %d", c.Path, opt.NumLabels)
		}
		n = 1
	case data.CausalLM, data.MaskedLM:
	default:
		return "", 0, fmt.Errorf("model %s: task %q: want classification, regression, causal_lm, masked_lm or token_classification", c.Path, task)
	}
	return task, n, nil
}

// Close frees everything the model holds. The model is unusable afterwards.
func (m *Model) Close() {
	if m.th == nil {
		return
	}
	m.th.Do(func() error {
		if m.optim != nil {
			m.optim.Free()
			m.optim = nil
		}
		m.watch.Free() // before the parameters it hooks
		m.watch = nil
		m.rows.Free()
		m.rows = nil
		if m.shard != nil {
			m.shard.Free()
			m.shard = nil
		}
		m.ropeCos.Free()
		m.ropeSin.Free()
		if m.scope != nil {
			m.scope.Close()
		}
		if m.params != nil {
			m.params.Free()
		}
		return nil
	})
	m.th.Close()
	m.th = nil
}

// Config is the parsed config.json.
func (m *Model) Config() *Config { return m.cfg }

// Task is the model's task.
func (m *Model) Task() data.Task { return m.task }

// NumLabels is the size of a classification head (1 for regression, 0 for
// causal and masked LM).
func (m *Model) NumLabels() int { return m.numLabels }

// Class is the transformers class the model mirrors (and saves as).
func (m *Model) Class() string { return m.lay.Class }

// Device is where the model lives.
func (m *Model) Device() torch.Device { return m.opt.Device }

// NumParams is the number of float32 parameters (and gradients) in the flat
// blocks.
func (m *Model) NumParams() int64 { return m.params.Numel }

// Params exposes the flat parameter layout (names, shapes, offsets, decay
// prefix). Its tensors must only be used through the Model's methods.
func (m *Model) Params() *torch.Params { return m.params }

// do runs f on the model's thread.
func (m *Model) do(f func() error) error {
	if m.th == nil {
		return errors.New("model: used after Close")
	}
	return m.th.Do(f)
}

// weight is a parameter as the forward pass uses it: the fp32 master, or a
// bf16 copy whose gradient flows back into the master.
func (m *Model) weight(s *torch.Scope, name string) torch.Tensor {
	t, ok := m.params.Get(name)
	if !ok {
		s.Fail(fmt.Errorf("model: no parameter %q (bug in the %s layout)", name, m.lay.Class))
		return torch.Tensor{}
	}
	if m.bf16 {
		return s.To(t, torch.BFloat16)
	}
	return t
}

func (m *Model) dropout(kind string) float64 {
	if m.opt.Dropout != nil {
		return *m.opt.Dropout
	}
	switch kind {
	case "hidden":
		return m.cfg.HiddenDropout
	case "attn":
		return m.cfg.AttnDropout
	case "embedding":
		return m.cfg.EmbDropout
	case "classifier":
		return m.cfg.ClassifierDropout
	}
	return 0
}

// rope returns cached rotary tables for t positions, recomputing them (for
// all positions up to t) when a longer batch arrives.
func (m *Model) rope(s *torch.Scope, t int64) (torch.Tensor, torch.Tensor) {
	d := int64(m.cfg.HeadDim)
	if t > m.ropeLen {
		cos, sin := ropeTables(m.cfg.RopeTheta, int(d), int(t))
		m.ropeCos.Free()
		m.ropeSin.Free()
		c := s.FromSliceOn(cos, m.opt.Device, t, d)
		sn := s.FromSliceOn(sin, m.opt.Device, t, d)
		if m.bf16 {
			c, sn = s.To(c, torch.BFloat16), s.To(sn, torch.BFloat16)
		}
		if s.Err() != nil {
			return torch.Tensor{}, torch.Tensor{}
		}
		m.ropeCos, m.ropeSin, m.ropeLen = s.Keep(c), s.Keep(sn), t
	}
	return s.Narrow(m.ropeCos, 0, 0, t), s.Narrow(m.ropeSin, 0, 0, t)
}

// maskMin is the additive mask value transformers uses: the dtype's lowest
// finite value.
func (m *Model) maskMin() float32 {
	if m.bf16 {
		return -3.3895313892515355e38
	}
	return -math.MaxFloat32
}

// inputs checks a batch and turns it into tensors on the model's device.
func (m *Model) inputs(s *torch.Scope, b *data.Batch) (*inputs, error) {
	if b == nil || b.Size < 1 || b.Seq < 1 {
		return nil, errors.New("model: empty batch")
	}
	n := b.Size * b.Seq
	if len(b.InputIDs) != n {
		return nil, fmt.Errorf("model: batch has %d input ids for size %d × seq %d", len(b.InputIDs), b.Size, b.Seq)
	}
	if b.AttentionMask != nil && len(b.AttentionMask) != n {
		return nil, fmt.Errorf("model: batch has %d attention-mask entries for size %d × seq %d", len(b.AttentionMask), b.Size, b.Seq)
	}
	if b.TokenTypeIDs != nil && len(b.TokenTypeIDs) != n {
		return nil, fmt.Errorf("model: batch has %d token type ids for size %d × seq %d", len(b.TokenTypeIDs), b.Size, b.Seq)
	}
	for i, id := range b.InputIDs {
		if id < 0 || id >= int64(m.cfg.Vocab) {
			return nil, fmt.Errorf("model: input id %d at row %d, position %d is outside the vocabulary [0, %d): tokenizer and model do not match",
				id, i/b.Seq, i%b.Seq, m.cfg.Vocab)
		}
	}
	if m.cfg.Family != Llama && b.Seq > m.cfg.MaxPositions {
		return nil, fmt.Errorf("model: batch of %d tokens per row exceeds the model's %d positions; lower data.max_length", b.Seq, m.cfg.MaxPositions)
	}
	if b.DocIDs != nil {
		if m.cfg.Family == BERT {
			return nil, errors.New("model: packed batch (document ids) for bert: packing is for causal LM only; set data.pack false")
		}
		if err := b.CheckDocIDs(); err != nil {
			return nil, fmt.Errorf("model: %w", err)
		}
	}
	bb, t := int64(b.Size), int64(b.Seq)
	dev := m.opt.Device
	in := &inputs{b: bb, t: t, ids: s.FromSliceOn(b.InputIDs, dev, bb, t)}
	if b.DocIDs != nil {
		in.pos = s.FromSliceOn(b.PositionIDs(), dev, bb, t)
		in.packed = true
	} else {
		pos := make([]int64, b.Seq)
		for i := range pos {
			pos[i] = int64(i)
		}
		in.pos = s.FromSliceOn(pos, dev, t)
	}
	in.mask = m.attnMask(s, b, in)
	if m.cfg.Family == BERT {
		tt := b.TokenTypeIDs
		if tt == nil {
			tt = make([]int64, n)
		}
		for i, v := range tt {
			if v < 0 || v >= int64(m.cfg.TypeVocab) {
				return nil, fmt.Errorf("model: token type id %d at row %d is outside [0, %d)", v, i/b.Seq, m.cfg.TypeVocab)
			}
		}
		in.types = s.FromSliceOn(tt, dev, bb, t)
	}
	return in, s.Err()
}

// attnMask builds the additive attention mask on the device from the
// batch's per-token vectors, so the host never holds anything larger than
// B×T: a key is blocked (set to the dtype's lowest value, as transformers'
// eager attention does) when it is padding, and for the causal LMs also
// when it lies after the query or in another document of a packed row.
// The result is [B,1,1,T] for BERT, [T,T] for a causal LM batch without
// padding or documents, and [B,1,T,T] otherwise, with exactly the values
// transformers' 4D masks have (0 or the lowest value).
func (m *Model) attnMask(s *torch.Scope, b *data.Batch, in *inputs) torch.Tensor {
	dev := m.opt.Device
	dt := torch.Float32
	if m.bf16 {
		dt = torch.BFloat16
	}
	var pad, blocked torch.Tensor // pad: [B,1,1,T], true at padding keys
	if b.AttentionMask != nil {
		pad = s.View(s.Eq(s.FromSliceOn(b.AttentionMask, dev, in.b, in.t), 0), in.b, 1, 1, in.t)
	}
	if m.cfg.Family == BERT {
		if b.AttentionMask == nil {
			return s.Zeros(dt, dev, in.b, 1, 1, in.t)
		}
		blocked = pad
	} else {
		// Key j is after query i: compare a row of positions with a column.
		ar := make([]int64, b.Seq)
		for i := range ar {
			ar[i] = int64(i)
		}
		idx := s.FromSliceOn(ar, dev, in.t)
		blocked = s.Gt(s.View(idx, 1, in.t), s.View(idx, in.t, 1)) // [T,T]
		if b.AttentionMask != nil {
			blocked = s.Or(blocked, pad)
		}
		if b.DocIDs != nil {
			d := s.FromSliceOn(b.DocIDs, dev, in.b, in.t)
			blocked = s.Or(blocked, s.Ne(s.View(d, in.b, 1, in.t, 1), s.View(d, in.b, 1, 1, in.t)))
		}
	}
	// where, not masked_fill on zeros: libtorch 1.13's CPU masked_fill is
	// several times slower (scripts/bench.sh mask).
	mask := s.Where(blocked, float64(m.maskMin()), 0)
	if dt != torch.Float32 {
		mask = s.To(mask, dt)
	}
	return mask
}

// lmTargets shifts causal-LM labels by one (position i predicts token i+1)
// and counts the targets that are not IgnoreIndex. In a packed batch the
// target of a document's first token is ignored.
func lmTargets(b *data.Batch) ([]int64, int, error) {
	if len(b.Labels) != b.Size*b.Seq {
		return nil, 0, fmt.Errorf("model: causal-LM batch has %d labels for size %d × seq %d", len(b.Labels), b.Size, b.Seq)
	}
	out := make([]int64, 0, b.Size*(b.Seq-1))
	n := 0
	for r := range b.Size {
		for j := r*b.Seq + 1; j < (r+1)*b.Seq; j++ {
			l := b.Labels[j]
			if b.DocStart(j) {
				// The last token of one packed document never predicts
				// the first of the next.
				l = data.IgnoreIndex
			}
			out = append(out, l)
			if l != data.IgnoreIndex {
				n++
			}
		}
	}
	return out, n, nil
}

// loss runs the forward pass and returns the summed loss (a 0-d fp32
// tensor, undefined when count is 0) and its count.
func (m *Model) loss(s *torch.Scope, b *data.Batch, train bool) (torch.Tensor, int, error) {
	in, err := m.inputs(s, b)
	if err != nil {
		return torch.Tensor{}, 0, err
	}
	if train {
		if err := m.lookupIDs(s, b, in); err != nil {
			return torch.Tensor{}, 0, err
		}
	}
	dev := m.opt.Device
	switch m.task {
	case data.Classification:
		if len(b.Labels) != b.Size {
			return torch.Tensor{}, 0, fmt.Errorf("model: classification batch has %d labels for %d rows", len(b.Labels), b.Size)
		}
		n := 0
		for i, l := range b.Labels {
			if l == data.IgnoreIndex {
				continue
			}
			if l < 0 || l >= int64(m.numLabels) {
				return torch.Tensor{}, 0, fmt.Errorf("model: label %d of row %d is outside [0, %d)", l, i, m.numLabels)
			}
			n++
		}
		logits := m.f32(s, m.net.bert(s, in, train))
		return s.CrossEntropy(logits, s.FromSliceOn(b.Labels, dev, in.b), torch.ReduceSum, data.IgnoreIndex), n, s.Err()
	case data.Regression:
		if len(b.Targets) != b.Size {
			return torch.Tensor{}, 0, fmt.Errorf("model: regression batch has %d targets for %d rows", len(b.Targets), b.Size)
		}
		out := s.View(m.f32(s, m.net.bert(s, in, train)), in.b)
		return s.MSE(out, s.FromSliceOn(b.Targets, dev, in.b), torch.ReduceSum), b.Size, s.Err()
	case data.MaskedLM:
		return m.mlmLoss(s, in, b, train)
	case data.TokenClassification:
		return m.tokenLoss(s, in, b, train)
	default:
		targets, n, err := lmTargets(b)
		if err != nil || n == 0 {
			return torch.Tensor{}, 0, err
		}
		h := m.hidden(s, in, train)
		logits := m.f32(s, m.net.lmHead(s, s.Narrow(h, 1, 0, in.t-1)))
		v := int64(m.cfg.Vocab)
		return s.CrossEntropy(s.Reshape(logits, -1, v), s.FromSliceOn(targets, dev, in.b*(in.t-1)),
			torch.ReduceSum, data.IgnoreIndex), n, s.Err()
	}
}

func (m *Model) hidden(s *torch.Scope, in *inputs, train bool) torch.Tensor {
	if m.cfg.Family == GPT2 {
		return m.net.gpt2(s, in, train)
	}
	return m.net.llama(s, in, train)
}

func (m *Model) f32(s *torch.Scope, t torch.Tensor) torch.Tensor {
	if m.bf16 {
		return s.To(t, torch.Float32)
	}
	return t
}

// ForwardBackward runs one micro-batch in training mode (dropout on) and
// accumulates the gradient of the summed loss into the flat gradient block.
// It returns the loss sum and its count — samples for classification and
// regression, non-ignored next-token targets for causal LM — so that
// gradients summed over micro-batches and nodes can be divided by the
// global count (ScaleGrads) before Update.
func (m *Model) ForwardBackward(b *data.Batch) (lossSum float64, count int, err error) {
	err = m.do(func() error {
		s := m.scope
		defer s.Release()
		prev := torch.SetGradEnabled(true)
		defer torch.SetGradEnabled(prev)
		loss, n, err := m.loss(s, b, true)
		if err != nil || n == 0 {
			return err
		}
		s.Backward(loss)
		lossSum, count = s.Item(loss), n
		return s.Err()
	})
	if err != nil {
		return 0, 0, fmt.Errorf("forward/backward: %w", err)
	}
	return lossSum, count, nil
}

// ZeroGrad zeroes the flat gradients (before the first micro-batch of a
// step).
func (m *Model) ZeroGrad() error { return m.do(m.params.ZeroGrad) }

// GradSlice aliases the flat gradient block as a Go slice on CPU (nil on
// CUDA: use CopyGradsTo and SetGrads). It stays valid until Close; do not
// use it while a ForwardBackward runs.
func (m *Model) GradSlice() []float32 { return m.params.GradSlice() }

// CopyGradsTo copies the flat gradients into dst (len NumParams).
func (m *Model) CopyGradsTo(dst []float32) error {
	return m.do(func() error { return m.params.CopyGradTo(dst) })
}

// SetGrads overwrites the flat gradients with src (len NumParams), e.g. the
// all-reduced sum divided by the global count.
func (m *Model) SetGrads(src []float32) error {
	return m.do(func() error { return m.params.SetGradFrom(src) })
}

// ScaleGrads multiplies the gradients by f in place (1/global count).
func (m *Model) ScaleGrads(f float64) error {
	return m.do(func() error {
		s := m.scope
		defer s.Release()
		g := m.params.Grad()
		s.Copy_(g, s.MulScalar(g, f))
		return s.Err()
	})
}

// CopyParamsTo copies the flat parameters into dst (len NumParams).
func (m *Model) CopyParamsTo(dst []float32) error {
	return m.do(func() error { return m.params.CopyParamsTo(dst) })
}

// SetParams overwrites the flat parameters with src (len NumParams), e.g.
// the state streamed to a late joiner.
func (m *Model) SetParams(src []float32) error {
	return m.do(func() error { return m.params.SetParamsFrom(src) })
}

// Digest is the hex SHA-256 of the flat parameter block (little-endian
// float32), equal on every replica holding bit-identical weights.
func (m *Model) Digest() (string, error) {
	h := sha256.New()
	err := m.do(func() error {
		v := m.params.ParamSlice()
		if v == nil {
			v = make([]float32, m.params.Numel)
			if err := m.params.CopyParamsTo(v); err != nil {
				return err
			}
		}
		if len(v) > 0 {
			h.Write(unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("parameter digest: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// SetSeed reseeds libtorch's generators (dropout masks), e.g. per step.
func (m *Model) SetSeed(seed int64) error {
	return m.do(func() error { return torch.Seed(seed) })
}

// initRandom initialises the named parameters (all when names is nil) like
// transformers' _init_weights, from libtorch's seeded generator, in layout
// order so that the same seed gives the same weights.
func (m *Model) initRandom(names map[string]bool) error {
	s := m.scope
	defer s.Release()
	prev := torch.SetGradEnabled(false)
	defer torch.SetGradEnabled(prev)
	for i, sp := range m.params.Specs {
		if names != nil && !names[sp.Name] {
			continue
		}
		t := m.params.At(i)
		in := m.lay.Init[sp.Name]
		switch {
		case in.Std > 0:
			s.Normal_(t, 0, in.Std)
		case in.One:
			s.Fill_(t, 1)
		default:
			s.Zero_(t)
		}
		if in.PadRow >= 0 && in.PadRow < sp.Shape[0] {
			s.Zero_(s.Select(t, 0, in.PadRow))
		}
	}
	if err := s.Err(); err != nil {
		return fmt.Errorf("initialise %s: %w", m.lay.Class, err)
	}
	return nil
}

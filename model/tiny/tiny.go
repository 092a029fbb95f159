// Package tiny is a small post-LN transformer classifier (token and position
// embeddings, layer norm, multi-head self-attention, GELU feed-forward,
// tanh pooler, cross-entropy) on ringtune's torch layer. It exercises every
// op class the real architectures use, and backs the foundation tests and
// the step and leak benchmarks; scripts/bench/tiny_torch.py is the same
// model in PyTorch.
package tiny

import (
	"fmt"
	"math"

	"github.com/ringtune/ringtune/model/torch"
)

// Config sizes the model.
type Config struct {
	Vocab, Hidden, Layers, Heads, FFN, MaxLen, Labels int
	Dropout                                           float64
}

// Small is the default test size.
func Small() Config {
	return Config{Vocab: 1000, Hidden: 64, Layers: 2, Heads: 4, FFN: 256, MaxLen: 64, Labels: 2}
}

// Model holds the parameters.
type Model struct {
	Cfg    Config
	Params *torch.Params
}

// Specs lists the parameters in PyTorch naming.
func (c Config) Specs() []torch.ParamSpec {
	h, f := int64(c.Hidden), int64(c.FFN)
	sp := []torch.ParamSpec{
		{Name: "emb.tok", Shape: []int64{int64(c.Vocab), h}, Decay: true},
		{Name: "emb.pos", Shape: []int64{int64(c.MaxLen), h}, Decay: true},
		{Name: "emb.ln.weight", Shape: []int64{h}},
		{Name: "emb.ln.bias", Shape: []int64{h}},
	}
	for l := range c.Layers {
		p := fmt.Sprintf("layer.%d.", l)
		sp = append(sp,
			torch.ParamSpec{Name: p + "qkv.weight", Shape: []int64{3 * h, h}, Decay: true},
			torch.ParamSpec{Name: p + "qkv.bias", Shape: []int64{3 * h}},
			torch.ParamSpec{Name: p + "out.weight", Shape: []int64{h, h}, Decay: true},
			torch.ParamSpec{Name: p + "out.bias", Shape: []int64{h}},
			torch.ParamSpec{Name: p + "ln1.weight", Shape: []int64{h}},
			torch.ParamSpec{Name: p + "ln1.bias", Shape: []int64{h}},
			torch.ParamSpec{Name: p + "ff1.weight", Shape: []int64{f, h}, Decay: true},
			torch.ParamSpec{Name: p + "ff1.bias", Shape: []int64{f}},
			torch.ParamSpec{Name: p + "ff2.weight", Shape: []int64{h, f}, Decay: true},
			torch.ParamSpec{Name: p + "ff2.bias", Shape: []int64{h}},
			torch.ParamSpec{Name: p + "ln2.weight", Shape: []int64{h}},
			torch.ParamSpec{Name: p + "ln2.bias", Shape: []int64{h}},
		)
	}
	sp = append(sp,
		torch.ParamSpec{Name: "pool.weight", Shape: []int64{h, h}, Decay: true},
		torch.ParamSpec{Name: "pool.bias", Shape: []int64{h}},
		torch.ParamSpec{Name: "cls.weight", Shape: []int64{int64(c.Labels), h}, Decay: true},
		torch.ParamSpec{Name: "cls.bias", Shape: []int64{int64(c.Labels)}},
	)
	return sp
}

// New allocates the model and initialises it like BERT (N(0, 0.02) weights,
// zero biases, unit norm weights) from libtorch's seeded generator.
func New(cfg Config, dev torch.Device) (*Model, error) {
	if cfg.Hidden%cfg.Heads != 0 {
		return nil, fmt.Errorf("tiny model: hidden %d is not divisible by heads %d", cfg.Hidden, cfg.Heads)
	}
	p, err := torch.NewParams(cfg.Specs(), dev)
	if err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, Params: p}
	s := torch.NewScope()
	defer s.Close()
	prev := torch.SetGradEnabled(false)
	defer torch.SetGradEnabled(prev)
	for i, sp := range p.Specs {
		t := p.At(i)
		switch {
		case sp.Decay:
			s.Normal_(t, 0, 0.02)
		case len(sp.Name) > 7 && sp.Name[len(sp.Name)-7:] == ".weight":
			s.Fill_(t, 1)
		}
	}
	if err := s.Err(); err != nil {
		p.Free()
		return nil, fmt.Errorf("initialise tiny model: %w", err)
	}
	return m, nil
}

// Free releases the parameters.
func (m *Model) Free() { m.Params.Free() }

func (m *Model) w(name string) torch.Tensor {
	t, ok := m.Params.Get(name)
	if !ok {
		panic("tiny: no parameter " + name) // a bug in Specs, not an input error
	}
	return t
}

// Loss runs the forward pass on ids [B, T] (int64), mask [B, T] (1 keep, 0
// pad) and labels [B], and returns the summed cross-entropy (a 0-d tensor)
// in s. Errors surface through s.Err.
func (m *Model) Loss(s *torch.Scope, ids, mask, labels torch.Tensor, train bool) torch.Tensor {
	logits := m.Logits(s, ids, mask, train)
	return s.CrossEntropy(logits, labels, torch.ReduceSum, -100)
}

// Logits runs the forward pass and returns [B, Labels].
func (m *Model) Logits(s *torch.Scope, ids, mask torch.Tensor, train bool) torch.Tensor {
	c := m.Cfg
	shape := ids.Shape()
	if len(shape) != 2 {
		s.Fail(fmt.Errorf("tiny model: ids must be [batch, seq], got %v", shape))
		return torch.Tensor{}
	}
	b, t := shape[0], shape[1]
	h, nh := int64(c.Hidden), int64(c.Heads)
	hd := h / nh
	p := c.Dropout

	pos := s.Narrow(m.w("emb.pos"), 0, 0, t)
	x := s.Add(s.Embedding(m.w("emb.tok"), ids), pos)
	x = s.LayerNorm(x, []int64{h}, m.w("emb.ln.weight"), m.w("emb.ln.bias"), 1e-12)
	x = s.Dropout(x, p, train)

	// Additive mask: 0 where attended, -inf-like where padded, [B,1,1,T].
	keep := s.View(s.To(mask, torch.Float32), b, 1, 1, t)
	add := s.MulScalar(s.AddScalar(keep, -1), 1e9)

	for l := range c.Layers {
		pre := fmt.Sprintf("layer.%d.", l)
		qkv := s.Linear(x, m.w(pre+"qkv.weight"), m.w(pre+"qkv.bias"))           // [B,T,3H]
		qkv = s.Permute(s.View(qkv, b, t, 3, nh, hd), 2, 0, 3, 1, 4)             // [3,B,nh,T,hd]
		q, k, v := s.Select(qkv, 0, 0), s.Select(qkv, 0, 1), s.Select(qkv, 0, 2) // [B,nh,T,hd]
		scores := s.MulScalar(s.Matmul(q, s.Transpose(k, -2, -1)), 1/math.Sqrt(float64(hd)))
		attn := s.Dropout(s.Softmax(s.Add(scores, add), -1), p, train)
		ctx := s.Reshape(s.Transpose(s.Matmul(attn, v), 1, 2), b, t, h)
		a := s.Dropout(s.Linear(ctx, m.w(pre+"out.weight"), m.w(pre+"out.bias")), p, train)
		x = s.LayerNorm(s.Add(x, a), []int64{h}, m.w(pre+"ln1.weight"), m.w(pre+"ln1.bias"), 1e-12)
		f := s.Gelu(s.Linear(x, m.w(pre+"ff1.weight"), m.w(pre+"ff1.bias")), false)
		f = s.Dropout(s.Linear(s.Dropout(f, p, train), m.w(pre+"ff2.weight"), m.w(pre+"ff2.bias")), p, train)
		x = s.LayerNorm(s.Add(x, f), []int64{h}, m.w(pre+"ln2.weight"), m.w(pre+"ln2.bias"), 1e-12)
	}
	first := s.Select(x, 1, 0)
	pooled := s.Tanh(s.Linear(first, m.w("pool.weight"), m.w("pool.bias")))
	return s.Linear(s.Dropout(pooled, p, train), m.w("cls.weight"), m.w("cls.bias"))
}

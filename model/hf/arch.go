package hf

import (
	"fmt"
	"math"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hfspec"
	"github.com/ringtune/ringtune/model/torch"
)

// layout is hfspec's layout with the parameter specs the torch layer takes.
type layout struct {
	*hfspec.Layout
	specs []torch.ParamSpec
}

func newLayout(c *Config, task data.Task, numLabels int) (*layout, error) {
	l, err := hfspec.NewLayout(c, task, numLabels)
	if err != nil {
		return nil, err
	}
	specs := make([]torch.ParamSpec, len(l.Params))
	for i, p := range l.Params {
		specs[i] = torch.ParamSpec{Name: p.Name, Shape: p.Shape, Decay: p.Decay}
	}
	return &layout{Layout: l, specs: specs}, nil
}

// inputs is one batch as tensors on the model's device.
type inputs struct {
	b, t  int64
	ids   torch.Tensor // [B,T] int64
	types torch.Tensor // [B,T] int64 (BERT)
	// pos is [T] int64 positions 0..T-1, or [B,T] for a packed batch,
	// where positions restart at each document.
	pos    torch.Tensor
	packed bool
	mask   torch.Tensor // additive attention mask, broadcastable to [B,1,T,T]
	// rowIDs are ids remapped to the step's rows of the split embedding
	// (rows.go); undefined outside a training pass of such a step.
	rowIDs torch.Tensor
}

// net runs the forward passes; it reads parameters through w so that bf16
// compute can cast each fp32 master weight on the way in.
type net struct {
	c    *Config
	w    func(s *torch.Scope, name string) torch.Tensor
	drop func(kind string) float64
	rope func(s *torch.Scope, t int64) (cos, sin torch.Tensor)
	// embed looks the batch's token ids up in the named word-embedding
	// matrix (pad: the padding row, no gradient; < 0 none).
	embed func(s *torch.Scope, name string, in *inputs, pad int64) torch.Tensor
}

// splitHeads turns [B,T,n·d] into [B,n,T,d].
func splitHeads(s *torch.Scope, x torch.Tensor, b, t, n, d int64) torch.Tensor {
	return s.Transpose(s.View(x, b, t, n, d), 1, 2)
}

// attend is eager scaled dot-product attention with an additive mask, as
// transformers' eager attention computes it; returns [B,T,n·d].
func attend(s *torch.Scope, q, k, v, mask torch.Tensor, b, t, n, d int64, p float64, train bool) torch.Tensor {
	scores := s.MulScalar(s.Matmul(q, s.Transpose(k, -2, -1)), 1/math.Sqrt(float64(d)))
	probs := s.Softmax(s.Add(scores, mask), -1)
	probs = s.Dropout(probs, p, train)
	return s.Reshape(s.Transpose(s.Matmul(probs, v), 1, 2), b, t, n*d)
}

// bert returns the classifier logits [B, labels].
func (n *net) bert(s *torch.Scope, in *inputs, train bool) torch.Tensor {
	x := n.bertEncoder(s, in, train)
	lin := func(x torch.Tensor, name string) torch.Tensor {
		return s.Linear(x, n.w(s, name+".weight"), n.w(s, name+".bias"))
	}
	pooled := s.Tanh(lin(s.Select(x, 1, 0), "bert.pooler.dense"))
	return lin(s.Dropout(pooled, n.drop("classifier"), train), "classifier")
}

// bertEncoder returns BertModel's last hidden states [B,T,H] (what every
// BERT head starts from).
func (n *net) bertEncoder(s *torch.Scope, in *inputs, train bool) torch.Tensor {
	c := n.c
	h, nh, hd := int64(c.Hidden), int64(c.Heads), int64(c.HeadDim)
	eps := c.NormEps
	pd, ad := n.drop("hidden"), n.drop("attn")
	p := "bert."
	x := n.embed(s, p+"embeddings.word_embeddings.weight", in, int64(c.PadTokenID))
	x = s.Add(x, s.Embedding(n.w(s, p+"embeddings.token_type_embeddings.weight"), in.types))
	x = s.Add(x, s.Embedding(n.w(s, p+"embeddings.position_embeddings.weight"), in.pos))
	x = s.LayerNorm(x, []int64{h}, n.w(s, p+"embeddings.LayerNorm.weight"), n.w(s, p+"embeddings.LayerNorm.bias"), eps)
	x = s.Dropout(x, pd, train)
	lin := func(x torch.Tensor, name string) torch.Tensor {
		return s.Linear(x, n.w(s, name+".weight"), n.w(s, name+".bias"))
	}
	for i := range c.Layers {
		q := fmt.Sprintf("%sencoder.layer.%d.", p, i)
		qh := splitHeads(s, lin(x, q+"attention.self.query"), in.b, in.t, nh, hd)
		kh := splitHeads(s, lin(x, q+"attention.self.key"), in.b, in.t, nh, hd)
		vh := splitHeads(s, lin(x, q+"attention.self.value"), in.b, in.t, nh, hd)
		ctx := attend(s, qh, kh, vh, in.mask, in.b, in.t, nh, hd, ad, train)
		a := s.Dropout(lin(ctx, q+"attention.output.dense"), pd, train)
		x = s.LayerNorm(s.Add(a, x), []int64{h}, n.w(s, q+"attention.output.LayerNorm.weight"), n.w(s, q+"attention.output.LayerNorm.bias"), eps)
		f := s.Gelu(lin(x, q+"intermediate.dense"), false)
		o := s.Dropout(lin(f, q+"output.dense"), pd, train)
		x = s.LayerNorm(s.Add(o, x), []int64{h}, n.w(s, q+"output.LayerNorm.weight"), n.w(s, q+"output.LayerNorm.bias"), eps)
	}
	return x
}

// gpt2 returns the final hidden states [B,T,H] (before the LM head).
func (n *net) gpt2(s *torch.Scope, in *inputs, train bool) torch.Tensor {
	c := n.c
	h, nh, hd := int64(c.Hidden), int64(c.Heads), int64(c.HeadDim)
	eps := c.NormEps
	pd, ad := n.drop("hidden"), n.drop("attn")
	p := "transformer."
	x := s.Add(n.embed(s, p+"wte.weight", in, -1), s.Embedding(n.w(s, p+"wpe.weight"), in.pos))
	x = s.Dropout(x, n.drop("embedding"), train)
	ln := func(x torch.Tensor, name string) torch.Tensor {
		return s.LayerNorm(x, []int64{h}, n.w(s, name+".weight"), n.w(s, name+".bias"), eps)
	}
	conv := func(x torch.Tensor, name string) torch.Tensor { // Conv1D: x·W + b with W [in,out]
		return s.Linear(x, s.Transpose(n.w(s, name+".weight"), 0, 1), n.w(s, name+".bias"))
	}
	for i := range c.Layers {
		q := fmt.Sprintf("%sh.%d.", p, i)
		qkv := conv(ln(x, q+"ln_1"), q+"attn.c_attn")
		qh := splitHeads(s, s.Narrow(qkv, 2, 0, h), in.b, in.t, nh, hd)
		kh := splitHeads(s, s.Narrow(qkv, 2, h, h), in.b, in.t, nh, hd)
		vh := splitHeads(s, s.Narrow(qkv, 2, 2*h, h), in.b, in.t, nh, hd)
		ctx := attend(s, qh, kh, vh, in.mask, in.b, in.t, nh, hd, ad, train)
		x = s.Add(x, s.Dropout(conv(ctx, q+"attn.c_proj"), pd, train))
		f := s.Gelu(conv(ln(x, q+"ln_2"), q+"mlp.c_fc"), c.Act != "gelu")
		x = s.Add(x, s.Dropout(conv(f, q+"mlp.c_proj"), pd, train))
	}
	return ln(x, p+"ln_f")
}

// rmsNorm is LlamaRMSNorm: x·rsqrt(mean(x²)+eps)·w, in fp32.
func rmsNorm(s *torch.Scope, x, w torch.Tensor, eps float64) torch.Tensor {
	dt := x.DType()
	if dt != torch.Float32 {
		x = s.To(x, torch.Float32)
	}
	y := s.Mul(x, s.Rsqrt(s.AddScalar(s.MeanDim(s.Square(x), true, -1), eps)))
	if dt != torch.Float32 {
		y = s.To(y, dt)
	}
	return s.Mul(w, y)
}

// rotate applies rotary embeddings to x [B,n,T,d] with cos, sin [T,d] or
// [B,1,T,d].
func rotate(s *torch.Scope, x, cos, sin torch.Tensor, d int64) torch.Tensor {
	half := d / 2
	rot := s.Cat(-1, s.Neg(s.Narrow(x, -1, half, half)), s.Narrow(x, -1, 0, half))
	return s.Add(s.Mul(x, cos), s.Mul(rot, sin))
}

// llama returns the final hidden states [B,T,H].
func (n *net) llama(s *torch.Scope, in *inputs, train bool) torch.Tensor {
	c := n.c
	nh, nkv, hd := int64(c.Heads), int64(c.KVHeads), int64(c.HeadDim)
	eps := c.NormEps
	ad := n.drop("attn")
	p := "model."
	x := n.embed(s, p+"embed_tokens.weight", in, int64(c.PadTokenID))
	cos, sin := n.rope(s, in.t)
	if in.packed {
		// Per-row positions: gather each token's rotary row, [B,1,T,d],
		// as transformers does from position_ids.
		cos = s.Unsqueeze(s.Embedding(cos, in.pos), 1)
		sin = s.Unsqueeze(s.Embedding(sin, in.pos), 1)
	}
	lin := func(x torch.Tensor, name string, bias bool) torch.Tensor {
		var b torch.Tensor
		if bias {
			b = n.w(s, name+".bias")
		}
		return s.Linear(x, n.w(s, name+".weight"), b)
	}
	rep := nh / nkv
	repeat := func(t torch.Tensor) torch.Tensor { // repeat_kv: [B,kv,T,d] -> [B,kv·rep,T,d]
		if rep == 1 {
			return t
		}
		e := s.Expand(s.Unsqueeze(t, 2), in.b, nkv, rep, in.t, hd)
		return s.Reshape(e, in.b, nh, in.t, hd)
	}
	for i := range c.Layers {
		q := fmt.Sprintf("%slayers.%d.", p, i)
		hs := rmsNorm(s, x, n.w(s, q+"input_layernorm.weight"), eps)
		qh := rotate(s, splitHeads(s, lin(hs, q+"self_attn.q_proj", c.AttnBias), in.b, in.t, nh, hd), cos, sin, hd)
		kh := rotate(s, splitHeads(s, lin(hs, q+"self_attn.k_proj", c.AttnBias), in.b, in.t, nkv, hd), cos, sin, hd)
		vh := splitHeads(s, lin(hs, q+"self_attn.v_proj", c.AttnBias), in.b, in.t, nkv, hd)
		ctx := attend(s, qh, repeat(kh), repeat(vh), in.mask, in.b, in.t, nh, hd, ad, train)
		x = s.Add(x, lin(ctx, q+"self_attn.o_proj", c.AttnBias))
		hs = rmsNorm(s, x, n.w(s, q+"post_attention_layernorm.weight"), eps)
		g := s.Silu(lin(hs, q+"mlp.gate_proj", c.MLPBias))
		x = s.Add(x, lin(s.Mul(g, lin(hs, q+"mlp.up_proj", c.MLPBias)), q+"mlp.down_proj", c.MLPBias))
	}
	return rmsNorm(s, x, n.w(s, p+"norm.weight"), eps)
}

// lmHead projects hidden states to vocabulary logits.
func (n *net) lmHead(s *torch.Scope, x torch.Tensor) torch.Tensor {
	name := "lm_head.weight"
	if n.c.Tied {
		name = map[Family]string{GPT2: "transformer.wte.weight", Llama: "model.embed_tokens.weight"}[n.c.Family]
	}
	return s.Linear(x, n.w(s, name), torch.Tensor{})
}

// ropeTables computes Llama's rotary cos and sin tables [t, d] the way
// transformers does: inverse frequencies and angles in float32.
func ropeTables(theta float64, d, t int) (cos, sin []float32) {
	half := d / 2
	inv := make([]float32, half)
	for i := range half {
		inv[i] = float32(1 / float64(float32(math.Pow(theta, float64(float32(2*i)/float32(d))))))
	}
	cos = make([]float32, t*d)
	sin = make([]float32, t*d)
	for p := range t {
		for i := range half {
			a := float64(float32(p) * inv[i])
			cv, sv := float32(math.Cos(a)), float32(math.Sin(a))
			cos[p*d+i], cos[p*d+i+half] = cv, cv
			sin[p*d+i], sin[p*d+i+half] = sv, sv
		}
	}
	return cos, sin
}

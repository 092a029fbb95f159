package hfspec

import (
	"fmt"
	"math"
	"strings"

	"github.com/ringtune/ringtune/data"
)

// InitKind is how init: random fills one parameter, following each family's
// _init_weights in transformers.
type InitKind struct {
	Std    float64 // > 0: normal(0, std)
	One    bool    // norm weights
	PadRow int64   // >= 0: zero this embedding row afterwards
}

// Param is one parameter: its Hugging Face name and shape, and whether it
// gets weight decay.
type Param struct {
	Name  string
	Shape []int64
	// Decay is true for matrices and embeddings; biases and norm weights
	// are exempt, as in transformers' Trainer.
	Decay bool
}

// Numel is the parameter's number of elements.
func (p Param) Numel() int64 {
	n := int64(1)
	for _, d := range p.Shape {
		n *= d
	}
	return n
}

// Layout is a model's parameters in Hugging Face naming plus what a loader
// needs to know about them.
type Layout struct {
	Params []Param
	Init   map[string]InitKind
	// Optional parameters may be absent from a checkpoint (a base-model or
	// pre-training checkpoint loaded for a new task head) and are then
	// initialised randomly, as transformers does.
	Optional map[string]bool
	// Prefix is the base model's attribute name ("bert.", "transformer.",
	// "model."); checkpoints of the bare base model lack it.
	Prefix string
	// Class is the transformers class this layout mirrors.
	Class string
}

// Numel is the total number of parameter elements.
func (l *Layout) Numel() int64 {
	var n int64
	for _, p := range l.Params {
		n += p.Numel()
	}
	return n
}

func (l *Layout) add(name string, shape []int64, in InitKind) {
	// Weight decay goes to matrices and embeddings only; biases and norm
	// weights are exempt, as in transformers' Trainer.
	decay := len(shape) > 1
	l.Params = append(l.Params, Param{Name: name, Shape: shape, Decay: decay})
	l.Init[name] = in
}

// Ignorable reports whether a checkpoint tensor that is not a parameter is
// one transformers also skips silently: non-parameter buffers that old
// versions saved, the tied output projection, and BERT's pre-training heads.
func (l *Layout) Ignorable(c *Config, name string) bool {
	switch {
	case strings.HasSuffix(name, "position_ids"), strings.HasSuffix(name, "rotary_emb.inv_freq"),
		strings.HasSuffix(name, ".attn.bias"), strings.HasSuffix(name, ".attn.masked_bias"):
		return true
	case c.Tied && name == "lm_head.weight":
		return true
	case c.Family == BERT && strings.HasPrefix(name, "cls."):
		return true
	case c.Family == BERT && l.Class != "BertForSequenceClassification" && bertOtherHead(name):
		// The pooler and sequence classifier of a checkpoint loaded into
		// another BERT head: from_pretrained drops them as unexpected keys.
		return true
	}
	return false
}

// bertOtherHead reports whether a checkpoint tensor belongs to a BERT head
// (pooler, sequence classifier) that the layout being loaded lacks.
func bertOtherHead(name string) bool {
	for _, p := range []string{"bert.pooler.", "pooler.", "classifier."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// The masked-LM head's parameters, as transformers' BertForMaskedLM names
// them: cls.predictions = transform (dense, gelu, LayerNorm) and a decoder
// whose weight is the word-embedding matrix (tied, never stored twice) and
// whose bias is MLMBias.
const (
	MLMDense = "cls.predictions.transform.dense"
	MLMNorm  = "cls.predictions.transform.LayerNorm"
	MLMBias  = "cls.predictions.bias"
)

func (l *Layout) addMLMHead(c *Config) {
	h, v := int64(c.Hidden), int64(c.Vocab)
	l.Class = "BertForMaskedLM"
	l.add(MLMDense+".weight", []int64{h, h}, InitKind{Std: c.InitRange, PadRow: -1})
	l.add(MLMDense+".bias", []int64{h}, InitKind{PadRow: -1})
	l.add(MLMNorm+".weight", []int64{h}, InitKind{One: true, PadRow: -1})
	l.add(MLMNorm+".bias", []int64{h}, InitKind{PadRow: -1})
	l.add(MLMBias, []int64{v}, InitKind{PadRow: -1})
	// A checkpoint of another head (a fine-tuned classifier) lacks the
	// prediction head; it is then initialised fresh, as from_pretrained does.
	for _, n := range []string{MLMDense + ".weight", MLMDense + ".bias", MLMNorm + ".weight", MLMNorm + ".bias", MLMBias} {
		l.Optional[n] = true
	}
}

// addTokenHead is BertForTokenClassification's classifier over every
// position.
func (l *Layout) addTokenHead(c *Config, numLabels int) {
	h, k := int64(c.Hidden), int64(numLabels)
	l.Class = "BertForTokenClassification"
	l.add("classifier.weight", []int64{k, h}, InitKind{Std: c.InitRange, PadRow: -1})
	l.add("classifier.bias", []int64{k}, InitKind{PadRow: -1})
	l.Optional["classifier.weight"] = true
	l.Optional["classifier.bias"] = true
}

// NewLayout lists the parameters of c's family with the head for task
// (numLabels outputs for classification, 1 for regression, the LM head for
// causal_lm), in the order transformers creates them.
func NewLayout(c *Config, task data.Task, numLabels int) (*Layout, error) {
	l := &Layout{Init: map[string]InitKind{}, Optional: map[string]bool{}}
	h, f, v := int64(c.Hidden), int64(c.Intermediate), int64(c.Vocab)
	normal := InitKind{Std: c.InitRange, PadRow: -1}
	zero := InitKind{PadRow: -1}
	one := InitKind{One: true, PadRow: -1}
	vec := func(n int64) []int64 { return []int64{n} }
	mat := func(a, b int64) []int64 { return []int64{a, b} }
	switch c.Family {
	case BERT:
		if task == data.CausalLM {
			return nil, fmt.Errorf("model %s: bert has no causal-LM head here; use task classification, regression, masked_lm or token_classification", c.Path)
		}
		l.Prefix, l.Class = "bert.", "BertForSequenceClassification"
		p := "bert."
		emb := normal
		emb.PadRow = int64(c.PadTokenID)
		l.add(p+"embeddings.word_embeddings.weight", mat(v, h), emb)
		l.add(p+"embeddings.position_embeddings.weight", mat(int64(c.MaxPositions), h), normal)
		l.add(p+"embeddings.token_type_embeddings.weight", mat(int64(c.TypeVocab), h), normal)
		l.add(p+"embeddings.LayerNorm.weight", vec(h), one)
		l.add(p+"embeddings.LayerNorm.bias", vec(h), zero)
		for i := range c.Layers {
			q := fmt.Sprintf("%sencoder.layer.%d.", p, i)
			for _, n := range []string{"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"} {
				l.add(q+n+".weight", mat(h, h), normal)
				l.add(q+n+".bias", vec(h), zero)
			}
			l.add(q+"attention.output.LayerNorm.weight", vec(h), one)
			l.add(q+"attention.output.LayerNorm.bias", vec(h), zero)
			l.add(q+"intermediate.dense.weight", mat(f, h), normal)
			l.add(q+"intermediate.dense.bias", vec(f), zero)
			l.add(q+"output.dense.weight", mat(h, f), normal)
			l.add(q+"output.dense.bias", vec(h), zero)
			l.add(q+"output.LayerNorm.weight", vec(h), one)
			l.add(q+"output.LayerNorm.bias", vec(h), zero)
		}
		switch task {
		case data.MaskedLM:
			l.addMLMHead(c)
		case data.TokenClassification:
			l.addTokenHead(c, numLabels)
		default:
			l.add(p+"pooler.dense.weight", mat(h, h), normal)
			l.add(p+"pooler.dense.bias", vec(h), zero)
			l.add("classifier.weight", mat(int64(numLabels), h), normal)
			l.add("classifier.bias", vec(int64(numLabels)), zero)
			for _, n := range []string{p + "pooler.dense.weight", p + "pooler.dense.bias", "classifier.weight", "classifier.bias"} {
				l.Optional[n] = true
			}
		}
	case GPT2:
		if task != data.CausalLM {
			return nil, fmt.Errorf("model %s: gpt2 is supported as a causal LM only; use task causal_lm", c.Path)
		}
		l.Prefix, l.Class = "transformer.", "GPT2LMHeadModel"
		p := "transformer."
		// GPT-2 scales the init of the projections into the residual stream
		// by 1/sqrt(2·layers) (transformers' GPT2PreTrainedModel).
		proj := InitKind{Std: c.InitRange / math.Sqrt(2*float64(c.Layers)), PadRow: -1}
		l.add(p+"wte.weight", mat(v, h), normal)
		l.add(p+"wpe.weight", mat(int64(c.MaxPositions), h), normal)
		for i := range c.Layers {
			q := fmt.Sprintf("%sh.%d.", p, i)
			l.add(q+"ln_1.weight", vec(h), one)
			l.add(q+"ln_1.bias", vec(h), zero)
			// Conv1D stores weights as [in, out].
			l.add(q+"attn.c_attn.weight", mat(h, 3*h), normal)
			l.add(q+"attn.c_attn.bias", vec(3*h), zero)
			l.add(q+"attn.c_proj.weight", mat(h, h), proj)
			l.add(q+"attn.c_proj.bias", vec(h), zero)
			l.add(q+"ln_2.weight", vec(h), one)
			l.add(q+"ln_2.bias", vec(h), zero)
			l.add(q+"mlp.c_fc.weight", mat(h, f), normal)
			l.add(q+"mlp.c_fc.bias", vec(f), zero)
			l.add(q+"mlp.c_proj.weight", mat(f, h), proj)
			l.add(q+"mlp.c_proj.bias", vec(h), zero)
		}
		l.add(p+"ln_f.weight", vec(h), one)
		l.add(p+"ln_f.bias", vec(h), zero)
		if !c.Tied {
			l.add("lm_head.weight", mat(v, h), normal)
		}
	case Llama:
		if task != data.CausalLM {
			return nil, fmt.Errorf("model %s: llama is supported as a causal LM only; use task causal_lm", c.Path)
		}
		l.Prefix, l.Class = "model.", "LlamaForCausalLM"
		p := "model."
		emb := normal
		emb.PadRow = int64(c.PadTokenID)
		qd, kvd := int64(c.Heads*c.HeadDim), int64(c.KVHeads*c.HeadDim)
		l.add(p+"embed_tokens.weight", mat(v, h), emb)
		for i := range c.Layers {
			q := fmt.Sprintf("%slayers.%d.", p, i)
			for _, pr := range []struct {
				n        string
				out, in  int64
				biasFlag bool
			}{
				{"self_attn.q_proj", qd, h, c.AttnBias}, {"self_attn.k_proj", kvd, h, c.AttnBias},
				{"self_attn.v_proj", kvd, h, c.AttnBias}, {"self_attn.o_proj", h, qd, c.AttnBias},
				{"mlp.gate_proj", f, h, c.MLPBias}, {"mlp.up_proj", f, h, c.MLPBias}, {"mlp.down_proj", h, f, c.MLPBias},
			} {
				l.add(q+pr.n+".weight", mat(pr.out, pr.in), normal)
				if pr.biasFlag {
					l.add(q+pr.n+".bias", vec(pr.out), zero)
				}
			}
			l.add(q+"input_layernorm.weight", vec(h), one)
			l.add(q+"post_attention_layernorm.weight", vec(h), one)
		}
		l.add(p+"norm.weight", vec(h), one)
		if !c.Tied {
			l.add("lm_head.weight", mat(v, h), normal)
		}
	default:
		return nil, fmt.Errorf("model %s: unsupported family %q", c.Path, c.Family)
	}
	return l, nil
}

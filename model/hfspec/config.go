package hfspec

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/ringtune/ringtune/data"
)

// Family is an architecture family this package implements.
type Family string

// The families.
const (
	BERT  Family = "bert"
	GPT2  Family = "gpt2"
	Llama Family = "llama"
)

// Config is the part of a Hugging Face config.json that decides the
// architecture's shapes and semantics, normalised across families (GPT-2
// says n_embd where BERT says hidden_size). Raw keeps the whole file so that
// Save writes back every key it does not own.
type Config struct {
	Family       Family
	Vocab        int
	Hidden       int
	Layers       int
	Heads        int
	KVHeads      int // Llama grouped-query attention; Heads elsewhere
	HeadDim      int
	Intermediate int
	MaxPositions int
	TypeVocab    int    // BERT token types
	Act          string // hidden_act / activation_function
	NormEps      float64
	InitRange    float64
	PadTokenID   int // -1 when the config has none
	RopeTheta    float64
	Tied         bool // output projection shares the input embedding
	AttnBias     bool // Llama attention_bias
	MLPBias      bool // Llama mlp_bias

	// Dropout probabilities as config.json gives them.
	HiddenDropout, AttnDropout, EmbDropout, ClassifierDropout float64

	NumLabels    int
	ProblemType  string
	Architecture string // architectures[0], "" when absent

	// SequenceHeadRedraw is config.json's SequenceHeadRedrawKey: substrings
	// of parameter names drawn afresh, not loaded, when the checkpoint is
	// fine-tuned for a sequence-level task (nil when the key is absent).
	SequenceHeadRedraw []string

	Raw  map[string]any
	Path string
}

// SequenceHeadRedrawKey is a config.json key a ringtune pre-trained
// checkpoint may carry: a list of substrings of parameter names that are
// initialised afresh, not loaded, when the checkpoint is fine-tuned for a
// sequence-level task (classification or regression, which read the [CLS]
// state through the pooler). Every other task, and every other tensor,
// loads as from_pretrained would. scripts/pretrain.sh writes
// [".attention.self.query.", ".attention.self.key."]: the masked LM's heads
// are sharp and positional, so [CLS] attends to itself and [SEP], not to
// the words, and a classifier fine-tuned from them under-fits (README, "Why
// the checkpoint loses on sentiment"). transformers ignores the key.
const SequenceHeadRedrawKey = "ringtune_sequence_head_redraw"

// Redraw returns the loaded parameters (names as in the layout) that
// SequenceHeadRedraw names for task: none for a task that is not
// sequence-level, and an error naming the key when it matches none of
// them (a typo would otherwise silently load everything).
func (c *Config) Redraw(task data.Task, loaded []string, class string) ([]string, error) {
	if c.SequenceHeadRedraw == nil || (task != data.Classification && task != data.Regression) {
		return nil, nil
	}
	var out []string
	for _, n := range loaded {
		for _, s := range c.SequenceHeadRedraw {
			if strings.Contains(n, s) {
				out = append(out, n)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("model config %s: key %q: %v matches no parameter of %s; fix or remove the key",
			c.Path, SequenceHeadRedrawKey, c.SequenceHeadRedraw, class)
	}
	return out, nil
}

// ReadConfig reads dir/config.json.
func ReadConfig(dir string) (*Config, error) {
	path := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read model config: %w (a Hugging Face model directory needs config.json)", err)
	}
	return ParseConfig(raw, path)
}

// ParseConfig parses the bytes of a config.json; path names it in errors.
func ParseConfig(raw []byte, path string) (*Config, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("model config %s: not valid JSON: %w", path, err)
	}
	r := reader{m: m, path: path}
	c := &Config{Raw: m, Path: path, PadTokenID: -1}
	mt := r.str("model_type", "")
	switch mt {
	case "bert":
		c.Family = BERT
		c.Vocab = r.int("vocab_size", 30522)
		c.Hidden = r.int("hidden_size", 768)
		c.Layers = r.int("num_hidden_layers", 12)
		c.Heads = r.int("num_attention_heads", 12)
		c.Intermediate = r.int("intermediate_size", 3072)
		c.MaxPositions = r.int("max_position_embeddings", 512)
		c.TypeVocab = r.int("type_vocab_size", 2)
		c.Act = r.str("hidden_act", "gelu")
		c.NormEps = r.float("layer_norm_eps", 1e-12)
		c.InitRange = r.float("initializer_range", 0.02)
		c.PadTokenID = r.int("pad_token_id", 0)
		c.HiddenDropout = r.float("hidden_dropout_prob", 0.1)
		c.AttnDropout = r.float("attention_probs_dropout_prob", 0.1)
		c.ClassifierDropout = r.float("classifier_dropout", c.HiddenDropout)
		if pe := r.str("position_embedding_type", "absolute"); pe != "absolute" {
			r.fail("position_embedding_type", "%q is not supported (only absolute)", pe)
		}
		if c.Act != "gelu" {
			r.fail("hidden_act", "%q is not supported for bert (only gelu)", c.Act)
		}
	case "gpt2":
		c.Family = GPT2
		c.Vocab = r.int("vocab_size", 50257)
		c.Hidden = r.int("n_embd", 768)
		c.Layers = r.int("n_layer", 12)
		c.Heads = r.int("n_head", 12)
		c.Intermediate = r.int("n_inner", 4*c.Hidden)
		c.MaxPositions = r.int("n_positions", 1024)
		c.Act = r.str("activation_function", "gelu_new")
		c.NormEps = r.float("layer_norm_epsilon", 1e-5)
		c.InitRange = r.float("initializer_range", 0.02)
		c.HiddenDropout = r.float("resid_pdrop", 0.1)
		c.AttnDropout = r.float("attn_pdrop", 0.1)
		c.EmbDropout = r.float("embd_pdrop", 0.1)
		c.Tied = r.bool("tie_word_embeddings", true)
		if c.Act != "gelu_new" && c.Act != "gelu_pytorch_tanh" && c.Act != "gelu" {
			r.fail("activation_function", "%q is not supported (gelu_new, gelu_pytorch_tanh or gelu)", c.Act)
		}
		for _, k := range []string{"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"} {
			if r.bool(k, false) {
				r.fail(k, "true is not supported")
			}
		}
		if !r.bool("scale_attn_weights", true) {
			r.fail("scale_attn_weights", "false is not supported")
		}
	case "llama":
		c.Family = Llama
		c.Vocab = r.int("vocab_size", 32000)
		c.Hidden = r.int("hidden_size", 4096)
		c.Layers = r.int("num_hidden_layers", 32)
		c.Heads = r.int("num_attention_heads", 32)
		c.KVHeads = r.int("num_key_value_heads", c.Heads)
		c.Intermediate = r.int("intermediate_size", 11008)
		c.MaxPositions = r.int("max_position_embeddings", 2048)
		c.Act = r.str("hidden_act", "silu")
		c.NormEps = r.float("rms_norm_eps", 1e-6)
		c.InitRange = r.float("initializer_range", 0.02)
		c.PadTokenID = r.int("pad_token_id", -1)
		c.RopeTheta = r.float("rope_theta", 10000)
		c.Tied = r.bool("tie_word_embeddings", false)
		c.AttnBias = r.bool("attention_bias", false)
		c.MLPBias = r.bool("mlp_bias", false)
		c.AttnDropout = r.float("attention_dropout", 0)
		if c.Heads > 0 {
			c.HeadDim = r.int("head_dim", c.Hidden/c.Heads)
		}
		if v, ok := m["rope_scaling"]; ok && v != nil {
			r.fail("rope_scaling", "rope scaling is not supported; remove it or use a model without it")
		}
		if c.Act != "silu" {
			r.fail("hidden_act", "%q is not supported for llama (only silu)", c.Act)
		}
		if c.KVHeads < 1 || c.Heads%max(c.KVHeads, 1) != 0 {
			r.fail("num_key_value_heads", "%d must divide num_attention_heads %d", c.KVHeads, c.Heads)
		}
	case "":
		r.fail("model_type", "missing; want bert, gpt2 or llama")
	default:
		r.fail("model_type", "%q is not supported; want bert, gpt2 or llama", mt)
	}
	if c.KVHeads == 0 {
		c.KVHeads = c.Heads
	}
	if c.HeadDim == 0 && c.Heads > 0 {
		c.HeadDim = c.Hidden / c.Heads
	}
	if r.err == nil {
		for k, v := range map[string]int{"vocab size": c.Vocab, "hidden size": c.Hidden, "layers": c.Layers,
			"heads": c.Heads, "intermediate size": c.Intermediate, "max positions": c.MaxPositions} {
			if v < 1 {
				r.fail(k, "must be at least 1, got %d", v)
			}
		}
		if c.Family != Llama && c.Heads > 0 && c.Hidden%c.Heads != 0 {
			r.fail("hidden size", "%d is not divisible by the %d attention heads", c.Hidden, c.Heads)
		}
	}
	if labels, ok := m["id2label"].(map[string]any); ok && len(labels) > 0 {
		c.NumLabels = len(labels)
	}
	c.NumLabels = r.int("num_labels", c.NumLabels)
	c.ProblemType = r.str("problem_type", "")
	if a, ok := m["architectures"].([]any); ok && len(a) > 0 {
		c.Architecture, _ = a[0].(string)
	}
	if v, ok := m[SequenceHeadRedrawKey]; ok {
		list, isList := v.([]any)
		for _, e := range list {
			if s, _ := e.(string); s != "" {
				c.SequenceHeadRedraw = append(c.SequenceHeadRedraw, s)
			}
		}
		if !isList || len(c.SequenceHeadRedraw) != len(list) || len(list) == 0 {
			r.fail(SequenceHeadRedrawKey, "is %v; want a non-empty list of non-empty parameter-name substrings, e.g. [\".attention.self.query.\"] (or remove the key)", v)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return c, nil
}

// reader pulls typed keys out of the JSON map, keeping the first error.
type reader struct {
	m    map[string]any
	path string
	err  error
}

func (r *reader) fail(key, format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("model config %s: key %q: %s", r.path, key, fmt.Sprintf(format, args...))
	}
}

func (r *reader) int(key string, def int) int {
	v, ok := r.m[key]
	if !ok || v == nil {
		return def
	}
	f, ok := v.(float64)
	if !ok || f != math.Trunc(f) {
		r.fail(key, "want an integer, got %v", v)
		return def
	}
	return int(f)
}

func (r *reader) float(key string, def float64) float64 {
	v, ok := r.m[key]
	if !ok || v == nil {
		return def
	}
	f, ok := v.(float64)
	if !ok {
		r.fail(key, "want a number, got %v", v)
		return def
	}
	return f
}

func (r *reader) str(key, def string) string {
	v, ok := r.m[key]
	if !ok || v == nil {
		return def
	}
	s, ok := v.(string)
	if !ok {
		r.fail(key, "want a string, got %v", v)
		return def
	}
	return s
}

func (r *reader) bool(key string, def bool) bool {
	v, ok := r.m[key]
	if !ok || v == nil {
		return def
	}
	b, ok := v.(bool)
	if !ok {
		r.fail(key, "want true or false, got %v", v)
		return def
	}
	return b
}

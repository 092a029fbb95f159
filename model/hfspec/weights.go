package hfspec

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/safetensors"
)

// BinFileName is the PyTorch checkpoint transformers falls back to when a
// directory has no safetensors weights.
const BinFileName = "pytorch_model.bin"

// Weights is a checkpoint's tensors, however stored. Opening it validates
// every file's structure (a truncated or corrupt file fails here, naming
// it); Read decodes one tensor.
type Weights struct {
	Files string // the files, for errors not tied to one tensor
	Names []string
	Shape func(name string) []int64
	// ReadInto decodes a tensor into dst (exactly its size): from a
	// mapped file, without an intermediate copy, for safetensors.
	ReadInto func(name string, dst []float32) error
	FileOf   func(name string) string
	Close    func() error
}

// OpenWeights opens dir's weights: model.safetensors, a sharded
// model.safetensors.index.json, or pytorch_model.bin, in transformers'
// order of preference.
func OpenWeights(dir string) (*Weights, error) {
	st := filepath.Join(dir, safetensors.SingleFileName)
	idx := filepath.Join(dir, safetensors.IndexFileName)
	bin := filepath.Join(dir, BinFileName)
	switch {
	case exists(st) || exists(idx):
		c, err := safetensors.Load(dir)
		if err != nil {
			return nil, err
		}
		return &Weights{
			Files:    strings.Join(c.Files(), ", "),
			Names:    c.Names(),
			Shape:    func(n string) []int64 { i, _ := c.Info(n); return i.Shape },
			ReadInto: c.Float32sInto, FileOf: c.FileOf, Close: c.Close,
		}, nil
	case exists(bin):
		ts, err := safetensors.ReadTorchBin(bin)
		if err != nil {
			return nil, err
		}
		byName := map[string]safetensors.Tensor{}
		var names []string
		for _, t := range ts {
			byName[t.Name] = t
			names = append(names, t.Name)
		}
		return &Weights{
			Files: bin,
			Names: names,
			Shape: func(n string) []int64 { return byName[n].Shape },
			ReadInto: func(n string, dst []float32) error {
				v, err := byName[n].Float32s()
				copy(dst, v)
				return err
			},
			FileOf: func(string) string { return bin },
			Close:  func() error { return nil },
		}, nil
	}
	return nil, fmt.Errorf("load weights: %s has none of %s, %s, %s; copy the model's weights there, or use init: random to train from scratch",
		dir, safetensors.SingleFileName, safetensors.IndexFileName, BinFileName)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// Match is how a checkpoint's tensors map onto a layout's parameters.
type Match struct {
	// Name is the checkpoint tensor holding a parameter.
	Name func(param string) string
	// Missing are optional parameters the checkpoint lacks; they are
	// initialised randomly.
	Missing []string
	// Loaded are the parameters the checkpoint holds, in layout order, and
	// Ignored the checkpoint tensors that are no parameter (sorted): with
	// Missing, the load report from_pretrained prints.
	Loaded, Ignored []string
}

// Match checks w against l: every parameter must be present with its exact
// shape, except optional head parameters, and every checkpoint tensor must
// be a parameter or one transformers ignores too. Errors name the model
// directory dir, the tensor and its file. It reads no tensor data.
func (l *Layout) Match(c *Config, dir string, w *Weights) (*Match, error) {
	// A checkpoint of the bare base model (BertModel, GPT2Model, LlamaModel)
	// names tensors without the head model's attribute prefix.
	strip := true
	for _, n := range w.Names {
		if strings.HasPrefix(n, l.Prefix) {
			strip = false
			break
		}
	}
	have := map[string]bool{}
	for _, n := range w.Names {
		have[n] = true
	}
	name := func(param string) string {
		if strip {
			return strings.TrimPrefix(param, l.Prefix)
		}
		return param
	}
	where := func(n string) string {
		if f := w.FileOf(n); f != "" {
			return f
		}
		return w.Files
	}
	m := &Match{Name: name}
	used := map[string]bool{}
	for _, p := range l.Params {
		n := name(p.Name)
		if !have[n] {
			if l.Optional[p.Name] {
				m.Missing = append(m.Missing, p.Name)
				continue
			}
			return nil, fmt.Errorf("load model %s: checkpoint %s has no tensor %q, which %s needs (config.json and weights disagree, or the weights are of another architecture)",
				dir, where(""), n, l.Class)
		}
		used[n] = true
		m.Loaded = append(m.Loaded, p.Name)
		if got := w.Shape(n); !slices.Equal(got, p.Shape) {
			return nil, fmt.Errorf("load model %s: tensor %q in %s has shape %v, but config.json implies %v for %s",
				dir, n, where(n), got, p.Shape, l.Class)
		}
	}
	for _, n := range w.Names {
		if used[n] {
			continue
		}
		if !l.Ignorable(c, n) {
			return nil, fmt.Errorf("load model %s: checkpoint %s has tensor %q that %s does not have (weights of another architecture or size?)",
				dir, where(n), n, l.Class)
		}
		m.Ignored = append(m.Ignored, n)
	}
	slices.Sort(m.Ignored)
	return m, nil
}

// Checked is what CheckDir learnt about a model directory.
type Checked struct {
	Config *Config
	Layout *Layout
}

// CheckDir validates a model directory the way a node will load it, without
// libtorch and without reading tensor data: config.json is parsed and
// checked, the layout for task and numLabels is built, and when the run
// starts from pretrained weights every weight file's header is verified and matched against
// the layout (names and shapes). The coordinator runs it before any node
// starts, so a broken model is bad input rather than a failure on every
// node.
func CheckDir(dir string, task data.Task, numLabels int, pretrained bool) (*Checked, error) {
	c, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	l, err := NewLayout(c, task, numLabels)
	if err != nil {
		return nil, err
	}
	if pretrained {
		w, err := OpenWeights(dir)
		if err != nil {
			return nil, err
		}
		m, err := l.Match(c, dir, w)
		if cerr := w.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("load model %s: %w", dir, cerr)
		}
		if err != nil {
			return nil, err
		}
		if _, err := c.Redraw(task, m.Loaded, l.Class); err != nil {
			return nil, err
		}
	}
	return &Checked{Config: c, Layout: l}, nil
}

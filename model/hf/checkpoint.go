package hf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// TokenizerFiles are the tokenizer files Save copies next to the weights.
var TokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model"}

// weightSource is a checkpoint's tensors, however stored.
type weightSource struct {
	files  string // for errors not tied to one tensor
	names  []string
	shape  func(name string) []int64
	read   func(name string) ([]float32, error)
	fileOf func(name string) string
	close  func() error
}

func openWeights(dir string) (*weightSource, error) {
	st := filepath.Join(dir, safetensors.SingleFileName)
	idx := filepath.Join(dir, safetensors.IndexFileName)
	bin := filepath.Join(dir, BinFileName)
	switch {
	case exists(st) || exists(idx):
		c, err := safetensors.Load(dir)
		if err != nil {
			return nil, err
		}
		return &weightSource{
			files: strings.Join(c.Files(), ", "),
			names: c.Names(),
			shape: func(n string) []int64 { i, _ := c.Info(n); return i.Shape },
			read:  c.Float32s, fileOf: c.FileOf, close: c.Close,
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
		return &weightSource{
			files:  bin,
			names:  names,
			shape:  func(n string) []int64 { return byName[n].Shape },
			read:   func(n string) ([]float32, error) { return byName[n].Float32s() },
			fileOf: func(string) string { return bin },
			close:  func() error { return nil },
		}, nil
	}
	return nil, fmt.Errorf("load weights: %s has none of %s, %s, %s; copy the model's weights there, or use init: random to train from scratch",
		dir, safetensors.SingleFileName, safetensors.IndexFileName, BinFileName)
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// loadWeights fills the parameters from the directory's checkpoint. Every
// parameter must be present with its exact shape, except optional head
// parameters (initialised randomly, as transformers does for a new head),
// and every checkpoint tensor must be a parameter or one transformers
// ignores too; anything else is an error naming the tensor and file.
func (m *Model) loadWeights() error {
	src, err := openWeights(m.dir)
	if err != nil {
		return fmt.Errorf("load model %s: %w", m.dir, err)
	}
	defer src.close()
	have := map[string]bool{}
	for _, n := range src.names {
		have[n] = true
	}
	// A checkpoint of the bare base model (BertModel, GPT2Model, LlamaModel)
	// names tensors without the head model's attribute prefix.
	strip := true
	for _, n := range src.names {
		if strings.HasPrefix(n, m.lay.prefix) {
			strip = false
			break
		}
	}
	ckptName := func(param string) string {
		if strip {
			return strings.TrimPrefix(param, m.lay.prefix)
		}
		return param
	}
	where := func(name string) string {
		if f := src.fileOf(name); f != "" {
			return f
		}
		return src.files
	}
	used := map[string]bool{}
	var missing []string
	host := make([]float32, m.params.Numel)
	for i, sp := range m.params.Specs {
		name := ckptName(sp.Name)
		if !have[name] {
			if m.lay.optional[sp.Name] {
				missing = append(missing, sp.Name)
				continue
			}
			return fmt.Errorf("load model %s: checkpoint %s has no tensor %q, which %s needs (config.json and weights disagree, or the weights are of another architecture)",
				m.dir, where(""), name, m.lay.class)
		}
		used[name] = true
		if got := src.shape(name); !slices.Equal(got, sp.Shape) {
			return fmt.Errorf("load model %s: tensor %q in %s has shape %v, but config.json implies %v for %s",
				m.dir, name, where(name), got, sp.Shape, m.lay.class)
		}
		v, err := src.read(name)
		if err != nil {
			return fmt.Errorf("load model %s: tensor %q in %s: %w", m.dir, name, where(name), err)
		}
		copy(host[m.params.Offsets[i]:], v)
	}
	var ignored []string
	for _, n := range src.names {
		if used[n] {
			continue
		}
		if !m.lay.ignorable(m.cfg, n) {
			return fmt.Errorf("load model %s: checkpoint %s has tensor %q that %s does not have (weights of another architecture or size?)",
				m.dir, where(n), n, m.lay.class)
		}
		ignored = append(ignored, n)
	}
	slices.Sort(ignored)
	m.Loaded = m.Loaded[:0]
	for _, sp := range m.params.Specs {
		if used[ckptName(sp.Name)] {
			m.Loaded = append(m.Loaded, sp.Name)
		}
	}
	m.Ignored = ignored
	if m.params.Numel > 0 {
		if err := m.params.SetParamsFrom(host); err != nil {
			return fmt.Errorf("load model %s: %w", m.dir, err)
		}
	}
	if len(missing) > 0 {
		set := map[string]bool{}
		for _, n := range missing {
			set[n] = true
		}
		if err := m.initRandom(set); err != nil {
			return err
		}
		m.NewlyInitialized = missing
	}
	return nil
}

// Save writes a Hugging Face model directory that transformers (and
// PyTorch) load: config.json updated for the task head, model.safetensors
// with every parameter under its HF name (a tied output projection is
// stored once, under the embedding's name, as transformers does), and the
// tokenizer files of the directory the model was loaded from.
func (m *Model) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	host := make([]float32, m.params.Numel)
	if err := m.CopyParamsTo(host); err != nil {
		return fmt.Errorf("save model %s: %w", dir, err)
	}
	ts := make([]safetensors.Tensor, len(m.params.Specs))
	for i, sp := range m.params.Specs {
		n := numel(sp.Shape)
		ts[i] = safetensors.FromFloat32(sp.Name, sp.Shape, host[m.params.Offsets[i]:][:n])
	}
	if _, err := safetensors.WriteDir(dir, ts, map[string]string{"format": "pt"}, 0); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	cfg := map[string]any{}
	for k, v := range m.cfg.Raw {
		cfg[k] = v
	}
	cfg["architectures"] = []string{m.lay.class}
	cfg["torch_dtype"] = "float32"
	switch m.task {
	case data.Classification, data.Regression, data.TokenClassification:
		id2label, label2id := map[string]string{}, map[string]int{}
		for i := range m.numLabels {
			l := fmt.Sprintf("LABEL_%d", i)
			id2label[fmt.Sprint(i)], label2id[l] = l, i
		}
		cfg["id2label"], cfg["label2id"] = id2label, label2id
		delete(cfg, "num_labels")
		cfg["problem_type"] = "single_label_classification"
		switch m.task {
		case data.Regression:
			cfg["problem_type"] = "regression"
		case data.TokenClassification:
			delete(cfg, "problem_type") // transformers has none for token heads
		}
	}
	raw, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("save model %s: config.json: %w", dir, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "config.json"), append(raw, '\n')); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	if abs(dir) == abs(m.dir) {
		return nil
	}
	for _, name := range TokenizerFiles {
		srcPath := filepath.Join(m.dir, name)
		if !exists(srcPath) {
			continue
		}
		if err := copyFile(srcPath, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("save model: tokenizer file: %w", err)
		}
	}
	return nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func copyFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst + ".tmp")
	if err != nil {
		return err
	}
	if _, err = io.Copy(out, in); err != nil {
		return errors.Join(fmt.Errorf("copy %s: %w", src, err), out.Close())
	}
	if err = out.Close(); err != nil {
		return err
	}
	return os.Rename(dst+".tmp", dst)
}

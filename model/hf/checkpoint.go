package hf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hfspec"
	"github.com/ringtune/ringtune/model/safetensors"
)

// BinFileName is the PyTorch checkpoint transformers falls back to when a
// directory has no safetensors weights.
const BinFileName = hfspec.BinFileName

// TokenizerFiles are the tokenizer files Save copies next to the weights.
var TokenizerFiles = []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model"}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// loadWeights fills the parameters from the directory's checkpoint. Every
// parameter must be present with its exact shape, except optional head
// parameters (initialised randomly, as transformers does for a new head),
// and every checkpoint tensor must be a parameter or one transformers
// ignores too; anything else is an error naming the tensor and file.
func (m *Model) loadWeights() error {
	src, err := hfspec.OpenWeights(m.dir)
	if err != nil {
		return fmt.Errorf("load model %s: %w", m.dir, err)
	}
	defer src.Close()
	match, err := m.lay.Match(m.cfg, m.dir, src)
	if err != nil {
		return err
	}
	missing := map[string]bool{}
	for _, n := range match.Missing {
		missing[n] = true
	}
	redraw, err := m.cfg.Redraw(m.task, match.Loaded, m.lay.Class)
	if err != nil {
		return fmt.Errorf("load model %s: %w", m.dir, err)
	}
	for _, n := range redraw {
		missing[n] = true
	}
	// On CPU every tensor is decoded from the mapped file straight into its
	// place in the parameter block; on CUDA into one host block, copied to
	// the device once.
	host := m.params.ParamSlice()
	direct := host != nil
	if !direct {
		host = make([]float32, m.params.Numel)
	}
	for i, sp := range m.params.Specs {
		if missing[sp.Name] {
			continue
		}
		name := match.Name(sp.Name)
		dst := host[m.params.Offsets[i]:][:numel(sp.Shape)]
		if err := src.ReadInto(name, dst); err != nil {
			where := src.FileOf(name)
			if where == "" {
				where = src.Files
			}
			return fmt.Errorf("load model %s: tensor %q in %s: %w", m.dir, name, where, err)
		}
	}
	m.Loaded, m.Ignored = match.Loaded, match.Ignored
	if len(redraw) > 0 {
		m.Loaded = nil
		for _, n := range match.Loaded {
			if !missing[n] {
				m.Loaded = append(m.Loaded, n)
			}
		}
	}
	if !direct && m.params.Numel > 0 {
		if err := m.params.SetParamsFrom(host); err != nil {
			return fmt.Errorf("load model %s: %w", m.dir, err)
		}
	}
	if len(missing) > 0 {
		if err := m.initRandom(missing); err != nil {
			return err
		}
		m.NewlyInitialized = append(append([]string(nil), match.Missing...), redraw...)
		m.Redrawn = redraw
	}
	return nil
}

// SequenceHeadRedrawKey is the config.json key naming the tensors a
// sequence-level fine-tune draws afresh (hfspec.SequenceHeadRedrawKey). Save
// drops it: a fine-tuned model's attention is its own.
const SequenceHeadRedrawKey = hfspec.SequenceHeadRedrawKey

// Save writes a Hugging Face model directory that transformers (and
// PyTorch) load: config.json updated for the task head, model.safetensors
// with every parameter under its HF name (a tied output projection is
// stored once, under the embedding's name, as transformers does), and the
// tokenizer files of the directory the model was loaded from.
func (m *Model) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	// On CPU the file is written straight from the parameter block (the
	// tensors alias it); on CUDA from one host copy.
	host := m.params.ParamSlice()
	if host == nil {
		host = make([]float32, m.params.Numel)
		if err := m.CopyParamsTo(host); err != nil {
			return fmt.Errorf("save model %s: %w", dir, err)
		}
	}
	ts := make([]safetensors.Tensor, len(m.params.Specs))
	for i, sp := range m.params.Specs {
		n := numel(sp.Shape)
		ts[i] = safetensors.Float32View(sp.Name, sp.Shape, host[m.params.Offsets[i]:][:n])
	}
	if _, err := safetensors.WriteDir(dir, ts, map[string]string{"format": "pt"}, 0); err != nil {
		return fmt.Errorf("save model: %w", err)
	}
	cfg := map[string]any{}
	for k, v := range m.cfg.Raw {
		cfg[k] = v
	}
	delete(cfg, SequenceHeadRedrawKey)
	cfg["architectures"] = []string{m.lay.Class}
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

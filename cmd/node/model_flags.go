package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/torch"
)

// modelFlags are the flags predict and eval share.
type modelFlags struct {
	dir, device, task string
	threads, batch    int
	maxLen            int
}

func (f *modelFlags) register(c *cobra.Command) {
	c.Flags().StringVar(&f.dir, "model", "", "Hugging Face model directory (config.json, weights, tokenizer)")
	c.Flags().StringVar(&f.device, "device", "cpu", "cpu, cuda or cuda:N")
	c.Flags().StringVar(&f.task, "task", "", "classification, regression or causal_lm (default: from config.json)")
	c.Flags().IntVar(&f.threads, "threads", 1, "libtorch intra-op threads")
	c.Flags().IntVar(&f.batch, "batch", 16, "rows per forward pass")
	c.Flags().IntVar(&f.maxLen, "max-length", 0, "truncate text to this many tokens (default: the model's positions)")
	c.MarkFlagRequired("model")
}

// open loads the model and, when the directory has one, its tokenizer.
func (f *modelFlags) open() (*hf.Model, *data.Tokenizer, error) {
	dev, err := torch.ParseDevice(f.device)
	if err != nil {
		return nil, nil, err
	}
	m, err := hf.Load(f.dir, hf.Options{Task: data.Task(f.task), Device: dev, Threads: f.threads})
	if err != nil {
		return nil, nil, err
	}
	tok, err := data.LoadTokenizer(f.dir)
	if err != nil {
		tok = nil // only input_ids lines can be predicted
	}
	return m, tok, nil
}

func needTokenizer(tok *data.Tokenizer, dir string) error {
	if tok == nil {
		return fmt.Errorf("model directory %s has no tokenizer (tokenizer.json, vocab.txt or vocab.json + merges.txt)", dir)
	}
	return nil
}

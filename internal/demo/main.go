// Command demo fine-tunes a small transformer classifier from scratch in one
// process on the real sentiment dataset (npm sentiment@5.0.2, fetched by
// scripts/fetch-data.sh), tokenised with the BERT-uncased tokenizer, and
// prints the evaluation accuracy. It is the single-process stand-in that the
// README's main command runs until the cluster (coordinator + nodes) lands.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/tiny"
	"github.com/ringtune/ringtune/model/torch"
)

func main() {
	dir := flag.String("data", ".data", "directory written by scripts/fetch-data.sh")
	epochs := flag.Int("epochs", 4, "passes over the training set")
	batch := flag.Int("batch", 32, "examples per step")
	lr := flag.Float64("lr", 5e-4, "AdamW learning rate")
	threads := flag.Int("threads", 2, "libtorch intra-op threads")
	flag.Parse()
	if err := run(*dir, *epochs, *batch, *lr, *threads); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func load(dir, split string, tok *data.Tokenizer) ([]data.Encoded, error) {
	path := filepath.Join(dir, "sentiment", split+".jsonl")
	exs, err := data.ReadFile(path, "", data.Fields{Text: "text", Label: "label", Task: data.Classification, NumLabels: 2})
	if err != nil {
		return nil, err
	}
	return tok.EncodeAll(path, exs, 64)
}

func run(dir string, epochs, bs int, lr float64, threads int) error {
	tok, err := data.LoadTokenizer(filepath.Join(dir, "tokenizers", "bert-base-uncased", "tokenizer.json"))
	if err != nil {
		return fmt.Errorf("%w (run scripts/fetch-data.sh first)", err)
	}
	train, err := load(dir, "train", tok)
	if err != nil {
		return fmt.Errorf("%w (run scripts/fetch-data.sh first)", err)
	}
	eval, err := load(dir, "eval", tok)
	if err != nil {
		return err
	}
	th := torch.NewThread()
	defer th.Close()
	return th.Do(func() error {
		if err := torch.SetThreads(threads); err != nil {
			return err
		}
		if err := torch.Seed(1234); err != nil {
			return err
		}
		cfg := tiny.Config{Vocab: tok.VocabSize(), Hidden: 128, Layers: 2, Heads: 4, FFN: 512, MaxLen: 64, Labels: 2, Dropout: 0.1}
		m, err := tiny.New(cfg, torch.CPU)
		if err != nil {
			return err
		}
		defer m.Free()
		opt, err := torch.NewAdamW(m.Params, torch.DefaultAdamW())
		if err != nil {
			return err
		}
		defer opt.Free()
		fmt.Printf("demo: %d train / %d eval sentences, model %d parameters, libtorch %s, %d threads\n",
			len(train), len(eval), m.Params.Numel, torch.Version(), threads)
		s := torch.NewScope()
		defer s.Close()
		rng := rand.New(rand.NewPCG(1234, 0))
		start := time.Now()
		for ep := range epochs {
			perm := rng.Perm(len(train))
			var sum float64
			var n int
			for i := 0; i+bs <= len(perm); i += bs {
				items := make([]data.Encoded, bs)
				for j := range items {
					items[j] = train[perm[i+j]]
				}
				b, err := data.Collate(items, data.Classification, tok.PAD)
				if err != nil {
					return err
				}
				if err := m.Params.ZeroGrad(); err != nil {
					return err
				}
				ids, mask, labels := tensors(s, b)
				loss := m.Loss(s, ids, mask, labels, true)
				s.Backward(loss)
				sum += s.Item(loss)
				n += bs
				if err := s.Release(); err != nil {
					return err
				}
				g := m.Params.GradSlice()
				for k := range g {
					g[k] /= float32(bs)
				}
				if _, err := m.Params.ClipGradNorm(1); err != nil {
					return err
				}
				if err := opt.Apply(lr); err != nil {
					return err
				}
			}
			acc, err := accuracy(s, m, eval, tok.PAD)
			if err != nil {
				return err
			}
			fmt.Printf("demo: epoch %d/%d  train loss %.4f  eval accuracy %.3f  (%.0f samples/s)\n",
				ep+1, epochs, sum/float64(n), acc, float64((ep+1)*len(train))/time.Since(start).Seconds())
		}
		return nil
	})
}

func tensors(s *torch.Scope, b *data.Batch) (ids, mask, labels torch.Tensor) {
	return s.FromInt64(b.InputIDs, int64(b.Size), int64(b.Seq)),
		s.FromInt64(b.AttentionMask, int64(b.Size), int64(b.Seq)),
		s.FromInt64(b.Labels, int64(b.Size))
}

func accuracy(s *torch.Scope, m *tiny.Model, eval []data.Encoded, pad int) (float64, error) {
	correct := 0
	for i := 0; i < len(eval); i += 64 {
		b, err := data.Collate(eval[i:min(i+64, len(eval))], data.Classification, pad)
		if err != nil {
			return 0, err
		}
		ids, mask, labels := tensors(s, b)
		pred := make([]int64, b.Size)
		p := s.Argmax(m.Logits(s, ids, mask, false), -1)
		if err := s.Err(); err != nil {
			return 0, err
		}
		if err := p.CopyTo(pred); err != nil {
			return 0, err
		}
		for j := range pred {
			if pred[j] == b.Labels[j] {
				correct++
			}
		}
		_ = labels
		if err := s.Release(); err != nil {
			return 0, err
		}
	}
	return float64(correct) / float64(len(eval)), nil
}

package hf

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
)

// hostMask is the mask builder this package used before masks moved to
// the device, kept as the benchmark's peer: a B×T×T float32 mask filled by
// a Go loop and copied into a tensor.
func (m *Model) hostMask(b *data.Batch) error {
	return m.do(func() error {
		s := m.scope
		defer s.Release()
		lo := m.maskMin()
		keep := func(i int) bool { return b.AttentionMask == nil || b.AttentionMask[i] != 0 }
		mask := make([]float32, b.Size*b.Seq*b.Seq)
		for r := range b.Size {
			for i := range b.Seq {
				row := mask[(r*b.Seq+i)*b.Seq:][:b.Seq]
				for j := range b.Seq {
					if j > i || !keep(r*b.Seq+j) {
						row[j] = lo
					}
				}
			}
		}
		s.FromSliceOn(mask, m.opt.Device, int64(b.Size), 1, int64(b.Seq), int64(b.Seq))
		return s.Err()
	})
}

// deviceMask builds the mask as the model now does.
func (m *Model) deviceMask(b *data.Batch) error {
	return m.do(func() error {
		s := m.scope
		defer s.Release()
		in := &inputs{b: int64(b.Size), t: int64(b.Seq)}
		m.attnMask(s, b, in)
		return s.Err()
	})
}

// BenchmarkAttnMask times building one batch's causal attention mask, on
// the device from per-token vectors (device) and on the host as before
// (host), for GPT-2 124M's structure at batch 4; B/op is the Go heap the
// mask costs. scripts/bench.sh mask runs it.
func BenchmarkAttnMask(b *testing.B) {
	dir := b.TempDir()
	cfg, _ := json.Marshal(map[string]any{"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12,
		"n_head": 12, "n_positions": 1024})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o644); err != nil {
		b.Fatal(err)
	}
	m, err := Load(dir, Options{Init: config.InitRandom, Seed: 1, Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	for _, seq := range []int{128, 512, 1024} {
		const size = 4
		batch := &data.Batch{Size: size, Seq: seq, AttentionMask: make([]int64, size*seq)}
		for i := range batch.AttentionMask {
			// The last row is half padding.
			if i < (size-1)*seq+seq/2 {
				batch.AttentionMask[i] = 1
			}
		}
		for _, kind := range []string{"device", "host"} {
			f := m.deviceMask
			if kind == "host" {
				f = m.hostMask
			}
			b.Run(fmt.Sprintf("%s/seq=%d", kind, seq), func(b *testing.B) {
				b.ReportAllocs()
				for range b.N {
					if err := f(batch); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

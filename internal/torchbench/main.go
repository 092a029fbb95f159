// Command torchbench measures the torch layer: "leak" (RSS and C-heap growth
// over many op calls and training steps, against the same op calls through
// gotch's own tensor API), "step" (the tiny model's training-step time;
// scripts/bench/step.sh times the PyTorch peer) and "adamw" (one optimizer
// step over flat blocks of -numel parameters: scale by 1/count, clip, AdamW,
// zero-grad, as a node applies a step; scripts/bench/adamw_torch.py times
// torch.optim.AdamW on the same size). It prints JSON on stdout.
package main

/*
#include <malloc.h>
static size_t heap_in_use(void) {
	struct mallinfo2 mi = mallinfo2();
	return mi.uordblks + mi.hblkhd;
}
*/
import "C"

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/ringtune/ringtune/model/tiny"
	"github.com/ringtune/ringtune/model/torch"
)

func main() {
	mode := flag.String("mode", "step", "leak, step or adamw")
	ops := flag.Int("ops", 100000, "leak: op calls")
	steps := flag.Int("steps", 2000, "training steps")
	warmup := flag.Int("warmup", 0, "steps (or op calls) before the baseline; default 10%")
	cfgJSON := flag.String("cfg", "", "step: model config as JSON (see scripts/bench/step.sh)")
	gotchOps := flag.Bool("gotch", false, "leak: run the op calls through gotch's ts API instead")
	numel := flag.Int64("numel", 124_439_808, "adamw: parameters (default GPT-2 124M's)")
	maxNorm := flag.Float64("max-norm", 1, "adamw: gradient clipping norm, 0 off")
	separate := flag.Bool("separate", false, "adamw: time the separate whole-block ops (scale, clip, AdamW, zero) instead of the fused step")
	flag.Parse()
	th := torch.NewThread()
	defer th.Close()
	var out any
	err := th.Do(func() error {
		if err := torch.SetThreads(1); err != nil {
			return err
		}
		if err := torch.Seed(1); err != nil {
			return err
		}
		var err error
		switch *mode {
		case "leak":
			if *gotchOps {
				out, err = leakGotch(*ops, *warmup)
			} else {
				out, err = leak(*ops, *steps, *warmup)
			}
		case "step":
			out, err = step(*cfgJSON, *steps, *warmup)
		case "adamw":
			out, err = adamw(*numel, *steps, *warmup, *maxNorm, *separate)
		default:
			err = fmt.Errorf("unknown -mode %q (want leak, step or adamw)", *mode)
		}
		return err
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "torchbench:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "torchbench:", err)
		os.Exit(1)
	}
}

// rss reads the resident set size in bytes.
func rss() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func heap() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return int64(C.heap_in_use())
}

type mem struct{ RSS, Heap int64 }

func sample() mem { h := heap(); return mem{RSS: rss(), Heap: h} }

func pct(a, b int64) float64 { return 100 * float64(b-a) / float64(a) }

type leakResult struct {
	Ops, Steps                    int
	OpsRSSGrowthPct, OpsHeapPct   float64
	StepRSSGrowthPct, StepHeapPct float64
	RSSGrowthPct, HeapGrowthPct   float64
	RSSMB                         float64
}

// opRound is a mix of op kinds: elementwise, matmul, in-place, scalar, an
// op with a string argument in gotch (gelu), a reduction and a copy-out.
func opRound(s *torch.Scope, a, b torch.Tensor, buf []float32) {
	c := s.Add(a, b)
	d := s.Matmul(c, b)
	s.Fill_(d, 0.5)
	e := s.Gelu(s.MulScalar(d, 2), false)
	f := s.Sum(e)
	if s.Err() == nil {
		_ = s.Softmax(c, -1).CopyTo(buf)
	}
	_ = f
}

func leak(ops, steps, warmup int) (*leakResult, error) {
	s := torch.NewScope()
	defer s.Close()
	a := s.Keep(s.Randn(torch.Float32, torch.CPU, 16, 16))
	b := s.Keep(s.Randn(torch.Float32, torch.CPU, 16, 16))
	defer a.Free()
	defer b.Free()
	buf := make([]float32, 256)
	const perRound = 8 // op calls in opRound
	rounds := ops / perRound
	w := warmup
	if w == 0 {
		w = rounds / 10
	}
	var base mem
	for i := range rounds + w {
		if i == w {
			base = sample()
		}
		opRound(s, a, b, buf)
		if err := s.Release(); err != nil {
			return nil, err
		}
	}
	afterOps := sample()

	cfg := tiny.Small()
	cfg.Dropout = 0.1
	m, opt, err := newTiny(cfg)
	if err != nil {
		return nil, err
	}
	defer m.Free()
	defer opt.Free()
	rng := rand.New(rand.NewPCG(1, 1))
	ids := make([]int64, 8*32)
	mask := make([]int64, 8*32)
	labels := make([]int64, 8)
	sw := steps / 10
	var stepBase mem
	for i := range steps + sw {
		if i == sw {
			stepBase = sample()
		}
		for j := range ids {
			ids[j] = int64(rng.IntN(cfg.Vocab))
			mask[j] = 1
		}
		for j := range labels {
			labels[j] = int64(rng.IntN(2))
		}
		if err := trainStep(s, m, opt, ids, mask, labels, 8, 32); err != nil {
			return nil, err
		}
	}
	end := sample()
	return &leakResult{
		Ops: rounds * perRound, Steps: steps,
		OpsRSSGrowthPct: pct(base.RSS, afterOps.RSS), OpsHeapPct: pct(base.Heap, afterOps.Heap),
		StepRSSGrowthPct: pct(stepBase.RSS, end.RSS), StepHeapPct: pct(stepBase.Heap, end.Heap),
		// Growth within the two measured phases, excluding the model's own
		// allocation between them.
		RSSGrowthPct:  100 * float64((afterOps.RSS-base.RSS)+(end.RSS-stepBase.RSS)) / float64(base.RSS),
		HeapGrowthPct: 100 * float64((afterOps.Heap-base.Heap)+(end.Heap-stepBase.Heap)) / float64(base.Heap),
		RSSMB:         float64(end.RSS) / (1 << 20),
	}, nil
}

// leakGotch runs the same op mix through gotch's ts API (the peer), freeing
// every result as its documentation says.
func leakGotch(ops, warmup int) (*leakResult, error) {
	a, err := ts.Randn([]int64{16, 16}, gotch.Float, gotch.CPU)
	if err != nil {
		return nil, err
	}
	b, err := ts.Randn([]int64{16, 16}, gotch.Float, gotch.CPU)
	if err != nil {
		return nil, err
	}
	const perRound = 8
	rounds := ops / perRound
	w := warmup
	if w == 0 {
		w = rounds / 10
	}
	var base mem
	for i := range rounds + w {
		if i == w {
			base = sample()
		}
		c, err := a.Add(b, false)
		if err != nil {
			return nil, err
		}
		d, err := c.Matmul(b, false)
		if err != nil {
			return nil, err
		}
		half, two := ts.FloatScalar(0.5), ts.FloatScalar(2)
		if err := d.Fill_(half); err != nil {
			return nil, err
		}
		e0, err := d.MulScalar(two, false)
		if err != nil {
			return nil, err
		}
		e, err := e0.Gelu("none", false)
		if err != nil {
			return nil, err
		}
		f, err := e.Sum(gotch.Float, false)
		if err != nil {
			return nil, err
		}
		g, err := c.Softmax(-1, gotch.Float, false)
		if err != nil {
			return nil, err
		}
		_ = g.Float64Values()
		for _, sc := range []*ts.Scalar{half, two} {
			if err := sc.Drop(); err != nil {
				return nil, err
			}
		}
		for _, t := range []*ts.Tensor{c, d, e0, e, f, g} {
			if err := t.Drop(); err != nil {
				return nil, err
			}
		}
	}
	end := sample()
	return &leakResult{Ops: rounds * perRound, OpsRSSGrowthPct: pct(base.RSS, end.RSS), OpsHeapPct: pct(base.Heap, end.Heap),
		RSSGrowthPct: pct(base.RSS, end.RSS), HeapGrowthPct: pct(base.Heap, end.Heap), RSSMB: float64(end.RSS) / (1 << 20)}, nil
}

// newTiny builds the tiny model and its AdamW; the caller frees both.
func newTiny(cfg tiny.Config) (*tiny.Model, *torch.AdamW, error) {
	m, err := tiny.New(cfg, torch.CPU)
	if err != nil {
		return nil, nil, err
	}
	opt, err := torch.NewAdamW(m.Params, torch.DefaultAdamW())
	if err != nil {
		m.Free()
		return nil, nil, err
	}
	return m, opt, nil
}

// trainStep is the measured training step, the same as tiny_torch.py's:
// forward, backward of the summed loss, divide by the batch size, clip to
// norm 1, AdamW.
func trainStep(s *torch.Scope, m *tiny.Model, opt *torch.AdamW, ids, mask, labels []int64, b, t int64) error {
	if err := m.Params.ZeroGrad(); err != nil {
		return err
	}
	loss := m.Loss(s, s.FromInt64(ids, b, t), s.FromInt64(mask, b, t), s.FromInt64(labels, b), true)
	s.Backward(loss)
	_ = s.Item(loss)
	if err := s.Release(); err != nil {
		return err
	}
	g := m.Params.GradSlice()
	inv := 1 / float32(b)
	for j := range g {
		g[j] *= inv
	}
	if _, err := m.Params.ClipGradNorm(1); err != nil {
		return err
	}
	return opt.Apply(1e-4)
}

type stepCfg struct {
	Vocab   int     `json:"vocab"`
	Hidden  int     `json:"hidden"`
	Layers  int     `json:"layers"`
	Heads   int     `json:"heads"`
	FFN     int     `json:"ffn"`
	MaxLen  int     `json:"max_len"`
	Labels  int     `json:"labels"`
	Dropout float64 `json:"dropout"`
	Batch   int     `json:"batch"`
	Seq     int     `json:"seq"`
}

type stepResult struct {
	MedianMS, MeanMS float64
	RSSGrowthPct     float64
}

func step(cfgJSON string, steps, warmup int) (*stepResult, error) {
	var c stepCfg
	if err := json.Unmarshal([]byte(cfgJSON), &c); err != nil {
		return nil, fmt.Errorf("-cfg: %w", err)
	}
	cfg := tiny.Config{Vocab: c.Vocab, Hidden: c.Hidden, Layers: c.Layers, Heads: c.Heads, FFN: c.FFN, MaxLen: c.MaxLen, Labels: c.Labels, Dropout: c.Dropout}
	m, opt, err := newTiny(cfg)
	if err != nil {
		return nil, err
	}
	defer m.Free()
	defer opt.Free()
	rng := rand.New(rand.NewPCG(2, 2))
	type batch struct{ ids, mask, labels []int64 }
	pool := make([]batch, 8)
	for i := range pool {
		b := batch{make([]int64, c.Batch*c.Seq), make([]int64, c.Batch*c.Seq), make([]int64, c.Batch)}
		for j := range b.ids {
			b.ids[j] = int64(rng.IntN(c.Vocab))
			b.mask[j] = 1
		}
		for j := range b.labels {
			b.labels[j] = int64(rng.IntN(c.Labels))
		}
		pool[i] = b
	}
	s := torch.NewScope()
	defer s.Close()
	bs, sq := int64(c.Batch), int64(c.Seq)
	one := func(i int) error {
		b := pool[i%len(pool)]
		return trainStep(s, m, opt, b.ids, b.mask, b.labels, bs, sq)
	}
	for i := range warmup {
		if err := one(i); err != nil {
			return nil, err
		}
	}
	r0 := rss()
	times := make([]float64, steps)
	for i := range steps {
		t := time.Now()
		if err := one(i); err != nil {
			return nil, err
		}
		times[i] = float64(time.Since(t).Microseconds()) / 1000
	}
	r1 := rss()
	var sum float64
	for _, v := range times {
		sum += v
	}
	sort.Float64s(times)
	return &stepResult{MedianMS: times[len(times)/2], MeanMS: sum / float64(len(times)), RSSGrowthPct: pct(r0, r1)}, nil
}

type adamwResult struct {
	Numel            int64
	Steps            int
	Fused            bool
	MaxNorm          float64
	MedianMS, MeanMS float64
	MinMS, MaxMS     float64
}

// adamw times the optimizer step a node runs after the all-reduce, over
// blocks of numel parameters (90% with weight decay, as in GPT-2). The
// gradient is refilled from a fixed random buffer before each step,
// outside the timed region.
func adamw(numel int64, steps, warmup int, maxNorm float64, separate bool) (*adamwResult, error) {
	dec := numel * 9 / 10
	p, err := torch.NewParams([]torch.ParamSpec{{Name: "w", Shape: []int64{dec}, Decay: true},
		{Name: "b", Shape: []int64{numel - dec}}}, torch.CPU)
	if err != nil {
		return nil, err
	}
	defer p.Free()
	opt, err := torch.NewAdamW(p, torch.DefaultAdamW())
	if err != nil {
		return nil, err
	}
	defer opt.Free()
	rng := rand.New(rand.NewPCG(1, 2))
	w := p.ParamSlice()
	grads := make([]float32, numel)
	for i := range grads {
		w[i] = float32(rng.NormFloat64() * 0.02)
		grads[i] = float32(rng.NormFloat64() * 0.5) // a sum over 8 samples: clipping is active
	}
	const count = 8
	var ms []float64
	for i := range warmup + steps {
		if err := p.SetGradFrom(grads); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if separate {
			err = separateStep(p, opt, 1.0/count, maxNorm)
		} else {
			_, err = opt.ApplyScaled(1e-4, 1.0/count, maxNorm)
		}
		if err != nil {
			return nil, err
		}
		if i >= warmup {
			ms = append(ms, float64(time.Since(t0).Microseconds())/1000)
		}
	}
	sort.Float64s(ms)
	var sum float64
	for _, x := range ms {
		sum += x
	}
	return &adamwResult{Numel: numel, Steps: steps, Fused: !separate, MaxNorm: maxNorm,
		MedianMS: ms[len(ms)/2], MeanMS: sum / float64(len(ms)), MinMS: ms[0], MaxMS: ms[len(ms)-1]}, nil
}

// separateStep is the step as whole-block libtorch ops, as a node ran it
// before the fused kernel handled clipping.
func separateStep(p *torch.Params, opt *torch.AdamW, scale, maxNorm float64) error {
	s := torch.NewScope()
	defer s.Close()
	g := p.Grad()
	s.Copy_(g, s.MulScalar(g, scale))
	if err := s.Err(); err != nil {
		return err
	}
	if _, err := p.ClipGradNorm(maxNorm); err != nil {
		return err
	}
	if err := opt.Apply(1e-4); err != nil {
		return err
	}
	return p.ZeroGrad()
}

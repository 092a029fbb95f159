// Command hfbench times training steps (forward, backward, AdamW) of a model
// directory made by model/hf/testdata/hf_ref.py, for scripts/bench/model.sh.
// It prints "ms_per_step=X rss_growth_pct=Y".
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
)

func main() {
	dir := flag.String("dir", "", "model directory with batch.json")
	steps := flag.Int("steps", 2000, "timed steps")
	flag.Parse()
	if err := run(*dir, *steps); err != nil {
		fmt.Fprintln(os.Stderr, "hfbench:", err)
		os.Exit(1)
	}
}

func rssKB() int64 {
	raw, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return v
		}
	}
	return 0
}

func run(dir string, steps int) error {
	raw, err := os.ReadFile(filepath.Join(dir, "batch.json"))
	if err != nil {
		return err
	}
	var rb struct {
		IDs, Mask, Types [][]int64
		Labels           json.RawMessage
		Targets          []float32
	}
	if err := json.Unmarshal(raw, &rb); err != nil {
		return err
	}
	m, err := hf.Load(dir, hf.Options{Threads: 1})
	if err != nil {
		return err
	}
	defer m.Close()
	b := &data.Batch{Size: len(rb.IDs), Seq: len(rb.IDs[0]), Targets: rb.Targets}
	for i := range rb.IDs {
		b.InputIDs = append(b.InputIDs, rb.IDs[i]...)
		b.AttentionMask = append(b.AttentionMask, rb.Mask[i]...)
		b.TokenTypeIDs = append(b.TokenTypeIDs, rb.Types[i]...)
	}
	switch m.Task() {
	case data.Classification:
		json.Unmarshal(rb.Labels, &b.Labels)
	case data.CausalLM:
		var l [][]int64
		json.Unmarshal(rb.Labels, &l)
		for _, r := range l {
			b.Labels = append(b.Labels, r...)
		}
	}
	if err := m.SetOptimizer(hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-4, Beta1: 0.9, Beta2: 0.999,
		Eps: 1e-8, WeightDecay: 0.01, Schedule: config.ScheduleConstant, TotalSteps: steps, MaxGradNorm: 1}); err != nil {
		return err
	}
	step := func(s int) error {
		if err := m.ZeroGrad(); err != nil {
			return err
		}
		_, n, err := m.ForwardBackward(b)
		if err != nil {
			return err
		}
		if err := m.ScaleGrads(1 / float64(n)); err != nil {
			return err
		}
		_, err = m.Update(s)
		return err
	}
	warm := max(steps/10, 20)
	for s := range warm {
		if err := step(s); err != nil {
			return err
		}
	}
	rss0 := rssKB()
	t0 := time.Now()
	for s := range steps {
		if err := step(warm + s); err != nil {
			return err
		}
	}
	el := time.Since(t0)
	rss1 := rssKB()
	fmt.Printf("ms_per_step=%.4f rss_growth_pct=%.2f\n", float64(el.Microseconds())/1000/float64(steps),
		100*float64(rss1-rss0)/float64(rss0))
	return nil
}

// Command gpucheck runs one model directory made by
// model/hf/testdata/hf_ref.py through model/hf on a chosen device and
// precision, for scripts/gpu/check.sh, which compares the results with the
// host's PyTorch (scripts/gpu/compare.py) on the same device:
//
//	gpucheck -dir D -task T -device cuda:0 -precision bf16 -out OUT [-export EXP]
//
// OUT gets model.safetensors with "loss" (the summed loss of the batch in
// training mode, dropout 0), "count", every parameter's gradient
// ("grad/NAME") and the evaluation-mode logits ("logits": per row, the class
// logits, or for a causal LM the next-token logits after the last real
// token). -export saves the model as a Hugging Face directory, for
// transformers' from_pretrained.
//
// With -bench-steps N it instead trains a causal LM from D's config.json
// (random weights) on random tokens, -batch rows of -seq tokens, with AdamW,
// and prints "tokens_per_s=X" over N steps after 3 warm-up steps: the
// ringtune side of scripts/gpu/bench.sh.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/safetensors"
	"github.com/ringtune/ringtune/model/torch"
)

func main() {
	dir := flag.String("dir", "", "model directory with batch.json (hf_ref.py make)")
	task := flag.String("task", "", "classification, regression or causal_lm")
	device := flag.String("device", "cpu", "cpu or cuda:N")
	precision := flag.String("precision", config.PrecisionFP32, "fp32 or bf16")
	out := flag.String("out", "", "directory for the results (model.safetensors)")
	export := flag.String("export", "", "also save the model here as a Hugging Face directory")
	benchSteps := flag.Int("bench-steps", 0, "time this many training steps instead (causal LM, random init)")
	batch := flag.Int("batch", 8, "bench: rows per step")
	seq := flag.Int("seq", 512, "bench: tokens per row")
	flag.Parse()
	var err error
	if *benchSteps > 0 {
		err = bench(*dir, *device, *precision, *benchSteps, *batch, *seq)
	} else {
		err = run(*dir, *task, *device, *precision, *out, *export)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpucheck:", err)
		os.Exit(1)
	}
}

func run(dir, task, device, precision, out, export string) error {
	if dir == "" || out == "" {
		return fmt.Errorf("-dir and -out are required")
	}
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return err
	}
	if err := dev.Check(); err != nil {
		return err
	}
	b, err := readBatch(filepath.Join(dir, "batch.json"), data.Task(task))
	if err != nil {
		return err
	}
	zero := 0.0
	m, err := hf.Load(dir, hf.Options{Task: data.Task(task), Dropout: &zero, Seed: 1, Device: dev, Precision: precision})
	if err != nil {
		return err
	}
	defer m.Close()
	sum, count, err := m.ForwardBackward(b)
	if err != nil {
		return err
	}
	res := []safetensors.Tensor{f32("loss", []float32{float32(sum)}, 1), f32("count", []float32{float32(count)}, 1)}
	grads := m.GradSlice()
	p := m.Params()
	for i, sp := range p.Specs {
		n := int64(1)
		for _, d := range sp.Shape {
			n *= d
		}
		res = append(res, f32("grad/"+sp.Name, grads[p.Offsets[i]:][:n], sp.Shape...))
	}
	pred, err := m.Predict(b)
	if err != nil {
		return err
	}
	var logits []float32
	for _, r := range pred.Logits {
		logits = append(logits, r...)
	}
	res = append(res, f32("logits", logits, int64(len(pred.Logits)), int64(len(logits)/max(1, len(pred.Logits)))))
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if _, err := safetensors.WriteDir(out, res, map[string]string{"device": device, "precision": precision}, 0); err != nil {
		return err
	}
	if export != "" {
		if err := m.Save(export); err != nil {
			return err
		}
	}
	fmt.Printf("gpucheck: %s %s on %s: loss %.6g over %d, %d parameters\n", m.Class(), precision, device, sum, count, m.NumParams())
	return nil
}

func f32(name string, v []float32, shape ...int64) safetensors.Tensor {
	raw := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
	}
	return safetensors.Tensor{Name: name, DType: safetensors.F32, Shape: shape, Data: raw}
}

// readBatch reads hf_ref.py's batch.json (rows of ids, mask, token types,
// and labels or targets).
func readBatch(path string, task data.Task) (*data.Batch, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rb struct {
		IDs     [][]int64       `json:"ids"`
		Mask    [][]int64       `json:"mask"`
		Types   [][]int64       `json:"types"`
		Labels  json.RawMessage `json:"labels"`
		Targets []float32       `json:"targets"`
	}
	if err := json.Unmarshal(raw, &rb); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(rb.IDs) == 0 {
		return nil, fmt.Errorf("%s: no rows", path)
	}
	b := &data.Batch{Size: len(rb.IDs), Seq: len(rb.IDs[0]), Targets: rb.Targets}
	for i := range rb.IDs {
		b.InputIDs = append(b.InputIDs, rb.IDs[i]...)
		b.AttentionMask = append(b.AttentionMask, rb.Mask[i]...)
		b.TokenTypeIDs = append(b.TokenTypeIDs, rb.Types[i]...)
	}
	switch task {
	case data.Classification:
		if err := json.Unmarshal(rb.Labels, &b.Labels); err != nil {
			return nil, fmt.Errorf("%s: labels: %w", path, err)
		}
	case data.CausalLM:
		var l [][]int64
		if err := json.Unmarshal(rb.Labels, &l); err != nil {
			return nil, fmt.Errorf("%s: labels: %w", path, err)
		}
		for _, r := range l {
			b.Labels = append(b.Labels, r...)
		}
	}
	return b, nil
}

func bench(dir, device, precision string, steps, rows, seq int) error {
	dev, err := torch.ParseDevice(device)
	if err != nil {
		return err
	}
	if err := dev.Check(); err != nil {
		return err
	}
	zero := 0.0
	m, err := hf.Load(dir, hf.Options{Task: data.CausalLM, Init: config.InitRandom, Dropout: &zero, Seed: 1,
		Device: dev, Precision: precision})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.SetOptimizer(hf.OptimConfig{Name: config.OptimizerAdamW, LR: 1e-4, Schedule: config.ScheduleConstant,
		TotalSteps: steps + 3, WeightDecay: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, MaxGradNorm: 1}); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(1, 2))
	b := &data.Batch{Size: rows, Seq: seq}
	for range rows * seq {
		id := int64(r.IntN(m.Config().Vocab))
		b.InputIDs = append(b.InputIDs, id)
		b.Labels = append(b.Labels, id)
		b.AttentionMask = append(b.AttentionMask, 1)
		b.TokenTypeIDs = append(b.TokenTypeIDs, 0)
	}
	var t0 time.Time
	for i := range steps + 3 {
		if i == 3 {
			t0 = time.Now()
		}
		if err := m.ZeroGrad(); err != nil {
			return err
		}
		if _, _, err := m.ForwardBackward(b); err != nil {
			return err
		}
		// Update reads the gradient norm back to the host, which waits
		// for the GPU: each step is timed to its end.
		if _, err := m.Update(i); err != nil {
			return err
		}
	}
	el := time.Since(t0).Seconds()
	fmt.Printf("params=%d tokens_per_s=%.1f\n", m.NumParams(), float64(steps*rows*seq)/el)
	return nil
}

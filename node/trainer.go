// Package node is the libtorch side of a ringtune worker: Trainer adapts a
// Hugging Face model of package model/hf to the node agent's Trainer
// interface (node/agent), which runs the cluster protocol.
package node

import (
	"encoding/hex"
	"fmt"
	"io"

	"github.com/ringtune/ringtune/bucket"
	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/control"
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/hf"
	"github.com/ringtune/ringtune/model/torch"
	"github.com/ringtune/ringtune/node/agent"
)

// Trainer implements agent.Trainer on a model/hf Model. On CPU the gradient
// block is handed to the all-reduce as a Go slice aliasing libtorch's
// memory (no copy); on CUDA it is copied to a host buffer and back.
type Trainer struct {
	job   agent.Job
	m     *hf.Model
	host  []float32 // CUDA only: host copy of the gradients (the watch's block)
	optim string
	// segs and seg describe the gradient for the agent's buckets
	// (agent.Overlapper): segments in backward order, and each parameter's
	// segment.
	segs []bucket.Segment
	seg  []int
	// zero1 (train.shard_optimizer): the model holds moments of own and
	// buddy only; params is the CUDA host copy of the parameters for the
	// all-gather.
	zero1       bool
	own, buddy  torch.Range
	params      []float32
	maxGradNorm float64
	// splitRows is the vocabulary when the tied embedding is split
	// (allreduce.sparse_embedding; agent.RowSplitter), else 0; rowHost is
	// the CUDA host copy of a step's row gradients.
	splitRows int
	rowHost   []float32
}

// NewTrainer returns an empty trainer; Setup builds it. It is an
// agent.Factory.
func NewTrainer() (agent.Trainer, error) { return &Trainer{}, nil }

var _ agent.ShardTrainer = (*Trainer)(nil)

// Setup implements agent.Trainer.
func (t *Trainer) Setup(job agent.Job) (int, error) {
	dev, err := torch.ParseDevice(job.Device)
	if err != nil {
		return 0, fmt.Errorf("--device: %w", err)
	}
	if err := dev.Check(); err != nil {
		return 0, err
	}
	threads := job.Train.Threads
	if threads <= 0 {
		threads = 1
	}
	m, err := hf.Load(job.ModelDir, hf.Options{
		Task: data.Task(job.Task), NumLabels: job.NumLabels, Init: job.Init, Seed: job.Seed,
		Threads: threads, Device: dev, Precision: job.Train.Precision,
	})
	if err != nil {
		return 0, err
	}
	tr := job.Train
	oc := hf.OptimConfig{
		Name: tr.Optimizer, LR: tr.LR, Schedule: tr.Schedule, WarmupSteps: tr.WarmupSteps,
		TotalSteps: job.TotalSteps, WeightDecay: tr.WeightDecay, Eps: tr.Eps, Momentum: tr.Momentum,
		MaxGradNorm: tr.MaxGradNorm, Beta1: 0.9, Beta2: 0.999,
	}
	if len(tr.Betas) == 2 {
		oc.Beta1, oc.Beta2 = tr.Betas[0], tr.Betas[1]
	}
	if oc.Eps == 0 {
		oc.Eps = 1e-8
	}
	if oc.Name == "" {
		oc.Name = config.OptimizerAdamW
	}
	t.job, t.m = job, m
	t.zero1 = tr.ShardOptimizer == config.ShardZero1
	t.maxGradNorm = oc.MaxGradNorm
	if t.zero1 {
		t.own, t.buddy = shardSlices(m.NumParams(), job.Rank, job.WorldSize)
		err = m.SetShardedOptimizer(oc, []torch.Range{t.own, t.buddy})
	} else {
		err = m.SetOptimizer(oc)
	}
	if err != nil {
		m.Close()
		return 0, err
	}
	if err := m.ZeroGrad(); err != nil {
		m.Close()
		return 0, err
	}
	// The hooks cost nothing while disarmed, so they are registered
	// whether or not the job overlaps; on CUDA their host block is also
	// where Gradients copies to.
	host, err := m.WatchGrads()
	if err != nil {
		m.Close()
		return 0, err
	}
	t.job, t.m, t.optim = job, m, oc.Name
	// The split changes the gradient's segments (the tied embedding is
	// finished first), so it is set before they are taken. Under zero1
	// the rows are folded into the slices before their norm (SliceSumSq).
	// Below job.SplitMinBytes the split's two extra ring operations a
	// step cost more than the bytes it saves (agent.Job.SplitMinBytes).
	split := tr.SparseEmbedding && 4*m.SplitEmbeddingNumel() >= int64(job.SplitMinBytes)
	if t.splitRows, err = m.SetSplitEmbedding(split); err != nil {
		m.Close()
		return 0, err
	}
	t.segs, t.seg = m.GradSegments()
	if dev.IsCUDA() {
		t.host = host
		if t.zero1 {
			t.params = make([]float32, m.NumParams())
		}
	}
	return int(m.NumParams()), nil
}

var _ agent.Overlapper = (*Trainer)(nil)

// GradSegments implements agent.Overlapper.
func (t *Trainer) GradSegments() []bucket.Segment { return t.segs }

// GradBuffer implements agent.Overlapper: the gradient block itself on CPU,
// the host block on CUDA.
func (t *Trainer) GradBuffer() []float32 {
	if t.host != nil {
		return t.host
	}
	return t.m.GradSlice()
}

// AccumulateReady implements agent.Overlapper.
func (t *Trainer) AccumulateReady(b *data.Batch, ready func(seg int)) (float64, int, error) {
	return t.m.ForwardBackwardReady(b, func(i int) { ready(t.seg[i]) })
}

// Accumulate implements agent.Trainer.
func (t *Trainer) Accumulate(b *data.Batch) (float64, int, error) {
	return t.m.ForwardBackward(b)
}

// Gradients implements agent.Trainer.
func (t *Trainer) Gradients() ([]float32, error) {
	if t.host == nil {
		return t.m.GradSlice(), nil
	}
	if err := t.m.CopyGradsTo(t.host); err != nil {
		return nil, err
	}
	return t.host, nil
}

// Apply implements agent.Trainer.
func (t *Trainer) Apply(step, globalCount int) error {
	if t.zero1 {
		return fmt.Errorf("apply step %d: train.shard_optimizer is zero1: the step is applied by the sharded path (agent.ShardedApply)", step)
	}
	if globalCount <= 0 {
		return fmt.Errorf("apply step %d: global count %d is not positive", step, globalCount)
	}
	if t.host != nil {
		if err := t.m.SetGrads(t.host); err != nil {
			return fmt.Errorf("apply step %d: %w", step, err)
		}
		if t.rowHost != nil {
			if err := t.m.SetRowGrads(t.rowHost); err != nil {
				return fmt.Errorf("apply step %d: %w", step, err)
			}
			t.rowHost = nil
		}
	}
	// The reduced rows of the split embedding join its reduced head part.
	if err := t.m.FoldRows(); err != nil {
		return fmt.Errorf("apply step %d: %w", step, err)
	}
	// Scale, update and zero in one call: with AdamW on CPU that is a
	// single fused pass over the blocks instead of ~20 (see hf.Model.Step).
	if _, err := t.m.Step(step, 1/float64(globalCount)); err != nil {
		return fmt.Errorf("apply step %d: %w", step, err)
	}
	return nil
}

// Discard implements agent.Trainer.
func (t *Trainer) Discard() error {
	t.rowHost = nil
	if err := t.m.DropRows(); err != nil {
		return err
	}
	return t.m.ZeroGrad()
}

var _ agent.RowSplitter = (*Trainer)(nil)

// SplitRows implements agent.RowSplitter.
func (t *Trainer) SplitRows() int { return t.splitRows }

// MarkRows implements agent.RowSplitter.
func (t *Trainer) MarkRows(b *data.Batch, used []float32) { t.m.MarkRows(b, used) }

// BeginRows implements agent.RowSplitter.
func (t *Trainer) BeginRows(rows []int64) error {
	t.rowHost = nil
	return t.m.BeginRows(rows)
}

// RowGradients implements agent.RowSplitter: the rows' gradient block
// itself on CPU, a host copy on CUDA (written back by Apply).
func (t *Trainer) RowGradients() ([]float32, error) {
	if g := t.m.RowGrads(); g != nil {
		return g, nil
	}
	n := t.m.RowGradLen()
	if n == 0 {
		return nil, nil
	}
	t.rowHost = make([]float32, n)
	if err := t.m.CopyRowGradsTo(t.rowHost); err != nil {
		t.rowHost = nil
		return nil, err
	}
	return t.rowHost, nil
}

// Digest implements agent.Trainer.
func (t *Trainer) Digest() ([]byte, error) {
	d, err := t.m.Digest()
	if err != nil {
		return nil, err
	}
	return hex.DecodeString(d)
}

// WriteState implements agent.Trainer: the header, the parameters, then the
// optimizer's buffers one after another (AdamW: first then second moment;
// SGD: momentum). On CPU the bytes come straight from libtorch's blocks
// (hf.Model.HostStateBlocks), so streaming a 1.5 GB state allocates
// nothing of its size; on CUDA each block is copied to the host first.
func (t *Trainer) WriteState(w io.Writer) error {
	if t.zero1 {
		return t.writeShardState(w)
	}
	blocks, step, ok, err := t.m.HostStateBlocks()
	if err != nil {
		return err
	}
	if !ok {
		if blocks, step, err = t.hostCopies(); err != nil {
			return err
		}
	}
	n := int(t.m.NumParams())
	if err := control.WriteStateHeader(w, n, n*(len(blocks)-1), int(*step)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	for _, b := range blocks {
		if err := control.WriteFloat32s(w, b); err != nil {
			return fmt.Errorf("write state: %w", err)
		}
	}
	return nil
}

// StateView implements agent.StateViewer. On CPU the parameters, the
// optimizer's buffers and, under zero1, the held slices' moments are
// libtorch's own blocks, which only Apply, ReadState and the zero1
// layout calls write; on CUDA ok is false (the state needs host copies,
// made on the model's thread while WriteState runs on the agent's loop).
func (t *Trainer) StateView() (agent.StateView, bool, error) {
	if !t.zero1 {
		blocks, step, ok, err := t.m.HostStateBlocks()
		if err != nil || !ok {
			return agent.StateView{}, false, err
		}
		return agent.StateView{Blocks: blocks, Step: *step}, true, nil
	}
	if t.params != nil || t.host != nil {
		return agent.StateView{}, false, nil
	}
	v := agent.StateView{Blocks: [][]float32{t.m.Params().ParamSlice()}}
	for i := range 2 {
		sl := []torch.Range{t.own, t.buddy}[i]
		for b := range 2 {
			src, err := t.m.ShardMomentsHost(i, b)
			if err != nil {
				return agent.StateView{}, false, err
			}
			if len(src) != int(sl.Len()) {
				return agent.StateView{}, false, fmt.Errorf("state view: held slice %d block %d has %d moments, the slice %d", i, b, len(src), sl.Len())
			}
			v.Held[i][b] = src
		}
	}
	return v, true, nil
}

// hostCopies is HostStateBlocks for CUDA: host copies of the blocks.
func (t *Trainer) hostCopies() ([][]float32, *int64, error) {
	p := make([]float32, t.m.NumParams())
	if err := t.m.CopyParamsTo(p); err != nil {
		return nil, nil, err
	}
	st, err := t.m.OptimizerState()
	if err != nil {
		return nil, nil, err
	}
	return append([][]float32{p}, st.Buffers...), &st.Step, nil
}

// ReadState implements agent.Trainer: it reads the state straight into
// libtorch's blocks on CPU. The header is checked against the model before
// any block is touched; a stream that breaks later leaves a mix of states,
// which the agent discards (it then holds no committed state).
func (t *Trainer) ReadState(r io.Reader) error {
	np, no, steps, err := control.ReadStateHeader(r)
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	n := int(t.m.NumParams())
	if t.zero1 {
		return t.readShardState(r, np, no, steps)
	}
	blocks, step, ok, err := t.m.HostStateBlocks()
	if err != nil {
		return err
	}
	nbuf := len(blocks) - 1
	if !ok {
		st, err := t.m.OptimizerState()
		if err != nil {
			return err
		}
		nbuf = len(st.Buffers)
	}
	if np != n || no != n*nbuf {
		return fmt.Errorf("read state: %d parameters and %d optimizer values, the model has %d parameters and %s needs %d", np, no, n, t.optim, n*nbuf)
	}
	if ok {
		for _, b := range blocks {
			if err := control.ReadFloat32s(r, b); err != nil {
				return fmt.Errorf("read state: %w", err)
			}
		}
		*step = int64(steps)
		return nil
	}
	// CUDA: through host buffers.
	p := make([]float32, n)
	if err := control.ReadFloat32s(r, p); err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	st := &hf.OptimState{Name: t.optim, Step: int64(steps)}
	for i := 0; i < nbuf; i++ {
		b := make([]float32, n)
		if err := control.ReadFloat32s(r, b); err != nil {
			return fmt.Errorf("read state: %w", err)
		}
		st.Buffers = append(st.Buffers, b)
	}
	if err := t.m.SetParams(p); err != nil {
		return err
	}
	return t.m.SetOptimizerState(st)
}

// Evaluate implements agent.Trainer.
func (t *Trainer) Evaluate(b *data.Batch) (control.EvalSums, error) {
	e := t.m.NewEval()
	if err := t.m.EvalBatch(e, b); err != nil {
		return control.EvalSums{}, err
	}
	s := control.EvalSums{LossSum: e.LossSum, Count: float64(e.Count)}
	switch e.Task {
	case data.Classification, data.TokenClassification:
		s.Confusion = make([]float64, len(e.Confusion))
		for i, v := range e.Confusion {
			s.Confusion[i] = float64(v)
			if i/e.NumLabels == i%e.NumLabels {
				s.Correct += float64(v)
			}
		}
	case data.Regression:
		s.SqErr = e.LossSum
	}
	return s, nil
}

// LoadReport implements agent.LoadReporter.
func (t *Trainer) LoadReport() string { return t.m.LoadReport() }

// Export implements agent.Trainer.
func (t *Trainer) Export(dir string) error { return t.m.Save(dir) }

// Close implements agent.Trainer.
func (t *Trainer) Close() error {
	if t.m != nil {
		t.m.Close()
		t.m = nil
	}
	return nil
}

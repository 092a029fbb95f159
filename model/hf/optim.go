package hf

import (
	"fmt"
	"math"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/model/torch"
)

// OptimConfig chooses the optimizer, its hyper-parameters and the learning
// rate schedule.
type OptimConfig struct {
	// Name is config.OptimizerAdamW or config.OptimizerSGD.
	Name string
	// LR is the peak learning rate.
	LR float64
	// Schedule is config.ScheduleConstant, ScheduleLinear or ScheduleCosine.
	Schedule    string
	WarmupSteps int
	// TotalSteps is the number of optimizer steps of the run (linear and
	// cosine decay reach 0 there).
	TotalSteps int
	// WeightDecay applies to matrices and embeddings only (the layout's
	// decay prefix): decoupled for AdamW, L2 for SGD.
	WeightDecay  float64
	Beta1, Beta2 float64
	Eps          float64
	Momentum     float64
	Nesterov     bool
	// MaxGradNorm clips the global gradient norm before the update; 0 off.
	MaxGradNorm float64
}

// OptimFromConfig maps a training config onto OptimConfig for a run of
// totalSteps optimizer steps (warmup_ratio rounds up, as transformers does).
func OptimFromConfig(t config.TrainConfig, totalSteps int) OptimConfig {
	o := OptimConfig{Name: t.Optimizer, LR: t.LR, Schedule: t.Schedule, WarmupSteps: t.WarmupSteps,
		TotalSteps: totalSteps, WeightDecay: t.WeightDecay, Eps: t.Eps, Momentum: t.Momentum,
		MaxGradNorm: t.MaxGradNorm, Beta1: 0.9, Beta2: 0.999}
	if len(t.Betas) == 2 {
		o.Beta1, o.Beta2 = t.Betas[0], t.Betas[1]
	}
	if o.Eps == 0 {
		o.Eps = 1e-8
	}
	if t.WarmupRatio > 0 {
		o.WarmupSteps = int(math.Ceil(float64(totalSteps) * t.WarmupRatio))
	}
	return o
}

// LRFactor is the multiplier of the peak learning rate for the update of
// step (0-based: the step-th optimizer.step() of the run), with the
// semantics of transformers' get_constant_schedule_with_warmup,
// get_linear_schedule_with_warmup and get_cosine_schedule_with_warmup
// (half a cosine wave). Like there, step 0 of a warm-up has factor 0.
func LRFactor(schedule string, step, warmup, total int) (float64, error) {
	if step < warmup {
		return float64(step) / float64(max(1, warmup)), nil
	}
	switch schedule {
	case config.ScheduleConstant, "":
		return 1, nil
	case config.ScheduleLinear:
		return max(0, float64(total-step)/float64(max(1, total-warmup))), nil
	case config.ScheduleCosine:
		progress := float64(step-warmup) / float64(max(1, total-warmup))
		return max(0, 0.5*(1+math.Cos(math.Pi*2*0.5*progress))), nil
	}
	return 0, fmt.Errorf("learning-rate schedule %q: want constant, linear or cosine", schedule)
}

// optimizer is AdamW or SGD over the flat blocks.
type optimizer interface {
	Apply(lr float64) error
	Free()
}

// SetOptimizer creates the optimizer state (zeroed), replacing any earlier
// one.
func (m *Model) SetOptimizer(o OptimConfig) error {
	if _, err := LRFactor(o.Schedule, 0, o.WarmupSteps, o.TotalSteps); err != nil {
		return err
	}
	return m.do(func() error {
		if m.optim != nil {
			m.optim.Free()
			m.optim = nil
		}
		if m.shard != nil {
			m.shard.Free()
			m.shard = nil
		}
		switch o.Name {
		case config.OptimizerAdamW, "":
			a, err := torch.NewAdamW(m.params, torch.AdamWConfig{Beta1: o.Beta1, Beta2: o.Beta2, Eps: o.Eps, WeightDecay: o.WeightDecay})
			if err != nil {
				return err
			}
			m.optim = a
		case config.OptimizerSGD:
			sg, err := torch.NewSGD(m.params, o.Momentum, o.WeightDecay, o.Nesterov)
			if err != nil {
				return err
			}
			m.optim = sg
		default:
			return fmt.Errorf("optimizer %q: want adamw or sgd", o.Name)
		}
		m.optimCfg = o
		return nil
	})
}

// UpdateInfo reports one applied update.
type UpdateInfo struct {
	LR       float64
	GradNorm float64 // global L2 norm before clipping
}

// Update applies global step (0-based) to the parameters: clip the
// gradients (which the caller has already summed and divided by the global
// count), take the scheduled learning rate, run the optimizer. It does not
// zero the gradients.
func (m *Model) Update(step int) (UpdateInfo, error) {
	var u UpdateInfo
	err := m.do(func() error {
		if m.optim == nil {
			return fmt.Errorf("update step %d: no optimizer; call SetOptimizer first", step)
		}
		o := m.optimCfg
		f, err := LRFactor(o.Schedule, step, o.WarmupSteps, o.TotalSteps)
		if err != nil {
			return err
		}
		u.LR = o.LR * f
		if u.GradNorm, err = m.params.ClipGradNorm(o.MaxGradNorm); err != nil {
			return err
		}
		return m.optim.Apply(u.LR)
	})
	if err != nil {
		return UpdateInfo{}, fmt.Errorf("update step %d: %w", step, err)
	}
	return u, nil
}

// Step finishes a training step whose summed gradients are in the block:
// scale them by scale (1/global count), clip, update, and zero them for
// the next step. It equals ScaleGrads, Update and ZeroGrad; with AdamW it
// is one fused pass over the blocks (two when clipping; see
// torch.AdamW.ApplyScaled), which on CPU is several times faster than the
// separate whole-block ops.
func (m *Model) Step(step int, scale float64) (UpdateInfo, error) {
	a, fused := m.optim.(*torch.AdamW)
	if !fused {
		if err := m.ScaleGrads(scale); err != nil {
			return UpdateInfo{}, err
		}
		u, err := m.Update(step)
		if err != nil {
			return UpdateInfo{}, err
		}
		return u, m.ZeroGrad()
	}
	var u UpdateInfo
	err := m.do(func() error {
		o := m.optimCfg
		f, err := LRFactor(o.Schedule, step, o.WarmupSteps, o.TotalSteps)
		if err != nil {
			return err
		}
		u.LR = o.LR * f
		u.GradNorm, err = a.ApplyScaled(u.LR, scale, o.MaxGradNorm)
		return err
	})
	if err != nil {
		return UpdateInfo{}, fmt.Errorf("update step %d: %w", step, err)
	}
	return u, nil
}

// OptimState is the optimizer's state as host buffers, for checkpoints and
// late joiners: AdamW's step count and first and second moments, or SGD's
// step count and momentum buffer, each NumParams long.
type OptimState struct {
	Name    string
	Step    int64
	Buffers [][]float32
}

// optimBuffers is the optimizer's per-parameter state (AdamW: the two
// moments; SGD: the momentum buffer), its name and its step counter.
func (m *Model) optimBuffers() (bufs []torch.Tensor, name string, step *int64, err error) {
	switch o := m.optim.(type) {
	case *torch.AdamW:
		mm, v := o.Moments()
		return []torch.Tensor{mm, v}, config.OptimizerAdamW, &o.Step, nil
	case *torch.SGD:
		return []torch.Tensor{o.Buffer()}, config.OptimizerSGD, &o.Step, nil
	}
	return nil, "", nil, fmt.Errorf("no optimizer; call SetOptimizer first")
}

// OptimizerState copies the optimizer's state out.
func (m *Model) OptimizerState() (*OptimState, error) {
	var st *OptimState
	err := m.do(func() error {
		bufs, name, step, err := m.optimBuffers()
		if err != nil {
			return err
		}
		st = &OptimState{Name: name, Step: *step}
		for _, b := range bufs {
			h := make([]float32, m.params.Numel)
			if m.params.Numel > 0 {
				if err := copyOut(b, h); err != nil {
					return err
				}
			}
			st.Buffers = append(st.Buffers, h)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("optimizer state: %w", err)
	}
	return st, nil
}

// SetOptimizerState restores state saved by OptimizerState into the
// optimizer made by SetOptimizer (which must be of the same kind).
func (m *Model) SetOptimizerState(st *OptimState) error {
	err := m.do(func() error {
		bufs, _, step, err := m.optimBuffers()
		if err != nil {
			return err
		}
		if st.Name != m.optimCfg.Name && !(st.Name == config.OptimizerAdamW && m.optimCfg.Name == "") {
			return fmt.Errorf("state is for %q but the optimizer is %q", st.Name, m.optimCfg.Name)
		}
		if len(st.Buffers) != len(bufs) {
			return fmt.Errorf("state has %d buffers, %s needs %d", len(st.Buffers), st.Name, len(bufs))
		}
		for i, b := range bufs {
			if int64(len(st.Buffers[i])) != m.params.Numel {
				return fmt.Errorf("state buffer %d has %d elements, the model %d", i, len(st.Buffers[i]), m.params.Numel)
			}
			if m.params.Numel > 0 {
				if err := b.CopyFrom(st.Buffers[i]); err != nil {
					return err
				}
			}
		}
		*step = st.Step
		return nil
	})
	if err != nil {
		return fmt.Errorf("set optimizer state: %w", err)
	}
	return nil
}

func copyOut(t torch.Tensor, dst []float32) error { return t.CopyTo(dst) }

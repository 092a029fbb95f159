package hf

import (
	"fmt"

	"github.com/ringtune/ringtune/config"
	"github.com/ringtune/ringtune/model/torch"
)

// SetShardedOptimizer replaces the optimizer by a sharded AdamW (ZeRO-1)
// that holds zeroed moments for the given slices of the flat block only.
// The whole-block optimizer's state is freed: Step, OptimizerState and
// HostStateBlocks refuse to run until SetOptimizer is called again; use
// ShardStep, ShardMoments and SetShardMoments instead.
func (m *Model) SetShardedOptimizer(o OptimConfig, slices []torch.Range) error {
	if o.Name != config.OptimizerAdamW && o.Name != "" {
		return fmt.Errorf("train.shard_optimizer: zero1 shards AdamW's moments; optimizer %q is not sharded", o.Name)
	}
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
		s, err := torch.NewShardedAdamW(m.params, torch.AdamWConfig{Beta1: o.Beta1, Beta2: o.Beta2, Eps: o.Eps, WeightDecay: o.WeightDecay}, slices)
		if err != nil {
			return err
		}
		m.shard, m.optimCfg = s, o
		return nil
	})
}

// ShardSumSq is Σ (g·scale)² over r of the (reduced) gradient block.
func (m *Model) ShardSumSq(r torch.Range, scale float64) (float64, error) {
	var s float64
	err := m.do(func() error {
		var err error
		if m.shard == nil {
			return fmt.Errorf("no sharded optimizer")
		}
		s, err = m.shard.SumSq(r, scale)
		return err
	})
	return s, err
}

// ShardStep is Step for the sharded optimizer: every slice it holds is
// updated from the gradient times scale times clip (the clipping
// coefficient of the global norm, torch.ClipCoef), with the scheduled
// learning rate of step, and those slices of the gradient are zeroed. The
// rest of the gradient block is zeroed too: after a reduce-scatter it holds
// partial sums nobody needs.
func (m *Model) ShardStep(step int, scale, clip float64) (UpdateInfo, error) {
	var u UpdateInfo
	err := m.do(func() error {
		if m.shard == nil {
			return fmt.Errorf("no sharded optimizer; call SetShardedOptimizer first")
		}
		o := m.optimCfg
		f, err := LRFactor(o.Schedule, step, o.WarmupSteps, o.TotalSteps)
		if err != nil {
			return err
		}
		u.LR = o.LR * f
		if err := m.shard.ApplySlices(u.LR, scale, clip); err != nil {
			return err
		}
		return m.params.ZeroGrad()
	})
	if err != nil {
		return UpdateInfo{}, fmt.Errorf("sharded update step %d: %w", step, err)
	}
	return u, nil
}

// Shard is the sharded optimizer (nil unless SetShardedOptimizer ran).
// Its tensors must only be used through the model's methods.
func (m *Model) Shard() *torch.ShardedAdamW { return m.shard }

// ShardMoments copies slice i's moments into mm and v.
func (m *Model) ShardMoments(i int, mm, v []float32) error {
	return m.do(func() error {
		if m.shard == nil {
			return fmt.Errorf("no sharded optimizer")
		}
		return m.shard.CopyMomentsTo(i, mm, v)
	})
}

// SetShardMoments overwrites slice i's moments and the step count.
func (m *Model) SetShardMoments(i int, mm, v []float32, step int64) error {
	return m.do(func() error {
		if m.shard == nil {
			return fmt.Errorf("no sharded optimizer")
		}
		m.shard.Step = step
		return m.shard.SetMoments(i, mm, v)
	})
}

// OptimConfig is the optimizer's configuration as last set.
func (m *Model) OptimConfig() OptimConfig { return m.optimCfg }

// ShardMomentsHost is block (0: first moment, 1: second) of slice i's
// moments as host memory: libtorch's own memory on CPU (no copy; valid
// until the optimizer changes, and unchanged while no step is applied), a
// host copy on CUDA.
func (m *Model) ShardMomentsHost(i, block int) ([]float32, error) {
	var src []float32
	err := m.do(func() error {
		if m.shard == nil {
			return fmt.Errorf("no sharded optimizer")
		}
		mm, v := m.shard.HostMoments(i)
		if mm == nil && m.shard.Slices[i].Len() > 0 {
			n := m.shard.Slices[i].Len()
			mm, v = make([]float32, n), make([]float32, n)
			if err := m.shard.CopyMomentsTo(i, mm, v); err != nil {
				return err
			}
		}
		src = [][]float32{mm, v}[block]
		return nil
	})
	return src, err
}

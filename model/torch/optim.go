package torch

/*
#include "rt.h"
*/
import "C"

import (
	"fmt"
	"math"
)

// AdamWConfig holds torch.optim.AdamW's hyper-parameters.
type AdamWConfig struct {
	Beta1, Beta2 float64
	Eps          float64
	WeightDecay  float64
}

// DefaultAdamW is PyTorch's default (betas 0.9/0.999, eps 1e-8, decay 0.01).
func DefaultAdamW() AdamWConfig {
	return AdamWConfig{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
}

// AdamW updates a Params block with torch.optim.AdamW's single-tensor
// algorithm (decoupled weight decay on the Decay prefix only), in a few
// whole-block ops.
type AdamW struct {
	Config AdamWConfig
	Step   int64

	p    *Params
	m, v Tensor // owned: first and second moments
}

// NewAdamW allocates the moment buffers next to p's block.
func NewAdamW(p *Params, cfg AdamWConfig) (*AdamW, error) {
	s := NewScope()
	defer s.Close()
	o := &AdamW{Config: cfg, p: p}
	o.m = s.Keep(s.Zeros(Float32, p.Device, max(p.Numel, 1)))
	o.v = s.Keep(s.Zeros(Float32, p.Device, max(p.Numel, 1)))
	if err := s.Err(); err != nil {
		o.Free()
		return nil, fmt.Errorf("allocate AdamW state: %w", err)
	}
	return o, nil
}

// Apply performs one update with learning rate lr from p's gradients.
func (o *AdamW) Apply(lr float64) error {
	o.Step++
	c := o.Config
	err := cErr(C.rt_adamw(C.rt_tensor(o.p.flat.c), C.rt_tensor(o.p.grad.c), C.rt_tensor(o.m.c),
		C.rt_tensor(o.v.c), C.int64_t(o.p.DecayNumel), C.double(lr), C.double(c.Beta1),
		C.double(c.Beta2), C.double(c.Eps), C.double(c.WeightDecay), C.int64_t(o.Step)))
	if err != nil {
		o.Step--
		return fmt.Errorf("adamw step %d: %w", o.Step+1, err)
	}
	return nil
}

// ApplyScaled is Apply on the gradient multiplied by gscale and, when
// maxNorm > 0, clipped to global L2 norm maxNorm as
// torch.nn.utils.clip_grad_norm_ does; it zeroes the gradient afterwards.
// On CPU that is one pass over the blocks (two with clipping, whose norm is
// needed before the update; see rt_adamw_step) instead of about
// twenty-five. It returns the L2 norm of the scaled gradient before
// clipping.
func (o *AdamW) ApplyScaled(lr, gscale, maxNorm float64) (float64, error) {
	o.Step++
	c := o.Config
	var sumsq C.double
	err := cErr(C.rt_adamw_step(C.rt_tensor(o.p.flat.c), C.rt_tensor(o.p.grad.c), C.rt_tensor(o.m.c),
		C.rt_tensor(o.v.c), C.int64_t(o.p.DecayNumel), C.double(gscale), C.double(maxNorm), C.double(lr),
		C.double(c.Beta1), C.double(c.Beta2), C.double(c.Eps), C.double(c.WeightDecay), C.int64_t(o.Step), &sumsq))
	if err != nil {
		o.Step--
		return 0, fmt.Errorf("adamw step %d: %w", o.Step+1, err)
	}
	return math.Sqrt(float64(sumsq)), nil
}

// Moments exposes the moment buffers (for checkpoints).
func (o *AdamW) Moments() (m, v Tensor) { return o.m, o.v }

// Free releases the moment buffers.
func (o *AdamW) Free() {
	o.m.Free()
	o.v.Free()
}

// SGD updates a Params block with torch.optim.SGD's algorithm.
type SGD struct {
	Momentum, WeightDecay float64
	Nesterov              bool
	Step                  int64

	p   *Params
	buf Tensor // owned
}

// NewSGD allocates the momentum buffer.
func NewSGD(p *Params, momentum, weightDecay float64, nesterov bool) (*SGD, error) {
	s := NewScope()
	defer s.Close()
	o := &SGD{Momentum: momentum, WeightDecay: weightDecay, Nesterov: nesterov, p: p}
	o.buf = s.Keep(s.Zeros(Float32, p.Device, max(p.Numel, 1)))
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("allocate SGD state: %w", err)
	}
	return o, nil
}

// Apply performs one update with learning rate lr.
func (o *SGD) Apply(lr float64) error {
	o.Step++
	nest := C.int(0)
	if o.Nesterov {
		nest = 1
	}
	err := cErr(C.rt_sgd(C.rt_tensor(o.p.flat.c), C.rt_tensor(o.p.grad.c), C.rt_tensor(o.buf.c),
		C.int64_t(o.p.DecayNumel), C.double(lr), C.double(o.Momentum), C.double(o.WeightDecay),
		nest, C.int64_t(o.Step)))
	if err != nil {
		o.Step--
		return fmt.Errorf("sgd step %d: %w", o.Step+1, err)
	}
	return nil
}

// Buffer exposes the momentum buffer (for checkpoints).
func (o *SGD) Buffer() Tensor { return o.buf }

// Free releases the momentum buffer.
func (o *SGD) Free() { o.buf.Free() }

package torch

/*
#include "rt.h"
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// ParamSpec describes one parameter of a model.
type ParamSpec struct {
	Name  string
	Shape []int64
	// Decay is true for parameters that get weight decay (matrices and
	// embeddings); biases and norm weights usually do not.
	Decay bool
}

// Params keeps every parameter of a model in one contiguous float32 block,
// each parameter a view into it, and every gradient in a second block the
// same way. Backward accumulates straight into the gradient block (libtorch
// adds into an existing .grad in place), so the gradients are one flat
// buffer for the all-reduce without any copy on CPU, and the optimizer runs
// a handful of vectorised ops over whole blocks.
//
// Layout: parameters with Decay first, then the rest, each group in the
// order given, so weight decay applies to one prefix of the block.
type Params struct {
	Specs   []ParamSpec // in block order
	Offsets []int64     // element offset of each spec in the block
	Numel   int64
	// DecayNumel is the length of the prefix that gets weight decay.
	DecayNumel int64
	Device     Device

	flat, grad Tensor   // owned
	views      []Tensor // owned: parameter views (leaves requiring grad)
	gviews     []Tensor // owned: gradient views
	index      map[string]int
}

// NewParams allocates zeroed parameters and gradients on dev.
func NewParams(specs []ParamSpec, dev Device) (*Params, error) {
	if err := dev.Check(); err != nil {
		return nil, err
	}
	p := &Params{Device: dev, index: map[string]int{}}
	for _, pass := range []bool{true, false} {
		for _, sp := range specs {
			if sp.Decay != pass {
				continue
			}
			if _, dup := p.index[sp.Name]; dup {
				return nil, fmt.Errorf("parameter %q declared twice", sp.Name)
			}
			n := int64(1)
			for _, d := range sp.Shape {
				if d <= 0 {
					return nil, fmt.Errorf("parameter %q: bad shape %v", sp.Name, sp.Shape)
				}
				n *= d
			}
			p.index[sp.Name] = len(p.Specs)
			p.Specs = append(p.Specs, sp)
			p.Offsets = append(p.Offsets, p.Numel)
			p.Numel += n
			if sp.Decay {
				p.DecayNumel = p.Numel
			}
		}
	}
	s := NewScope()
	defer s.Close()
	p.flat = s.Keep(s.Zeros(Float32, dev, max(p.Numel, 1)))
	p.grad = s.Keep(s.Zeros(Float32, dev, max(p.Numel, 1)))
	for i, sp := range p.Specs {
		n := numel(sp.Shape)
		v := s.Detach(s.View(s.Narrow(p.flat, 0, p.Offsets[i], n), sp.Shape...))
		s.SetRequiresGrad(v, true)
		g := s.View(s.Narrow(p.grad, 0, p.Offsets[i], n), sp.Shape...)
		if s.err != nil {
			break
		}
		if err := cErr(C.rt_set_grad(C.rt_tensor(v.c), C.rt_tensor(g.c))); err != nil {
			s.Fail(fmt.Errorf("attach gradient of %q: %w", sp.Name, err))
			break
		}
		p.views = append(p.views, s.Keep(v))
		p.gviews = append(p.gviews, s.Keep(g))
	}
	if err := s.Err(); err != nil {
		p.Free()
		return nil, fmt.Errorf("allocate %d parameters on %s: %w", p.Numel, dev, err)
	}
	return p, nil
}

func numel(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// Free releases the blocks and views.
func (p *Params) Free() {
	for i := range p.views {
		p.views[i].Free()
	}
	for i := range p.gviews {
		p.gviews[i].Free()
	}
	p.flat.Free()
	p.grad.Free()
	p.views, p.gviews = nil, nil
}

// Get is the parameter named name (a leaf requiring grad).
func (p *Params) Get(name string) (Tensor, bool) {
	i, ok := p.index[name]
	if !ok {
		return Tensor{}, false
	}
	return p.views[i], true
}

// At is the i-th parameter in block order.
func (p *Params) At(i int) Tensor { return p.views[i] }

// Flat is the whole parameter block (1-D, Numel elements).
func (p *Params) Flat() Tensor { return p.flat }

// Grad is the whole gradient block.
func (p *Params) Grad() Tensor { return p.grad }

// HostSlice aliases a CPU block as a Go slice: no copy. It is valid while p
// lives; nil for CUDA blocks.
func (p *Params) hostSlice(t Tensor) []float32 {
	if p.Device.IsCUDA() || p.Numel == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(t.DataPtr()), p.Numel)
}

// GradSlice aliases the gradient block on CPU (nil on CUDA: use CopyGradTo).
func (p *Params) GradSlice() []float32 { return p.hostSlice(p.grad) }

// ParamSlice aliases the parameter block on CPU (nil on CUDA).
func (p *Params) ParamSlice() []float32 { return p.hostSlice(p.flat) }

// CopyGradTo copies the flat gradients into dst (len Numel): one memcpy, or
// one device-to-host copy on CUDA.
func (p *Params) CopyGradTo(dst []float32) error {
	if int64(len(dst)) != p.Numel {
		return fmt.Errorf("copy gradients: buffer has %d elements, model %d", len(dst), p.Numel)
	}
	return p.narrowed(p.grad).CopyTo(dst)
}

// SetGradFrom overwrites the flat gradients with src (len Numel).
func (p *Params) SetGradFrom(src []float32) error {
	if int64(len(src)) != p.Numel {
		return fmt.Errorf("set gradients: buffer has %d elements, model %d", len(src), p.Numel)
	}
	return cErr(C.rt_from_host(C.rt_tensor(p.grad.c), unsafe.Pointer(unsafe.SliceData(src)), C.int64_t(4*len(src))))
}

// CopyParamsTo copies the flat parameters into dst (len Numel).
func (p *Params) CopyParamsTo(dst []float32) error {
	if int64(len(dst)) != p.Numel {
		return fmt.Errorf("copy parameters: buffer has %d elements, model %d", len(dst), p.Numel)
	}
	return p.narrowed(p.flat).CopyTo(dst)
}

// SetParamsFrom overwrites the flat parameters with src (len Numel).
func (p *Params) SetParamsFrom(src []float32) error {
	if int64(len(src)) != p.Numel {
		return fmt.Errorf("set parameters: buffer has %d elements, model %d", len(src), p.Numel)
	}
	return cErr(C.rt_from_host(C.rt_tensor(p.flat.c), unsafe.Pointer(unsafe.SliceData(src)), C.int64_t(4*len(src))))
}

// narrowed is the block itself; the block has max(Numel,1) elements so that
// an empty model still has a valid tensor, and Numel 0 copies nothing.
func (p *Params) narrowed(t Tensor) Tensor {
	if p.Numel == 0 {
		return Tensor{}
	}
	return t
}

// ZeroGrad zeroes the gradient block in place (views stay attached).
func (p *Params) ZeroGrad() error {
	s := NewScope()
	defer s.Close()
	s.Zero_(p.grad)
	return s.Err()
}

// ClipGradNorm scales the gradients so that their global L2 norm is at most
// maxNorm (maxNorm <= 0: measure only) and returns the norm before clipping.
func (p *Params) ClipGradNorm(maxNorm float64) (float64, error) {
	var norm C.double
	if err := cErr(C.rt_clip_grad_norm(C.rt_tensor(p.grad.c), C.double(maxNorm), &norm)); err != nil {
		return 0, fmt.Errorf("clip gradient norm: %w", err)
	}
	return float64(norm), nil
}

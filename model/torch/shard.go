package torch

/*
#include "rt.h"
*/
import "C"

import (
	"fmt"
	"math"
	"unsafe"
)

// Range is the half-open element range [Lo, Hi) of a flat block.
type Range struct{ Lo, Hi int64 }

// Len is the number of elements in the range.
func (r Range) Len() int64 { return r.Hi - r.Lo }

// ShardedAdamW is AdamW for a sharded optimizer (ZeRO-1): it holds the
// moments of a few slices of the flat block only (a rank's own slice and
// its buddy copy of a neighbour's) and updates exactly those slices of the
// parameters. Each slice's update is torch.optim.AdamW's on those elements,
// the same float operations as AdamW.ApplyScaled; the global clipping
// coefficient is the caller's, who sums the slices' norms over the ranks.
type ShardedAdamW struct {
	Config AdamWConfig
	Step   int64
	Slices []Range

	p    *Params
	m, v []Tensor // owned, one per slice (at least one element each)
}

// NewShardedAdamW allocates zeroed moments for the given slices of p.
func NewShardedAdamW(p *Params, cfg AdamWConfig, slices []Range) (*ShardedAdamW, error) {
	o := &ShardedAdamW{Config: cfg, p: p, Slices: append([]Range(nil), slices...)}
	s := NewScope()
	defer s.Close()
	for _, r := range slices {
		if r.Lo < 0 || r.Hi < r.Lo || r.Hi > p.Numel {
			o.Free()
			return nil, fmt.Errorf("sharded AdamW: slice [%d,%d) outside the %d-element block", r.Lo, r.Hi, p.Numel)
		}
		o.m = append(o.m, s.Keep(s.Zeros(Float32, p.Device, max(r.Len(), 1))))
		o.v = append(o.v, s.Keep(s.Zeros(Float32, p.Device, max(r.Len(), 1))))
	}
	if err := s.Err(); err != nil {
		o.Free()
		return nil, fmt.Errorf("allocate sharded AdamW state: %w", err)
	}
	return o, nil
}

// SumSq is Σ (g·gscale)² over range r of the gradient block, in double.
func (o *ShardedAdamW) SumSq(r Range, gscale float64) (float64, error) {
	var out C.double
	if err := cErr(C.rt_sumsq_slice(C.rt_tensor(o.p.grad.c), C.int64_t(r.Lo), C.int64_t(r.Len()), C.double(gscale), &out)); err != nil {
		return 0, fmt.Errorf("gradient norm of [%d,%d): %w", r.Lo, r.Hi, err)
	}
	return float64(out), nil
}

// ClipCoef is torch.nn.utils.clip_grad_norm_'s factor for a gradient of
// global sum of squares sumsq: min(1, maxNorm/(norm+1e-6)), or 1 when
// maxNorm is 0 (no clipping).
func ClipCoef(sumsq, maxNorm float64) float64 {
	if maxNorm <= 0 {
		return 1
	}
	return min(1, maxNorm/(math.Sqrt(sumsq)+1e-6))
}

// ApplySlices takes one AdamW step with learning rate lr on every slice:
// gradient times gscale times clip, then the update; it zeroes those
// slices of the gradient.
func (o *ShardedAdamW) ApplySlices(lr, gscale, clip float64) error {
	o.Step++
	c := o.Config
	for i, r := range o.Slices {
		if r.Len() == 0 {
			continue
		}
		err := cErr(C.rt_adamw_slice(C.rt_tensor(o.p.flat.c), C.rt_tensor(o.p.grad.c), C.rt_tensor(o.m[i].c),
			C.rt_tensor(o.v[i].c), C.int64_t(r.Lo), C.int64_t(o.p.DecayNumel), C.double(gscale), C.double(clip),
			C.double(lr), C.double(c.Beta1), C.double(c.Beta2), C.double(c.Eps), C.double(c.WeightDecay), C.int64_t(o.Step)))
		if err != nil {
			// Slices before i are updated already: the state is now
			// inconsistent, which the caller must treat as lost.
			return fmt.Errorf("sharded adamw step %d, slice [%d,%d): %w", o.Step, r.Lo, r.Hi, err)
		}
	}
	return nil
}

// Moments are slice i's first and second moments (Slices[i].Len()
// elements; a tensor of one element for an empty slice).
func (o *ShardedAdamW) Moments(i int) (m, v Tensor) { return o.m[i], o.v[i] }

// CopyMomentsTo copies slice i's moments into m and v (each Slices[i].Len()).
func (o *ShardedAdamW) CopyMomentsTo(i int, m, v []float32) error {
	if int64(len(m)) != o.Slices[i].Len() || len(v) != len(m) {
		return fmt.Errorf("copy moments of slice %d: buffers of %d and %d elements, slice has %d", i, len(m), len(v), o.Slices[i].Len())
	}
	if len(m) == 0 {
		return nil
	}
	if err := o.m[i].CopyTo(m); err != nil {
		return err
	}
	return o.v[i].CopyTo(v)
}

// SetMoments overwrites slice i's moments with m and v.
func (o *ShardedAdamW) SetMoments(i int, m, v []float32) error {
	if int64(len(m)) != o.Slices[i].Len() || len(v) != len(m) {
		return fmt.Errorf("set moments of slice %d: buffers of %d and %d elements, slice has %d", i, len(m), len(v), o.Slices[i].Len())
	}
	if len(m) == 0 {
		return nil
	}
	if err := o.m[i].CopyFrom(m); err != nil {
		return err
	}
	return o.v[i].CopyFrom(v)
}

// Bytes is the size of the moments held (an empty slice's one-element
// placeholder tensors are not counted).
func (o *ShardedAdamW) Bytes() int64 {
	var n int64
	for _, r := range o.Slices {
		n += 2 * 4 * r.Len()
	}
	return n
}

// Free releases the moments.
func (o *ShardedAdamW) Free() {
	for i := range o.m {
		o.m[i].Free()
		o.v[i].Free()
	}
	o.m, o.v = nil, nil
}

// HostMoments aliases slice i's moments as Go slices on CPU (no copy;
// valid until Free); nil on CUDA.
func (o *ShardedAdamW) HostMoments(i int) (m, v []float32) {
	n := o.Slices[i].Len()
	if o.p.Device.IsCUDA() || n == 0 {
		return nil, nil
	}
	return unsafe.Slice((*float32)(o.m[i].DataPtr()), n), unsafe.Slice((*float32)(o.v[i].DataPtr()), n)
}

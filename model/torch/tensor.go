package torch

/*
#include <stdlib.h>
#include "rt.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sugarme/gotch/libtch"
)

// DType is a libtorch scalar type, in gotch's (and c10's) numbering.
type DType int32

// The dtypes ringtune uses.
const (
	Int64    DType = 4
	Float16  DType = 5
	Float32  DType = 6
	Float64  DType = 7
	Bool     DType = 11
	BFloat16 DType = 15
)

// Size is the element size in bytes.
func (d DType) Size() int {
	switch d {
	case Bool:
		return 1
	case Float16, BFloat16:
		return 2
	case Float32:
		return 4
	default:
		return 8
	}
}

func (d DType) String() string {
	switch d {
	case Int64:
		return "int64"
	case Float16:
		return "float16"
	case Float32:
		return "float32"
	case Float64:
		return "float64"
	case Bool:
		return "bool"
	case BFloat16:
		return "bfloat16"
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

// Tensor is a handle to a libtorch tensor. The zero Tensor is undefined (an
// absent optional argument). A Tensor is owned either by the Scope that made
// it or, after Scope.Keep, by the caller, who frees it with Free.
type Tensor struct {
	c libtch.Ctensor
}

// Defined reports whether t holds a tensor.
func (t Tensor) Defined() bool { return t.c != nil }

// Free releases a handle the caller owns (see Scope.Keep). The storage goes
// when its last handle does.
func (t *Tensor) Free() {
	if t.c != nil {
		libtch.AtFree(t.c)
		t.c = nil
	}
}

// Dim is the number of dimensions.
func (t Tensor) Dim() int { return int(libtch.AtDim(t.c)) }

// Shape returns the sizes.
func (t Tensor) Shape() []int64 {
	n := t.Dim()
	s := make([]int64, n)
	if n > 0 {
		libtch.AtShape(t.c, unsafe.Pointer(&s[0]))
	}
	return s
}

// Numel is the number of elements.
func (t Tensor) Numel() int64 {
	n := int64(1)
	for _, d := range t.Shape() {
		n *= d
	}
	return n
}

// DType is the element type.
func (t Tensor) DType() DType { return DType(libtch.AtScalarType(t.c)) }

// RequiresGrad reports whether autograd tracks t.
func (t Tensor) RequiresGrad() bool { return libtch.AtRequiresGrad(t.c) }

// DataPtr is the address of the first element (CPU tensors; valid while the
// storage lives).
func (t Tensor) DataPtr() unsafe.Pointer { return libtch.AtDataPtr(t.c) }

// CopyTo copies t's elements into dst, whose length must equal Numel and
// whose element type must match t's dtype (float32, int64, float64, bool).
// It is one memcpy, not per-element reflection.
func (t Tensor) CopyTo(dst any) error {
	p, n, dt, err := sliceInfo(dst)
	if err != nil {
		return err
	}
	if dt != t.DType() {
		return fmt.Errorf("copy %s tensor into []%s: element types differ", t.DType(), dt)
	}
	if int64(n) != t.Numel() {
		return fmt.Errorf("copy tensor of %d elements into slice of %d", t.Numel(), n)
	}
	return cErr(C.rt_to_bytes(C.rt_tensor(t.c), p, C.int64_t(n*dt.Size())))
}

// CopyFrom overwrites a contiguous tensor's elements with src (same rules as
// CopyTo). On CPU it is one memcpy.
func (t Tensor) CopyFrom(src any) error {
	p, n, dt, err := sliceInfo(src)
	if err != nil {
		return err
	}
	if dt != t.DType() {
		return fmt.Errorf("copy []%s into %s tensor: element types differ", dt, t.DType())
	}
	return cErr(C.rt_from_host(C.rt_tensor(t.c), p, C.int64_t(n*dt.Size())))
}

// Float32s returns a copy of t's elements.
func (t Tensor) Float32s() ([]float32, error) {
	out := make([]float32, t.Numel())
	return out, t.CopyTo(out)
}

func sliceInfo(s any) (unsafe.Pointer, int, DType, error) {
	var p unsafe.Pointer
	var n int
	var dt DType
	switch v := s.(type) {
	case []float32:
		n, dt = len(v), Float32
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []int64:
		n, dt = len(v), Int64
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []float64:
		n, dt = len(v), Float64
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []bool:
		n, dt = len(v), Bool
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	case []uint16: // raw float16 / bfloat16 bits
		n, dt = len(v), BFloat16
		if n > 0 {
			p = unsafe.Pointer(&v[0])
		}
	default:
		return nil, 0, 0, fmt.Errorf("unsupported slice type %T (want []float32, []int64, []float64 or []bool)", s)
	}
	return p, n, dt, nil
}

// Scope owns the tensors made through it and frees them together: a forward
// and backward pass makes hundreds of intermediates, and one Close (or
// Release) per step frees them all. Its first error sticks: later ops return
// undefined tensors and do nothing, and Err reports the error, so model code
// can check once per pass. A Scope belongs to one Thread.
type Scope struct {
	slot  *[8]libtch.Ctensor // C memory: gotch's C API writes results here
	owned []libtch.Ctensor
	err   error
}

// ErrClosed is returned by a Scope used after Close.
var ErrClosed = errors.New("torch: scope used after Close")

// NewScope makes an empty scope.
func NewScope() *Scope {
	slot := (*[8]libtch.Ctensor)(C.calloc(8, C.size_t(unsafe.Sizeof(libtch.Ctensor(nil)))))
	return &Scope{slot: slot, owned: make([]libtch.Ctensor, 0, 256)}
}

// Err is the first error any op in the scope hit.
func (s *Scope) Err() error { return s.err }

// Fail records err (if it is the first) so that later ops are skipped.
func (s *Scope) Fail(err error) {
	if s.err == nil && err != nil {
		s.err = err
	}
}

// Release frees every tensor the scope owns and returns the sticky error,
// clearing it, so that the scope can serve the next step.
func (s *Scope) Release() error {
	for i, c := range s.owned {
		libtch.AtFree(c)
		s.owned[i] = nil
	}
	s.owned = s.owned[:0]
	err := s.err
	if err != ErrClosed {
		s.err = nil
	}
	return err
}

// Close frees every tensor and the scope itself.
func (s *Scope) Close() {
	s.Release()
	if s.slot != nil {
		C.free(unsafe.Pointer(s.slot))
		s.slot = nil
	}
	s.err = ErrClosed
}

// Len is the number of tensors the scope owns (for leak tests).
func (s *Scope) Len() int { return len(s.owned) }

// Keep hands t over to the caller, who must Free it.
func (s *Scope) Keep(t Tensor) Tensor {
	for i := len(s.owned) - 1; i >= 0; i-- {
		if s.owned[i] == t.c {
			s.owned = append(s.owned[:i], s.owned[i+1:]...)
			return t
		}
	}
	return t
}

// own takes ownership of a fresh handle.
func (s *Scope) own(c libtch.Ctensor) Tensor {
	s.owned = append(s.owned, c)
	return Tensor{c: c}
}

// run calls one gotch op writing into the slot and takes its n results.
func (s *Scope) run(name string, f func(out *libtch.Ctensor)) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	s.slot[0] = nil
	f(&s.slot[0])
	if err := lastErr(); err != nil {
		s.err = fmt.Errorf("torch %s: %w", name, err)
		return Tensor{}
	}
	return s.own(s.slot[0])
}

// runN is run for ops with several results.
func (s *Scope) runN(name string, n int, f func(out *libtch.Ctensor)) []Tensor {
	if s.err != nil {
		return make([]Tensor, n)
	}
	for i := range n {
		s.slot[i] = nil
	}
	f(&s.slot[0])
	if err := lastErr(); err != nil {
		s.err = fmt.Errorf("torch %s: %w", name, err)
		return make([]Tensor, n)
	}
	out := make([]Tensor, n)
	for i := range n {
		out[i] = s.own(s.slot[i])
	}
	return out
}

// runRT calls one of rt.cpp's ops writing one result into the slot.
func (s *Scope) runRT(name string, f func(out *C.rt_tensor) *C.char) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	s.slot[0] = nil
	if err := cErr(f((*C.rt_tensor)(unsafe.Pointer(&s.slot[0])))); err != nil {
		s.err = fmt.Errorf("torch %s: %w", name, err)
		return Tensor{}
	}
	return s.own(s.slot[0])
}

// check records a failure of a gotch call that returns no tensor.
func (s *Scope) check(name string) {
	if err := lastErr(); err != nil && s.err == nil {
		s.err = fmt.Errorf("torch %s: %w", name, err)
	}
}

// FromFloat32 makes a tensor of the given shape from data (copied).
func (s *Scope) FromFloat32(data []float32, shape ...int64) Tensor {
	return s.fromSlice("from_float32", data, shape, CPU)
}

// FromInt64 makes an int64 tensor of the given shape from data (copied).
func (s *Scope) FromInt64(data []int64, shape ...int64) Tensor {
	return s.fromSlice("from_int64", data, shape, CPU)
}

// FromSliceOn makes a tensor from a []float32/[]int64/[]float64/[]bool on a
// device.
func (s *Scope) FromSliceOn(data any, dev Device, shape ...int64) Tensor {
	return s.fromSlice("from_slice", data, shape, dev)
}

func (s *Scope) fromSlice(name string, data any, shape []int64, dev Device) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	p, n, dt, err := sliceInfo(data)
	if err != nil {
		s.Fail(fmt.Errorf("torch %s: %w", name, err))
		return Tensor{}
	}
	want := int64(1)
	for _, d := range shape {
		want *= d
	}
	if want != int64(n) {
		s.Fail(fmt.Errorf("torch %s: %d elements do not fill shape %v", name, n, shape))
		return Tensor{}
	}
	var dims *C.int64_t
	if len(shape) > 0 {
		dims = (*C.int64_t)(unsafe.Pointer(&shape[0]))
	}
	return s.runRT(name, func(out *C.rt_tensor) *C.char {
		return C.rt_from_bytes(out, p, dims, C.int(len(shape)), C.int(dt), C.int(dev.code()))
	})
}

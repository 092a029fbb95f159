package torch

/*
#include "rt.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sugarme/gotch/libtch"
)

// Rows is a copy of some rows of an embedding matrix, made a leaf of its own
// with its own gradient, so that a step's input lookups read it instead of
// the matrix. Backward then gives two gradients for a tied embedding: the
// output projection's, dense, in the matrix's own .grad (it is final at the
// start of backward), and the lookups', in Rows' gradient, which holds only
// the rows the step read. The two are reduced apart and added afterwards
// (AddGradInto); the sum is the matrix's gradient, up to the order of the
// float additions.
type Rows struct {
	// Leaf is the [n, width] copy of the rows, requiring grad; its .grad
	// is the gradient block.
	Leaf     Tensor
	index    Tensor // [n] int64, the rows' indices in the matrix
	grad     Tensor // [n·width] float32 block
	gview    Tensor // [n, width] view of grad (Leaf's .grad)
	n, width int64
	dev      Device
}

// NewRows copies the rows of w (a 2-D float32 matrix) listed in rows,
// which must be distinct and inside w, into a new leaf on dev with a
// zeroed gradient. Free it when the step is over.
func NewRows(w Tensor, rows []int64, dev Device) (*Rows, error) {
	if !w.Defined() || w.Dim() != 2 {
		return nil, errors.New("embedding rows: the matrix is not a defined 2-D tensor")
	}
	if len(rows) == 0 {
		return nil, errors.New("embedding rows: no rows")
	}
	shape := w.Shape()
	seen := make(map[int64]bool, len(rows))
	for _, r := range rows {
		if r < 0 || r >= shape[0] {
			return nil, fmt.Errorf("embedding rows: row %d is outside the matrix's %d rows", r, shape[0])
		}
		if seen[r] {
			return nil, fmt.Errorf("embedding rows: row %d listed twice", r)
		}
		seen[r] = true
	}
	n, width := int64(len(rows)), shape[1]
	r := &Rows{n: n, width: width, dev: dev}
	s := NewScope()
	defer s.Close()
	prev := SetGradEnabled(false)
	defer SetGradEnabled(prev)
	idx := s.FromSliceOn(rows, dev, n)
	vals := s.run("index_select", func(o *libtch.Ctensor) { libtch.AtgIndexSelect(o, w.c, 0, idx.c) })
	leaf := s.Detach(vals)
	s.SetRequiresGrad(leaf, true)
	g := s.Zeros(Float32, dev, n*width)
	gv := s.View(g, n, width)
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("embedding rows: %w", err)
	}
	if err := cErr(C.rt_set_grad(C.rt_tensor(leaf.c), C.rt_tensor(gv.c))); err != nil {
		return nil, fmt.Errorf("embedding rows: attach the gradient: %w", err)
	}
	r.Leaf, r.index, r.grad, r.gview = s.Keep(leaf), s.Keep(idx), s.Keep(g), s.Keep(gv)
	return r, nil
}

// Len is the number of rows, and Width their length.
func (r *Rows) Len() int { return int(r.n) }

// Width is the length of a row.
func (r *Rows) Width() int { return int(r.width) }

// GradSlice aliases the gradient block (Len·Width, row after row) as a Go
// slice on CPU: no copy. Nil on CUDA (use CopyGradTo and SetGradFrom).
func (r *Rows) GradSlice() []float32 {
	if r.dev.IsCUDA() {
		return nil
	}
	return unsafe.Slice((*float32)(r.grad.DataPtr()), r.n*r.width)
}

// CopyGradTo copies the gradient block into dst (len Len·Width).
func (r *Rows) CopyGradTo(dst []float32) error {
	if int64(len(dst)) != r.n*r.width {
		return fmt.Errorf("copy row gradients: buffer has %d elements, the rows %d", len(dst), r.n*r.width)
	}
	return r.grad.CopyTo(dst)
}

// SetGradFrom overwrites the gradient block with src (len Len·Width), e.g.
// the all-reduced sum.
func (r *Rows) SetGradFrom(src []float32) error {
	if int64(len(src)) != r.n*r.width {
		return fmt.Errorf("set row gradients: buffer has %d elements, the rows %d", len(src), r.n*r.width)
	}
	return cErr(C.rt_from_host(C.rt_tensor(r.grad.c), unsafe.Pointer(unsafe.SliceData(src)), C.int64_t(4*len(src))))
}

// AddGradInto adds the gradient of each row into its row of dst, the
// matrix's gradient ([rows, Width]): dst.index_add_(0, rows, grad).
func (r *Rows) AddGradInto(dst Tensor) error {
	if !dst.Defined() || dst.Dim() != 2 || dst.Shape()[1] != r.width {
		return fmt.Errorf("add row gradients: the destination is not a [rows, %d] matrix", r.width)
	}
	s := NewScope()
	defer s.Close()
	prev := SetGradEnabled(false)
	defer SetGradEnabled(prev)
	s.run("index_add_", func(o *libtch.Ctensor) { libtch.AtgIndexAdd_(o, dst.c, 0, r.index.c, r.gview.c) })
	if err := s.Err(); err != nil {
		return fmt.Errorf("add row gradients: %w", err)
	}
	return nil
}

// Free releases the rows and their gradient.
func (r *Rows) Free() {
	if r == nil {
		return
	}
	r.Leaf.Free()
	r.index.Free()
	r.gview.Free()
	r.grad.Free()
}

// GradOf is the gradient view of the parameter named name.
func (p *Params) GradOf(name string) (Tensor, bool) {
	i, ok := p.index[name]
	if !ok {
		return Tensor{}, false
	}
	return p.gviews[i], true
}

package torch

/*
#include "rt.h"
*/
import "C"

import (
	"fmt"

	"github.com/sugarme/gotch/libtch"
)

// Reduction selects how a loss reduces over its elements (PyTorch's enum).
type Reduction int64

// Loss reductions.
const (
	ReduceNone Reduction = 0
	ReduceMean Reduction = 1
	ReduceSum  Reduction = 2
)

// noDType asks an op for its natural result type.
const noDType int32 = -1

// ints guards gotch wrappers that index a slice's first element even when it
// is empty (a 0-d shape).
func ints(v []int64) []int64 {
	if len(v) == 0 {
		return []int64{0}
	}
	return v
}

// scalarOp runs an op that takes a libtorch Scalar of v, freeing the
// Scalar afterwards (gotch's wrappers would leak it).
func (s *Scope) scalarOp(name string, v float64, f func(o *libtch.Ctensor, sc libtch.Cscalar)) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	sc := libtch.AtsFloat(v)
	defer libtch.AtsFree(sc)
	return s.run(name, func(o *libtch.Ctensor) { f(o, sc) })
}

// Zeros makes a zero tensor.
func (s *Scope) Zeros(dt DType, dev Device, shape ...int64) Tensor {
	return s.run("zeros", func(o *libtch.Ctensor) {
		libtch.AtgZeros(o, ints(shape), len(shape), int32(dt), dev.code())
	})
}

// Ones makes a tensor of ones.
func (s *Scope) Ones(dt DType, dev Device, shape ...int64) Tensor {
	return s.run("ones", func(o *libtch.Ctensor) {
		libtch.AtgOnes(o, ints(shape), len(shape), int32(dt), dev.code())
	})
}

// Randn draws standard normal values from libtorch's seeded generator.
func (s *Scope) Randn(dt DType, dev Device, shape ...int64) Tensor {
	return s.run("randn", func(o *libtch.Ctensor) {
		libtch.AtgRandn(o, ints(shape), len(shape), int32(dt), dev.code())
	})
}

// Normal_ fills t in place with N(mean, std²) values.
func (s *Scope) Normal_(t Tensor, mean, std float64) {
	s.run("normal_", func(o *libtch.Ctensor) { libtch.AtgNormal_(o, t.c, mean, std) })
}

// Uniform_ fills t in place with U(from, to) values.
func (s *Scope) Uniform_(t Tensor, from, to float64) {
	s.run("uniform_", func(o *libtch.Ctensor) { libtch.AtgUniform_(o, t.c, from, to) })
}

// Fill_ sets every element of t to v.
func (s *Scope) Fill_(t Tensor, v float64) {
	s.scalarOp("fill_", v, func(o *libtch.Ctensor, sc libtch.Cscalar) { libtch.AtgFill_(o, t.c, sc) })
}

// Zero_ sets every element of t to 0.
func (s *Scope) Zero_(t Tensor) {
	s.run("zero_", func(o *libtch.Ctensor) { libtch.AtgZero_(o, t.c) })
}

// Copy_ copies src into dst in place (broadcasting, any device).
func (s *Scope) Copy_(dst, src Tensor) {
	if s.err != nil {
		return
	}
	libtch.AtCopy_(dst.c, src.c)
	s.check("copy_")
}

// SetRequiresGrad marks a leaf tensor as a parameter autograd tracks.
func (s *Scope) SetRequiresGrad(t Tensor, on bool) {
	r := int32(0)
	if on {
		r = 1
	}
	s.run("requires_grad_", func(o *libtch.Ctensor) { libtch.AtgRequiresGrad_(o, t.c, r) })
}

// Detach returns a tensor sharing t's storage outside the autograd graph.
func (s *Scope) Detach(t Tensor) Tensor {
	return s.run("detach", func(o *libtch.Ctensor) { libtch.AtgDetach(o, t.c) })
}

// To converts to a dtype.
func (s *Scope) To(t Tensor, dt DType) Tensor {
	return s.run("to", func(o *libtch.Ctensor) { libtch.AtgToDtype(o, t.c, int32(dt), 0, 0) })
}

// ToDevice moves to a device.
func (s *Scope) ToDevice(t Tensor, dev Device) Tensor {
	return s.run("to_device", func(o *libtch.Ctensor) {
		libtch.AtgToDevice(o, t.c, dev.code(), int32(t.DType()), 0, 0)
	})
}

// Narrow is the view t[..., start:start+length, ...] along dim.
func (s *Scope) Narrow(t Tensor, dim, start, length int64) Tensor {
	return s.run("narrow", func(o *libtch.Ctensor) { libtch.AtgNarrow(o, t.c, dim, start, length) })
}

// Select is the view t[..., index, ...] along dim, dropping dim.
func (s *Scope) Select(t Tensor, dim, index int64) Tensor {
	return s.run("select", func(o *libtch.Ctensor) { libtch.AtgSelect(o, t.c, dim, index) })
}

// View reshapes without copying (t must be compatible).
func (s *Scope) View(t Tensor, shape ...int64) Tensor {
	return s.run("view", func(o *libtch.Ctensor) { libtch.AtgView(o, t.c, ints(shape), len(shape)) })
}

// Reshape reshapes, copying only when it must.
func (s *Scope) Reshape(t Tensor, shape ...int64) Tensor {
	return s.run("reshape", func(o *libtch.Ctensor) { libtch.AtgReshape(o, t.c, ints(shape), len(shape)) })
}

// Transpose swaps two dims.
func (s *Scope) Transpose(t Tensor, d0, d1 int64) Tensor {
	return s.run("transpose", func(o *libtch.Ctensor) { libtch.AtgTranspose(o, t.c, d0, d1) })
}

// Permute reorders dims.
func (s *Scope) Permute(t Tensor, dims ...int64) Tensor {
	return s.run("permute", func(o *libtch.Ctensor) { libtch.AtgPermute(o, t.c, ints(dims), len(dims)) })
}

// Unsqueeze inserts a dim of size 1.
func (s *Scope) Unsqueeze(t Tensor, dim int64) Tensor {
	return s.run("unsqueeze", func(o *libtch.Ctensor) { libtch.AtgUnsqueeze(o, t.c, dim) })
}

// Contiguous returns t in row-major layout.
func (s *Scope) Contiguous(t Tensor) Tensor {
	return s.run("contiguous", func(o *libtch.Ctensor) { libtch.AtgContiguous(o, t.c) })
}

// Cat concatenates along dim.
func (s *Scope) Cat(dim int64, ts ...Tensor) Tensor {
	cs := make([]libtch.Ctensor, len(ts))
	for i, t := range ts {
		cs[i] = t.c
	}
	if len(cs) == 0 {
		s.Fail(fmt.Errorf("torch cat: no tensors"))
		return Tensor{}
	}
	return s.run("cat", func(o *libtch.Ctensor) { libtch.AtgCat(o, cs, len(cs), dim) })
}

// Add is a + b (broadcasting).
func (s *Scope) Add(a, b Tensor) Tensor {
	return s.run("add", func(o *libtch.Ctensor) { libtch.AtgAdd(o, a.c, b.c) })
}

// Sub is a - b.
func (s *Scope) Sub(a, b Tensor) Tensor {
	return s.run("sub", func(o *libtch.Ctensor) { libtch.AtgSub(o, a.c, b.c) })
}

// Mul is a * b elementwise.
func (s *Scope) Mul(a, b Tensor) Tensor {
	return s.run("mul", func(o *libtch.Ctensor) { libtch.AtgMul(o, a.c, b.c) })
}

// Div is a / b elementwise.
func (s *Scope) Div(a, b Tensor) Tensor {
	return s.run("div", func(o *libtch.Ctensor) { libtch.AtgDiv(o, a.c, b.c) })
}

// MulScalar is a * v.
func (s *Scope) MulScalar(a Tensor, v float64) Tensor {
	return s.scalarOp("mul", v, func(o *libtch.Ctensor, sc libtch.Cscalar) { libtch.AtgMulScalar(o, a.c, sc) })
}

// AddScalar is a + v.
func (s *Scope) AddScalar(a Tensor, v float64) Tensor {
	return s.scalarOp("add", v, func(o *libtch.Ctensor, sc libtch.Cscalar) { libtch.AtgAddScalar(o, a.c, sc) })
}

// Matmul is torch.matmul.
func (s *Scope) Matmul(a, b Tensor) Tensor {
	return s.run("matmul", func(o *libtch.Ctensor) { libtch.AtgMatmul(o, a.c, b.c) })
}

// Linear is x·wᵀ + b (b may be undefined).
func (s *Scope) Linear(x, w, b Tensor) Tensor {
	return s.run("linear", func(o *libtch.Ctensor) { libtch.AtgLinear(o, x.c, w.c, b.c) })
}

// Embedding looks up rows of w by int64 ids.
func (s *Scope) Embedding(w, ids Tensor) Tensor {
	return s.run("embedding", func(o *libtch.Ctensor) { libtch.AtgEmbedding(o, w.c, ids.c, -1, 0, 0) })
}

// LayerNorm normalises over the last len(shape) dims.
func (s *Scope) LayerNorm(x Tensor, shape []int64, w, b Tensor, eps float64) Tensor {
	return s.run("layer_norm", func(o *libtch.Ctensor) {
		libtch.AtgLayerNorm(o, x.c, ints(shape), len(shape), w.c, b.c, eps, 1)
	})
}

// Gelu is the exact (erf) GELU, or the tanh approximation.
func (s *Scope) Gelu(x Tensor, tanhApprox bool) Tensor {
	a := C.int(0)
	if tanhApprox {
		a = 1
	}
	return s.runRT("gelu", func(o *C.rt_tensor) *C.char { return C.rt_gelu(o, C.rt_tensor(x.c), a) })
}

// Tanh is elementwise tanh.
func (s *Scope) Tanh(x Tensor) Tensor {
	return s.run("tanh", func(o *libtch.Ctensor) { libtch.AtgTanh(o, x.c) })
}

// Silu is x·sigmoid(x).
func (s *Scope) Silu(x Tensor) Tensor {
	return s.run("silu", func(o *libtch.Ctensor) { libtch.AtgSilu(o, x.c) })
}

// Softmax along dim.
func (s *Scope) Softmax(x Tensor, dim int64) Tensor {
	return s.run("softmax", func(o *libtch.Ctensor) { libtch.AtgSoftmax(o, x.c, dim, noDType) })
}

// LogSoftmax along dim.
func (s *Scope) LogSoftmax(x Tensor, dim int64) Tensor {
	return s.run("log_softmax", func(o *libtch.Ctensor) { libtch.AtgLogSoftmax(o, x.c, dim, noDType) })
}

// Dropout zeroes elements with probability p and scales the rest by
// 1/(1-p) when train is true; it is the identity otherwise. On CPU
// float32 its mask is drawn by rt_dropout's own generator (seeded from
// libtorch's, so Seed still decides it): libtorch 1.13 without MKL draws a
// double per element, which took ~10% of bench train's BERT step (its
// hidden and attention dropouts); BenchmarkDropout compares the two.
// Elsewhere it is at::dropout.
func (s *Scope) Dropout(x Tensor, p float64, train bool) Tensor {
	if !train || p == 0 {
		return x
	}
	return s.runRT("dropout", func(o *C.rt_tensor) *C.char { return C.rt_dropout(o, C.rt_tensor(x.c), C.double(p)) })
}

// dropoutATen is libtorch's own at::dropout, which Dropout replaces on
// CPU float32 (benchmarks and tests compare the two).
func (s *Scope) dropoutATen(x Tensor, p float64) Tensor {
	return s.run("dropout", func(o *libtch.Ctensor) { libtch.AtgDropout(o, x.c, p, 1) })
}

// MaskedFill sets the elements where mask is true to v.
func (s *Scope) MaskedFill(x, mask Tensor, v float64) Tensor {
	return s.scalarOp("masked_fill", v, func(o *libtch.Ctensor, sc libtch.Cscalar) { libtch.AtgMaskedFill(o, x.c, mask.c, sc) })
}

// Eq is x == v elementwise (bool).
func (s *Scope) Eq(x Tensor, v float64) Tensor {
	return s.scalarOp("eq", v, func(o *libtch.Ctensor, sc libtch.Cscalar) { libtch.AtgEq(o, x.c, sc) })
}

// Sum of all elements.
func (s *Scope) Sum(x Tensor) Tensor {
	return s.run("sum", func(o *libtch.Ctensor) { libtch.AtgSum(o, x.c, noDType) })
}

// Mean of all elements.
func (s *Scope) Mean(x Tensor) Tensor {
	return s.run("mean", func(o *libtch.Ctensor) { libtch.AtgMean(o, x.c, noDType) })
}

// Argmax along dim.
func (s *Scope) Argmax(x Tensor, dim int64) Tensor {
	return s.run("argmax", func(o *libtch.Ctensor) { libtch.AtgArgmax(o, x.c, dim, 0, 0) })
}

// CrossEntropy is the loss of logits [N, C] against int64 targets [N];
// targets equal to ignoreIndex count for nothing (use -100 as PyTorch does).
func (s *Scope) CrossEntropy(logits, target Tensor, red Reduction, ignoreIndex int64) Tensor {
	return s.run("cross_entropy", func(o *libtch.Ctensor) {
		libtch.AtgCrossEntropyLoss(o, logits.c, target.c, nil, int64(red), ignoreIndex, 0)
	})
}

// MSE is the mean (or summed) squared error.
func (s *Scope) MSE(x, target Tensor, red Reduction) Tensor {
	return s.run("mse_loss", func(o *libtch.Ctensor) { libtch.AtgMseLoss(o, x.c, target.c, int64(red)) })
}

// Backward computes gradients of a scalar into the .grad of every leaf that
// requires grad, accumulating into existing gradients.
func (s *Scope) Backward(loss Tensor) {
	if s.err != nil {
		return
	}
	libtch.AtBackward(loss.c, 0, 0)
	s.check("backward")
}

// Item reads a one-element tensor as float64.
func (s *Scope) Item(t Tensor) float64 {
	if s.err != nil {
		return 0
	}
	v := make([]float64, 1)
	d := s.To(t, Float64)
	if s.err != nil {
		return 0
	}
	if err := d.CopyTo(v); err != nil {
		s.Fail(fmt.Errorf("torch item: %w", err))
		return 0
	}
	return v[0]
}

// EmbeddingPad is Embedding whose row padIdx gets no gradient, like
// nn.Embedding(padding_idx=padIdx); padIdx < 0 means none.
func (s *Scope) EmbeddingPad(w, ids Tensor, padIdx int64) Tensor {
	if padIdx < 0 {
		padIdx = -1
	}
	return s.run("embedding", func(o *libtch.Ctensor) { libtch.AtgEmbedding(o, w.c, ids.c, padIdx, 0, 0) })
}

// Expand broadcasts size-1 dims to shape without copying (-1 keeps a dim).
func (s *Scope) Expand(t Tensor, shape ...int64) Tensor {
	return s.run("expand", func(o *libtch.Ctensor) { libtch.AtgExpand(o, t.c, ints(shape), len(shape), 0) })
}

// MeanDim averages over dims, keeping them as size 1 when keep is true.
func (s *Scope) MeanDim(x Tensor, keep bool, dims ...int64) Tensor {
	k := int32(0)
	if keep {
		k = 1
	}
	return s.run("mean_dim", func(o *libtch.Ctensor) { libtch.AtgMeanDim(o, x.c, ints(dims), len(dims), k, noDType) })
}

// SumDim sums over dims, keeping them as size 1 when keep is true.
func (s *Scope) SumDim(x Tensor, keep bool, dims ...int64) Tensor {
	k := int32(0)
	if keep {
		k = 1
	}
	return s.run("sum_dim", func(o *libtch.Ctensor) {
		libtch.AtgSumDimIntlist(o, x.c, ints(dims), len(dims), k, noDType)
	})
}

// Square is x*x elementwise.
func (s *Scope) Square(x Tensor) Tensor {
	return s.run("square", func(o *libtch.Ctensor) { libtch.AtgSquare(o, x.c) })
}

// Rsqrt is 1/sqrt(x) elementwise.
func (s *Scope) Rsqrt(x Tensor) Tensor {
	return s.run("rsqrt", func(o *libtch.Ctensor) { libtch.AtgRsqrt(o, x.c) })
}

// Neg is -x.
func (s *Scope) Neg(x Tensor) Tensor {
	return s.run("neg", func(o *libtch.Ctensor) { libtch.AtgNeg(o, x.c) })
}

// Gt is a > b elementwise with broadcasting (bool).
func (s *Scope) Gt(a, b Tensor) Tensor {
	return s.run("gt", func(o *libtch.Ctensor) { libtch.AtgGtTensor(o, a.c, b.c) })
}

// Ne is a != b elementwise with broadcasting (bool).
func (s *Scope) Ne(a, b Tensor) Tensor {
	return s.run("ne", func(o *libtch.Ctensor) { libtch.AtgNeTensor(o, a.c, b.c) })
}

// Or is the logical or of a and b with broadcasting (bool).
func (s *Scope) Or(a, b Tensor) Tensor {
	return s.run("logical_or", func(o *libtch.Ctensor) { libtch.AtgLogicalOr(o, a.c, b.c) })
}

// Where is a where cond is true and b elsewhere, as a tensor of cond's
// shape and the default float type (float32).
func (s *Scope) Where(cond Tensor, a, b float64) Tensor {
	if s.err != nil {
		return Tensor{}
	}
	sa, sb := libtch.AtsFloat(a), libtch.AtsFloat(b)
	defer libtch.AtsFree(sa)
	defer libtch.AtsFree(sb)
	return s.run("where", func(o *libtch.Ctensor) { libtch.AtgWhereScalar(o, cond.c, sa, sb) })
}

// torch_compat.h: lets gotch v0.9.1's generated C++ wrapper (written for
// libtorch 2.1) compile against Debian 12's libtorch 1.13.1, without editing
// any file of gotch (go.sum verifies them).
//
// It is force-included ahead of gotch's libtch/torch_api.cpp through
// CGO_CXXFLAGS (-include), which scripts/env.sh sets. With libtorch 2.x the
// whole header is a no-op, so the same flags work with an official 2.1 build.
//
// How it works:
//   * Every header gotch's C++ includes is included here first, so that the
//     macros at the end cannot touch libtorch's own declarations.
//   * Ops that 1.13 lacks get a stand-in in namespace at (torch:: reaches
//     namespace at through a using-directive). Ops we may use, or that are
//     cheap to express with 1.13 ops, are implemented; the rest throw a
//     std::runtime_error, which gotch's PROTECT turns into a Go error that
//     names the op.
//   * Ops whose signature changed get an adapter overload.
//   * Member calls (self->op(...)) whose signature changed are rerouted by a
//     function-like macro to Tensor::m(fn, args...), which calls fn(*self,
//     args...): Tensor cannot gain members, but m() accepts any callable.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/interned_strings.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/jit/passes/fixup_trace_scope_blocks.h>
#include <torch/csrc/jit/passes/normalize_ops.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#if TORCH_VERSION_MAJOR < 2

namespace ringtune_compat {

using at::Tensor;
using T2 = std::tuple<Tensor, Tensor>;
using T3 = std::tuple<Tensor, Tensor, Tensor>;
using T4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using T5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using T6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using T7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

[[noreturn]] inline void unavailable(const char *op) {
  throw std::runtime_error(
      std::string("ringtune: torch op '") + op +
      "' is not available in libtorch " TORCH_VERSION
      " (it exists from libtorch 2.x); build against libtorch 2.1 "
      "(scripts/setup.sh --libtorch DIR) to use it");
}

// A Scalar correction (2.x) as the integer correction 1.13 takes.
inline c10::optional<int64_t> correction_of(const c10::Scalar &c) {
  if (c.isIntegral(false)) {
    return c.toLong();
  }
  double d = c.toDouble();
  if (std::floor(d) != d) {
    throw std::runtime_error(
        "ringtune: a fractional correction is not supported by libtorch "
        TORCH_VERSION "; use an integer correction");
  }
  return static_cast<int64_t>(d);
}

inline c10::optional<int64_t> correction_of(const c10::optional<c10::Scalar> &c) {
  if (!c.has_value()) {
    return c10::nullopt;
  }
  return correction_of(*c);
}

inline std::vector<int64_t> ints_of(const Tensor &t) {
  Tensor c = t.to(at::kLong).contiguous().cpu();
  const int64_t *p = c.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

// Squeezes the listed dims (2.x squeeze.dims): only those of size 1, in
// descending order so earlier removals do not shift later ones.
inline Tensor squeeze_dims(const Tensor &self, at::IntArrayRef dims) {
  if (self.dim() == 0) {
    return self.alias();
  }
  std::vector<int64_t> ds;
  for (int64_t d : dims) {
    ds.push_back(c10::maybe_wrap_dim(d, self.dim()));
  }
  std::sort(ds.begin(), ds.end());
  ds.erase(std::unique(ds.begin(), ds.end()), ds.end());
  Tensor out = self.alias();
  for (auto it = ds.rbegin(); it != ds.rend(); ++it) {
    if (out.size(*it) == 1) {
      out = out.squeeze(*it);
    }
  }
  return out;
}

// Attention with libtorch 2.x's public semantics: a boolean mask keeps the
// positions where it is true; a float mask is added to the scores.
inline T2 sdpa_math(const Tensor &q, const Tensor &k, const Tensor &v,
                    const c10::optional<Tensor> &mask, double dropout_p,
                    bool is_causal, const c10::optional<Tensor> &dropout_mask,
                    c10::optional<double> scale) {
  double s = scale.has_value() ? *scale : 1.0 / std::sqrt((double)q.size(-1));
  Tensor scores = at::matmul(q, k.transpose(-2, -1)).mul(s);
  if (is_causal) {
    int64_t L = q.size(-2), S = k.size(-2);
    Tensor keep = at::ones({L, S}, q.options().dtype(at::kBool)).tril();
    scores = scores.masked_fill(keep.logical_not(),
                                -std::numeric_limits<double>::infinity());
  }
  if (mask.has_value() && mask->defined()) {
    if (mask->scalar_type() == at::kBool) {
      scores = scores.masked_fill(mask->logical_not(),
                                  -std::numeric_limits<double>::infinity());
    } else {
      scores = scores.add(*mask);
    }
  }
  Tensor attn = at::softmax(scores, -1);
  if (dropout_mask.has_value() && dropout_mask->defined()) {
    attn = attn.masked_fill(dropout_mask->logical_not(), 0).div(1.0 - dropout_p);
  } else if (dropout_p > 0.0) {
    attn = at::dropout(attn, dropout_p, true);
  }
  return T2(at::matmul(attn, v), attn);
}

inline T3 copy_out3(Tensor &o0, Tensor &o1, Tensor &o2, const T3 &r) {
  o0.resize_(std::get<0>(r).sizes()).copy_(std::get<0>(r));
  o1.resize_(std::get<1>(r).sizes()).copy_(std::get<1>(r));
  o2.resize_(std::get<2>(r).sizes()).copy_(std::get<2>(r));
  return T3(o0, o1, o2);
}

inline Tensor &copy_out(Tensor &o, const Tensor &r) {
  o.resize_(r.sizes()).copy_(r);
  return o;
}

// Targets of the member-call macros below: fn(*self, args...).
struct ToDense {
  Tensor operator()(const Tensor &t, c10::optional<at::ScalarType> dtype = c10::nullopt,
                    bool /*masked_grad*/ = true) const {
    return t.to_dense(dtype);
  }
};
struct ToSparse {
  Tensor operator()(const Tensor &t) const { return t.to_sparse(); }
  Tensor operator()(const Tensor &t, int64_t sparse_dim) const {
    return t.to_sparse(sparse_dim);
  }
  Tensor operator()(const Tensor &t, c10::optional<at::Layout> layout,
                    at::OptionalIntArrayRef blocksize,
                    c10::optional<int64_t> dense_dim) const {
    if ((layout.has_value() && *layout != at::kSparse) || blocksize.has_value() ||
        dense_dim.has_value()) {
      unavailable("to_sparse(layout, blocksize, dense_dim)");
    }
    return t.to_sparse();
  }
};
struct ToSparseCompressed {
  const char *name;
  at::Layout layout;
  Tensor convert(const Tensor &t, at::OptionalIntArrayRef blocksize,
                 c10::optional<int64_t> dense_dim) const {
    if (dense_dim.has_value()) {
      unavailable(name);
    }
    switch (layout) {
    case at::kSparseCsr:
      return t.to_sparse_csr();
    case at::kSparseCsc:
      return t.to_sparse_csc();
    case at::kSparseBsr:
      return t.to_sparse_bsr(*blocksize);
    default:
      return t.to_sparse_bsc(*blocksize);
    }
  }
  Tensor operator()(const Tensor &t, c10::optional<int64_t> dense_dim = c10::nullopt) const {
    return convert(t, c10::nullopt, dense_dim);
  }
  Tensor operator()(const Tensor &t, at::IntArrayRef blocksize,
                    c10::optional<int64_t> dense_dim = c10::nullopt) const {
    return convert(t, blocksize, dense_dim);
  }
};
struct Unavailable {
  const char *name;
  template <class... A> Tensor operator()(const Tensor &, A &&...) const {
    unavailable(name);
  }
};
struct SqueezeInPlace {
  const Tensor &operator()(const Tensor &t) const { return t.squeeze_(); }
  const Tensor &operator()(const Tensor &t, int64_t dim) const { return t.squeeze_(dim); }
  const Tensor &operator()(const Tensor &t, at::IntArrayRef dims) const {
    Tensor r = squeeze_dims(t, dims);
    return t.as_strided_(r.sizes(), r.strides());
  }
};

inline const ToDense to_dense{};
inline const ToSparse to_sparse{};
inline const ToSparseCompressed to_sparse_csr{"to_sparse_csr(dense_dim)", at::kSparseCsr};
inline const ToSparseCompressed to_sparse_csc{"to_sparse_csc(dense_dim)", at::kSparseCsc};
inline const ToSparseCompressed to_sparse_bsr{"to_sparse_bsr(dense_dim)", at::kSparseBsr};
inline const ToSparseCompressed to_sparse_bsc{"to_sparse_bsc(dense_dim)", at::kSparseBsc};
inline const Unavailable u_to_sparse{"_to_sparse"};
inline const Unavailable u_to_sparse_csr{"_to_sparse_csr"};
inline const Unavailable u_to_sparse_csc{"_to_sparse_csc"};
inline const Unavailable u_to_sparse_bsr{"_to_sparse_bsr"};
inline const Unavailable u_to_sparse_bsc{"_to_sparse_bsc"};
inline const Unavailable u_to_dense{"_to_dense"};
inline const Unavailable u_sparse_mask_projection{"_sparse_mask_projection"};
inline const SqueezeInPlace squeeze_{};

} // namespace ringtune_compat

// Ops that 1.13 lacks and that throw when called.
#define RINGTUNE_UNAVAILABLE(R, name)                                          \
  template <class... A> inline R name(A &&...) {                               \
    ::ringtune_compat::unavailable(#name);                                     \
  }

namespace at {

RINGTUNE_UNAVAILABLE(Tensor, _cslt_compress)
RINGTUNE_UNAVAILABLE(Tensor, _cslt_sparse_mm)
RINGTUNE_UNAVAILABLE(ringtune_compat::T4, _efficient_attention_backward)
RINGTUNE_UNAVAILABLE(Tensor, _fill_mem_eff_dropout_mask_)
RINGTUNE_UNAVAILABLE(ringtune_compat::T3, _flash_attention_backward)
RINGTUNE_UNAVAILABLE(Tensor, _functional_assert_async)
RINGTUNE_UNAVAILABLE(Tensor, _functional_sym_constrain_range)
RINGTUNE_UNAVAILABLE(Tensor, _functional_sym_constrain_range_for_size)
RINGTUNE_UNAVAILABLE(int64_t, _fused_sdp_choice)
RINGTUNE_UNAVAILABLE(Tensor, _make_dep_token)
RINGTUNE_UNAVAILABLE(ringtune_compat::T5, _native_batch_norm_legit_functional)
RINGTUNE_UNAVAILABLE(ringtune_compat::T4, _scaled_dot_product_efficient_attention)
RINGTUNE_UNAVAILABLE(ringtune_compat::T3, _scaled_dot_product_flash_attention_backward)
RINGTUNE_UNAVAILABLE(ringtune_compat::T2, _scaled_mm)
RINGTUNE_UNAVAILABLE(ringtune_compat::T2, _scaled_mm_out)
RINGTUNE_UNAVAILABLE(Tensor, _sparse_mask_projection_out)
RINGTUNE_UNAVAILABLE(ringtune_compat::T2, _sparse_mm_reduce_impl)
RINGTUNE_UNAVAILABLE(Tensor, _sparse_semi_structured_linear)
RINGTUNE_UNAVAILABLE(Tensor, _test_check_tensor)
RINGTUNE_UNAVAILABLE(Tensor, _test_functorch_fallback)
RINGTUNE_UNAVAILABLE(Tensor, _test_functorch_fallback_out)
RINGTUNE_UNAVAILABLE(Tensor, _to_sparse_out)
RINGTUNE_UNAVAILABLE(Tensor, _to_sparse_csr_out)
RINGTUNE_UNAVAILABLE(Tensor, _to_sparse_csc_out)
RINGTUNE_UNAVAILABLE(Tensor, _to_sparse_bsr_out)
RINGTUNE_UNAVAILABLE(Tensor, _to_sparse_bsc_out)
RINGTUNE_UNAVAILABLE(ringtune_compat::T2, _to_sparse_semi_structured)
RINGTUNE_UNAVAILABLE(Tensor, max_pool2d_backward)
RINGTUNE_UNAVAILABLE(Tensor, max_pool2d_backward_out)
RINGTUNE_UNAVAILABLE(ringtune_compat::T4, mkldnn_rnn_layer)
RINGTUNE_UNAVAILABLE(ringtune_compat::T4, mkldnn_rnn_layer_out)
RINGTUNE_UNAVAILABLE(ringtune_compat::T7, mkldnn_rnn_layer_backward)
RINGTUNE_UNAVAILABLE(ringtune_compat::T7, mkldnn_rnn_layer_backward_out)
RINGTUNE_UNAVAILABLE(Tensor, quantized_max_pool3d)
RINGTUNE_UNAVAILABLE(Tensor, quantized_max_pool3d_out)
RINGTUNE_UNAVAILABLE(ringtune_compat::T6, ringtune_lstm_mps)
RINGTUNE_UNAVAILABLE(ringtune_compat::T6, _lstm_mps_out)
RINGTUNE_UNAVAILABLE(Tensor, _sparse_mm)
RINGTUNE_UNAVAILABLE(Tensor, _to_dense_out)
RINGTUNE_UNAVAILABLE(Tensor, _sparse_coo_tensor_with_dims_and_tensors_out)
RINGTUNE_UNAVAILABLE(Tensor, empty_permuted_out)

// Trace-time assertions in 2.x; nothing to check eagerly here.
inline void sym_constrain_range(const Scalar &, c10::optional<int64_t>, c10::optional<int64_t>) {}
inline void sym_constrain_range_for_size(const Scalar &, c10::optional<int64_t>,
                                         c10::optional<int64_t>) {}
inline void _propagate_xla_data(const Tensor &, const Tensor &) {}

inline Tensor _int_mm(const Tensor &self, const Tensor &mat2) {
  return self.to(kInt).mm(mat2.to(kInt));
}
inline Tensor &_int_mm_out(Tensor &out, const Tensor &self, const Tensor &mat2) {
  return ringtune_compat::copy_out(out, _int_mm(self, mat2));
}
inline Tensor _is_all_true(const Tensor &self) { return self.all(); }
inline Tensor _is_any_true(const Tensor &self) { return self.any(); }
inline Tensor _prelu_kernel(const Tensor &self, const Tensor &weight) {
  return at::prelu(self, weight);
}
inline std::tuple<Tensor, Tensor> _prelu_kernel_backward(const Tensor &grad, const Tensor &self,
                                                         const Tensor &weight) {
  return at::prelu_backward(grad, self, weight);
}
inline Tensor _reshape_copy(const Tensor &self, IntArrayRef size) {
  return self.reshape(size).clone(MemoryFormat::Contiguous);
}
inline Tensor _unsafe_index(const Tensor &self, const c10::List<c10::optional<Tensor>> &idx) {
  return at::index(self, idx);
}
inline Tensor _unsafe_index_put(const Tensor &self, const c10::List<c10::optional<Tensor>> &idx,
                                const Tensor &values, bool accumulate) {
  return at::index_put(self, idx, values, accumulate);
}
inline Tensor empty_permuted(IntArrayRef size, IntArrayRef physical_layout,
                             TensorOptions options) {
  std::vector<int64_t> phys(physical_layout.size()), inverse(physical_layout.size());
  for (size_t i = 0; i < physical_layout.size(); ++i) {
    phys[i] = size[physical_layout[i]];
    inverse[physical_layout[i]] = (int64_t)i;
  }
  return at::empty(phys, options).permute(inverse);
}
inline Tensor nonzero_static(const Tensor &self, int64_t size, int64_t fill_value) {
  Tensor nz = at::nonzero(self);
  int64_t n = nz.size(0);
  if (n >= size) {
    return nz.narrow(0, 0, size).clone();
  }
  Tensor out = at::full({size, nz.size(1)}, fill_value, nz.options());
  out.narrow(0, 0, n).copy_(nz);
  return out;
}
inline Tensor &nonzero_static_out(Tensor &out, const Tensor &self, int64_t size,
                                  int64_t fill_value) {
  return ringtune_compat::copy_out(out, nonzero_static(self, size, fill_value));
}
inline Tensor &max_out(Tensor &out, const Tensor &self) {
  return ringtune_compat::copy_out(out, at::max(self));
}
inline Tensor &min_out(Tensor &out, const Tensor &self) {
  return ringtune_compat::copy_out(out, at::min(self));
}

// Batch norm entry points that 2.x split out of native_batch_norm.
inline std::tuple<Tensor, Tensor, Tensor>
_native_batch_norm_legit(const Tensor &input, const c10::optional<Tensor> &weight,
                         const c10::optional<Tensor> &bias, Tensor &running_mean,
                         Tensor &running_var, bool training, double momentum, double eps) {
  return at::native_batch_norm(input, weight, bias, running_mean, running_var, training,
                               momentum, eps);
}
inline std::tuple<Tensor, Tensor, Tensor>
_native_batch_norm_legit(const Tensor &input, const c10::optional<Tensor> &weight,
                         const c10::optional<Tensor> &bias, bool training, double momentum,
                         double eps) {
  return at::native_batch_norm(input, weight, bias, c10::nullopt, c10::nullopt, training,
                               momentum, eps);
}
inline std::tuple<Tensor, Tensor, Tensor>
_native_batch_norm_legit_no_training(const Tensor &input, const c10::optional<Tensor> &weight,
                                     const c10::optional<Tensor> &bias,
                                     const Tensor &running_mean, const Tensor &running_var,
                                     double momentum, double eps) {
  return at::native_batch_norm(input, weight, bias, running_mean, running_var, false,
                               momentum, eps);
}
inline std::tuple<Tensor, Tensor, Tensor> _native_batch_norm_legit_out(
    Tensor &out, Tensor &save_mean, Tensor &save_invstd, const Tensor &input,
    const c10::optional<Tensor> &weight, const c10::optional<Tensor> &bias,
    Tensor &running_mean, Tensor &running_var, bool training, double momentum, double eps) {
  return ringtune_compat::copy_out3(
      out, save_mean, save_invstd,
      _native_batch_norm_legit(input, weight, bias, running_mean, running_var, training,
                               momentum, eps));
}
inline std::tuple<Tensor, Tensor, Tensor> _native_batch_norm_legit_out(
    Tensor &out, Tensor &save_mean, Tensor &save_invstd, const Tensor &input,
    const c10::optional<Tensor> &weight, const c10::optional<Tensor> &bias, bool training,
    double momentum, double eps) {
  return ringtune_compat::copy_out3(
      out, save_mean, save_invstd,
      _native_batch_norm_legit(input, weight, bias, training, momentum, eps));
}
inline std::tuple<Tensor, Tensor, Tensor> _native_batch_norm_legit_no_training_out(
    Tensor &o0, Tensor &o1, Tensor &o2, const Tensor &input,
    const c10::optional<Tensor> &weight, const c10::optional<Tensor> &bias,
    const Tensor &running_mean, const Tensor &running_var, double momentum, double eps) {
  return ringtune_compat::copy_out3(
      o0, o1, o2,
      _native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var,
                                           momentum, eps));
}

// Public attention of 2.x, on 1.13 ops.
inline Tensor scaled_dot_product_attention(const Tensor &q, const Tensor &k, const Tensor &v,
                                           const c10::optional<Tensor> &mask = {},
                                           double dropout_p = 0.0, bool is_causal = false,
                                           c10::optional<double> scale = c10::nullopt) {
  return std::get<0>(ringtune_compat::sdpa_math(q, k, v, mask, dropout_p, is_causal,
                                                c10::nullopt, scale));
}
inline std::tuple<Tensor, Tensor>
_scaled_dot_product_attention_math(const Tensor &q, const Tensor &k, const Tensor &v,
                                   const c10::optional<Tensor> &mask, double dropout_p,
                                   bool is_causal, const c10::optional<Tensor> &dropout_mask,
                                   c10::optional<double> scale) {
  return ringtune_compat::sdpa_math(q, k, v, mask, dropout_p, is_causal, dropout_mask, scale);
}

// Signature adapters.
inline std::tuple<Tensor &, Tensor &>
_ctc_loss_out(Tensor &out0, Tensor &out1, const Tensor &log_probs, const Tensor &targets,
              const Tensor &input_lengths, const Tensor &target_lengths, int64_t blank,
              bool zero_infinity) {
  auto r = at::_ctc_loss(log_probs, targets, input_lengths, target_lengths, blank,
                         zero_infinity);
  ringtune_compat::copy_out(out0, std::get<0>(r));
  ringtune_compat::copy_out(out1, std::get<1>(r));
  return std::tuple<Tensor &, Tensor &>(out0, out1);
}
inline Tensor _nested_view_from_buffer(const Tensor &self, const Tensor &nested_size,
                                       const Tensor &nested_strides, const Tensor &offsets) {
  return at::_nested_view_from_buffer(self, nested_size, nested_strides,
                                      ringtune_compat::ints_of(offsets));
}
inline Tensor _nested_view_from_buffer_copy(const Tensor &self, const Tensor &nested_size,
                                            const Tensor &nested_strides,
                                            const Tensor &offsets) {
  return at::_nested_view_from_buffer_copy(self, nested_size, nested_strides,
                                           ringtune_compat::ints_of(offsets));
}
inline Tensor &_nested_view_from_buffer_copy_out(Tensor &out, const Tensor &self,
                                                 const Tensor &nested_size,
                                                 const Tensor &nested_strides,
                                                 const Tensor &offsets) {
  return at::_nested_view_from_buffer_copy_out(out, self, nested_size, nested_strides,
                                               ringtune_compat::ints_of(offsets));
}
inline Tensor mkldnn_reorder_conv2d_weight(const Tensor &self, IntArrayRef padding,
                                           IntArrayRef stride, IntArrayRef dilation,
                                           int64_t groups, OptionalIntArrayRef /*input_size*/) {
  return at::mkldnn_reorder_conv2d_weight(self, padding, stride, dilation, groups);
}
inline Tensor &mkldnn_reorder_conv2d_weight_out(Tensor &out, const Tensor &self,
                                                IntArrayRef padding, IntArrayRef stride,
                                                IntArrayRef dilation, int64_t groups,
                                                OptionalIntArrayRef /*input_size*/) {
  return at::mkldnn_reorder_conv2d_weight_out(out, self, padding, stride, dilation, groups);
}
inline Tensor to_dense_backward(const Tensor &grad, const Tensor &input, bool /*masked_grad*/) {
  return at::to_dense_backward(grad, input);
}
inline Tensor squeeze(const Tensor &self, IntArrayRef dims) {
  return ringtune_compat::squeeze_dims(self, dims);
}
inline Tensor squeeze_copy(const Tensor &self, IntArrayRef dims) {
  return ringtune_compat::squeeze_dims(self, dims).clone(MemoryFormat::Contiguous);
}
inline Tensor &squeeze_copy_out(Tensor &out, const Tensor &self, IntArrayRef dims) {
  return ringtune_compat::copy_out(out, ringtune_compat::squeeze_dims(self, dims));
}
inline Tensor std(const Tensor &self, OptionalIntArrayRef dim, const Scalar &correction,
                  bool keepdim) {
  return at::std(self, dim, ringtune_compat::correction_of(correction), keepdim);
}
inline Tensor &std_out(Tensor &out, const Tensor &self, OptionalIntArrayRef dim,
                       const Scalar &correction, bool keepdim) {
  return at::std_out(out, self, dim, ringtune_compat::correction_of(correction), keepdim);
}
inline std::tuple<Tensor, Tensor> std_mean(const Tensor &self, OptionalIntArrayRef dim,
                                           const Scalar &correction, bool keepdim) {
  return at::std_mean(self, dim, ringtune_compat::correction_of(correction), keepdim);
}
inline std::tuple<Tensor &, Tensor &> std_mean_out(Tensor &out0, Tensor &out1,
                                                   const Tensor &self, OptionalIntArrayRef dim,
                                                   const Scalar &correction, bool keepdim) {
  auto r = std_mean(self, dim, correction, keepdim);
  ringtune_compat::copy_out(out0, std::get<0>(r));
  ringtune_compat::copy_out(out1, std::get<1>(r));
  return std::tuple<Tensor &, Tensor &>(out0, out1);
}
inline Tensor var(const Tensor &self, OptionalIntArrayRef dim, const Scalar &correction,
                  bool keepdim) {
  return at::var(self, dim, ringtune_compat::correction_of(correction), keepdim);
}
inline Tensor &var_out(Tensor &out, const Tensor &self, OptionalIntArrayRef dim,
                       const Scalar &correction, bool keepdim) {
  return at::var_out(out, self, dim, ringtune_compat::correction_of(correction), keepdim);
}
inline std::tuple<Tensor, Tensor> var_mean(const Tensor &self, OptionalIntArrayRef dim,
                                           const Scalar &correction, bool keepdim) {
  return at::var_mean(self, dim, ringtune_compat::correction_of(correction), keepdim);
}
inline std::tuple<Tensor &, Tensor &> var_mean_out(Tensor &out0, Tensor &out1,
                                                   const Tensor &self, OptionalIntArrayRef dim,
                                                   const Scalar &correction, bool keepdim) {
  auto r = var_mean(self, dim, correction, keepdim);
  ringtune_compat::copy_out(out0, std::get<0>(r));
  ringtune_compat::copy_out(out1, std::get<1>(r));
  return std::tuple<Tensor &, Tensor &>(out0, out1);
}

} // namespace at

// Factories that namespace torch declares itself (qualified lookup of
// torch::name stops there), so their adapters must live there too.
namespace torch {

inline at::Tensor sparse_coo_tensor(const at::Tensor &indices, const at::Tensor &values,
                                    at::TensorOptions options, bool is_coalesced) {
  at::Tensor t = torch::sparse_coo_tensor(indices, values, options);
  return is_coalesced ? t.coalesce() : t;
}
inline at::Tensor sparse_coo_tensor(const at::Tensor &indices, const at::Tensor &values,
                                    at::IntArrayRef size, at::TensorOptions options,
                                    bool is_coalesced) {
  at::Tensor t = torch::sparse_coo_tensor(indices, values, size, options);
  return is_coalesced ? t.coalesce() : t;
}
inline at::Tensor _sparse_coo_tensor_unsafe(const at::Tensor &indices, const at::Tensor &values,
                                            at::IntArrayRef size, at::TensorOptions options,
                                            bool /*is_coalesced*/) {
  return torch::_sparse_coo_tensor_unsafe(indices, values, size, options);
}
inline at::Tensor _sparse_coo_tensor_with_dims_and_tensors(int64_t sparse_dim, int64_t dense_dim,
                                                           at::IntArrayRef size,
                                                           const at::Tensor &indices,
                                                           const at::Tensor &values,
                                                           at::TensorOptions options,
                                                           bool /*is_coalesced*/) {
  return torch::_sparse_coo_tensor_with_dims_and_tensors(sparse_dim, dense_dim, size, indices,
                                                         values, options);
}

} // namespace torch

// Member calls whose 2.x signatures 1.13 lacks: self->op(args) becomes
// self->m(fn, args), i.e. fn(*self, args).
#define to_dense(...) m(::ringtune_compat::to_dense __VA_OPT__(,) __VA_ARGS__)
#define to_sparse(...) m(::ringtune_compat::to_sparse __VA_OPT__(,) __VA_ARGS__)
#define to_sparse_csr(...) m(::ringtune_compat::to_sparse_csr __VA_OPT__(,) __VA_ARGS__)
#define to_sparse_csc(...) m(::ringtune_compat::to_sparse_csc __VA_OPT__(,) __VA_ARGS__)
#define to_sparse_bsr(...) m(::ringtune_compat::to_sparse_bsr __VA_OPT__(,) __VA_ARGS__)
#define to_sparse_bsc(...) m(::ringtune_compat::to_sparse_bsc __VA_OPT__(,) __VA_ARGS__)
#define _to_sparse(...) m(::ringtune_compat::u_to_sparse __VA_OPT__(,) __VA_ARGS__)
#define _to_sparse_csr(...) m(::ringtune_compat::u_to_sparse_csr __VA_OPT__(,) __VA_ARGS__)
#define _to_sparse_csc(...) m(::ringtune_compat::u_to_sparse_csc __VA_OPT__(,) __VA_ARGS__)
#define _to_sparse_bsr(...) m(::ringtune_compat::u_to_sparse_bsr __VA_OPT__(,) __VA_ARGS__)
#define _to_sparse_bsc(...) m(::ringtune_compat::u_to_sparse_bsc __VA_OPT__(,) __VA_ARGS__)
#define _to_dense(...) m(::ringtune_compat::u_to_dense __VA_OPT__(,) __VA_ARGS__)
#define _sparse_mask_projection(...) m(::ringtune_compat::u_sparse_mask_projection __VA_OPT__(,) __VA_ARGS__)
#define squeeze_(...) m(::ringtune_compat::squeeze_ __VA_OPT__(,) __VA_ARGS__)
// _lstm_mps returns six tensors in 2.x and five in 1.13.
#define _lstm_mps(...) ringtune_lstm_mps(__VA_ARGS__)

#endif // TORCH_VERSION_MAJOR < 2

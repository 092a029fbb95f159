// torch_compat_2x.h: lets gotch v0.9.1's generated C++ wrapper (written for
// libtorch 2.1) compile against libtorch 2.6 and newer, without editing any
// file of gotch. It is the 2.x branch of torch_compat.h (which covers 1.13),
// kept in its own file so that the 1.13 build's flags, and so Go's cached
// build of gotch on every machine, stay exactly as they were: scripts/env.sh
// force-includes it only when LIBTORCH points at a libtorch directory.
//
// Since 2.1, a few FP8/sparse internals changed their signatures and a few
// deprecated aliases were removed. ringtune calls none of them; gotch binds
// them all, so they must compile. CI compiles gotch's C++ with this header
// against Debian's 2.6 and 2.14 headers (scripts/check-headers.sh); the pip
// CUDA wheels' 2.11 lies between them. 2.1 needs nothing (the header is off
// there); 2.2-2.5 are untested.
#pragma once

// Every header gotch's C++ includes comes first, so that the align_as macro
// at the end cannot touch libtorch's own declarations (as in torch_compat.h).
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

#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6)

namespace ringtune_compat {

[[noreturn]] inline void unavailable(const char *op, const char *why) {
  throw std::runtime_error(std::string("ringtune: torch op '") + op +
                           "' is not available with libtorch " TORCH_VERSION ": " + why);
}

inline c10::optional<at::Tensor> opt(const at::Tensor &t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// The amax output of 2.1's _scaled_mm (the largest magnitude of the result),
// which 2.4+ no longer returns: computed after the fact, in float.
inline at::Tensor amax_of(const at::Tensor &out) {
  return out.to(at::kFloat).abs().max();
}

inline void require_scales(const char *op, const at::Tensor &scale_a, const at::Tensor &scale_b) {
  if (!scale_a.defined() || !scale_b.defined()) {
    unavailable(op, "libtorch 2.4+ requires scale_a and scale_b; pass both");
  }
}

} // namespace ringtune_compat

namespace at {

// Changed signatures. gotch calls these with 2.1's argument order and plain
// Tensors; each adapter is an exact match for that call, so it wins over the
// 2.x declaration (which takes optionals in another order) and forwards to it.
//
// 2.1: _cslt_sparse_mm(A, B, bias, transpose_result)
// 2.x: _cslt_sparse_mm(A, B, bias?, alpha?, out_dtype?, transpose_result, ...)
inline Tensor _cslt_sparse_mm(const Tensor &compressed_A, const Tensor &dense_B,
                              const Tensor &bias, bool transpose_result) {
  return at::_cslt_sparse_mm(compressed_A, dense_B, ringtune_compat::opt(bias),
                             c10::optional<Tensor>(), c10::optional<ScalarType>(),
                             transpose_result);
}
// 2.1: _scaled_mm(self, mat2, bias, out_dtype, scale_a, scale_b, scale_result)
//      -> (out, amax)
// 2.x: _scaled_mm(self, mat2, scale_a, scale_b, bias?, scale_result?,
//      out_dtype?, use_fast_accum) -> out
inline std::tuple<Tensor, Tensor>
_scaled_mm(const Tensor &self, const Tensor &mat2, const Tensor &bias,
           c10::optional<ScalarType> out_dtype, const Tensor &scale_a, const Tensor &scale_b,
           const Tensor &scale_result) {
  ringtune_compat::require_scales("_scaled_mm", scale_a, scale_b);
  Tensor out = at::_scaled_mm(self, mat2, scale_a, scale_b, ringtune_compat::opt(bias),
                              ringtune_compat::opt(scale_result), out_dtype);
  return std::make_tuple(out, ringtune_compat::amax_of(out));
}
inline std::tuple<Tensor &, Tensor &>
_scaled_mm_out(Tensor &out, Tensor &out_amax, const Tensor &self, const Tensor &mat2,
               const Tensor &bias, c10::optional<ScalarType> out_dtype, const Tensor &scale_a,
               const Tensor &scale_b, const Tensor &scale_result) {
  ringtune_compat::require_scales("_scaled_mm_out", scale_a, scale_b);
  at::_scaled_mm_out(out, self, mat2, scale_a, scale_b, ringtune_compat::opt(bias),
                     ringtune_compat::opt(scale_result), out_dtype);
  Tensor amax = ringtune_compat::amax_of(out);
  out_amax.resize_(amax.sizes()).copy_(amax);
  return std::tuple<Tensor &, Tensor &>(out, out_amax);
}

// Removed ops (gone by 2.14). Each stand-in is a function template with the
// removed op's exact parameters: where libtorch still declares the op, the
// call is an equally good match for both and C++ prefers the non-template,
// i.e. libtorch's own op; where it is gone, the stand-in is chosen. This
// detects removal by the declarations actually compiled against, which
// __has_include cannot do reliably (it also finds a system libtorch's
// headers further down the include path).
//
// cholesky and qr are the deprecated aliases of linalg_cholesky / linalg_qr.
template <int = 0> Tensor cholesky(const Tensor &self, bool upper) {
  return at::linalg_cholesky(self, upper);
}
template <int = 0> Tensor &cholesky_out(Tensor &out, const Tensor &self, bool upper) {
  return at::linalg_cholesky_out(out, self, upper);
}
template <int = 0> std::tuple<Tensor, Tensor> qr(const Tensor &self, bool some) {
  return at::linalg_qr(self, some ? "reduced" : "complete");
}
template <int = 0>
std::tuple<Tensor &, Tensor &> qr_out(Tensor &Q, Tensor &R, const Tensor &self, bool some) {
  return at::linalg_qr_out(Q, R, self, some ? "reduced" : "complete");
}
// Named tensors were removed; unnamed tensors are already aligned.
template <int = 0> std::vector<Tensor> align_tensors(TensorList tensors) {
  ringtune_compat::unavailable("align_tensors", "named tensors were removed from libtorch");
}

} // namespace at

namespace ringtune_compat {
// Stands in for Tensor::align_as (a member, so no overload can replace it):
// gotch's self->align_as(x) becomes self->clone(memory_format_or_throw(x)),
// which throws before clone runs. The tensor is never touched.
template <typename... A> c10::optional<c10::MemoryFormat> align_as_removed(A &&...) {
  unavailable("align_as", "named tensors were removed from libtorch");
}
} // namespace ringtune_compat

// Tensor::align_as exists in 2.6 and is gone by 2.14; from 2.7 on, where we
// have not checked, it becomes the throwing stand-in (harmless: nothing in
// ringtune uses named tensors).
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 7
#define align_as(...) clone(::ringtune_compat::align_as_removed(__VA_ARGS__))
#endif

#endif // libtorch >= 2.6

// rt.cpp: see rt.h. Built against whichever libtorch scripts/env.sh selects.
#include "rt.h"
#include "fused.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <stdexcept>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <mutex>

namespace {

char *dup_err(const char *msg) {
  size_t n = strlen(msg);
  char *p = static_cast<char *>(malloc(n + 1));
  if (p != nullptr) {
    memcpy(p, msg, n + 1);
  }
  return p;
}

template <class F> char *guard(F &&f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error &e) {
    return dup_err(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return dup_err(e.what());
  } catch (...) {
    return dup_err("unknown C++ exception");
  }
}

at::Tensor &T(rt_tensor t) { return *static_cast<at::Tensor *>(t); }

at::Device device_of(int d) {
  return d < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, static_cast<int16_t>(d));
}

} // namespace

extern "C" {

const char *rt_version(void) { return TORCH_VERSION; }

int rt_cuda_device_count(void) { return static_cast<int>(torch::cuda::device_count()); }

char *rt_manual_seed(int64_t seed) {
  return guard([&] { torch::manual_seed(static_cast<uint64_t>(seed)); });
}

char *rt_set_num_threads(int n) { return guard([&] { at::set_num_threads(n); }); }

int rt_get_num_threads(void) { return at::get_num_threads(); }

char *rt_set_grad(rt_tensor param, rt_tensor grad) {
  return guard([&] {
    if (T(param).sizes() != T(grad).sizes()) {
      throw std::invalid_argument("gradient view shape does not match its parameter");
    }
    T(param).mutable_grad() = T(grad);
  });
}

char *rt_gelu(rt_tensor *out, rt_tensor x, int approximate) {
  return guard([&] {
    out[0] = new at::Tensor(at::gelu(T(x), approximate ? "tanh" : "none"));
  });
}

char *rt_dropout(rt_tensor *out, rt_tensor x, double p) {
  return guard([&] {
    const at::Tensor &in = T(x);
    if (!in.device().is_cpu() || in.scalar_type() != at::kFloat || p <= 0 || p >= 1) {
      out[0] = new at::Tensor(at::dropout(in, p, true));
      return;
    }
    uint64_t seed;
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      seed = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
    }
    at::Tensor noise = at::empty(in.sizes(), in.options().memory_format(at::MemoryFormat::Contiguous));
    float *d = noise.data_ptr<float>();
    const int64_t n = noise.numel();
    // Whole blocks per task, so a block's mask is the same on any thread.
    at::parallel_for(0, (n + rt_fused::kDropoutBlock - 1) / rt_fused::kDropoutBlock, 1,
                     [&](int64_t b0, int64_t b1) {
                       const int64_t lo = b0 * rt_fused::kDropoutBlock;
                       const int64_t hi = std::min(n, b1 * rt_fused::kDropoutBlock);
                       rt_fused::dropout_mask(d + lo, lo, hi - lo, p, seed);
                     });
    out[0] = new at::Tensor(at::mul(in, noise));
  });
}

char *rt_from_bytes(rt_tensor *out, const void *data, const int64_t *dims, int ndims, int kind,
                    int device) {
  return guard([&] {
    auto opts = at::TensorOptions().dtype(static_cast<at::ScalarType>(kind));
    at::Tensor t = at::empty(at::IntArrayRef(dims, ndims), opts);
    if (t.nbytes() > 0) {
      memcpy(t.data_ptr(), data, t.nbytes());
    }
    if (device >= 0) {
      t = t.to(device_of(device));
    }
    out[0] = new at::Tensor(std::move(t));
  });
}

char *rt_to_bytes(rt_tensor t, void *dst, int64_t nbytes) {
  return guard([&] {
    at::Tensor c = T(t).contiguous();
    if (!c.device().is_cpu()) {
      c = c.cpu();
    }
    if (static_cast<int64_t>(c.nbytes()) != nbytes) {
      throw std::invalid_argument("tensor has " + std::to_string(c.nbytes()) +
                                  " bytes, destination " + std::to_string(nbytes));
    }
    if (nbytes > 0) {
      memcpy(dst, c.data_ptr(), nbytes);
    }
  });
}

char *rt_from_host(rt_tensor t, const void *src, int64_t nbytes) {
  return guard([&] {
    at::Tensor &d = T(t);
    if (!d.is_contiguous() || static_cast<int64_t>(d.nbytes()) != nbytes) {
      throw std::invalid_argument("destination is not a contiguous tensor of " +
                                  std::to_string(nbytes) + " bytes");
    }
    if (nbytes == 0) {
      return;
    }
    if (d.device().is_cpu()) {
      memcpy(d.data_ptr(), src, nbytes);
    } else {
      at::Tensor host = at::from_blob(const_cast<void *>(src), d.sizes(),
                                      d.options().device(at::kCPU));
      d.copy_(host);
    }
  });
}

char *rt_adamw(rt_tensor param, rt_tensor grad, rt_tensor exp_avg, rt_tensor exp_avg_sq,
               int64_t decay_numel, double lr, double beta1, double beta2, double eps,
               double weight_decay, int64_t step) {
  return guard([&] {
    at::NoGradGuard no_grad;
    at::Tensor &p = T(param), &g = T(grad), &m = T(exp_avg), &v = T(exp_avg_sq);
    if (weight_decay != 0 && decay_numel > 0) {
      p.narrow(0, 0, decay_numel).mul_(1 - lr * weight_decay);
    }
    m.mul_(beta1).add_(g, 1 - beta1);
    v.mul_(beta2).addcmul_(g, g, 1 - beta2);
    double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
    double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
    double step_size = lr / bc1;
    double bc2_sqrt = std::sqrt(bc2);
    at::Tensor denom = (v.sqrt() / bc2_sqrt).add_(eps);
    p.addcdiv_(m, denom, -step_size);
  });
}

namespace {

bool fusable(std::initializer_list<const at::Tensor *> ts, int64_t n) {
  for (const at::Tensor *t : ts) {
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || !t->is_contiguous() ||
        t->numel() != n) {
      return false;
    }
  }
  return true;
}

// Blocks of the fused step: fixed size, so that sums over them, added in
// block order, do not depend on the number of threads; 64Ki floats keep a
// block of each array in L2 between the norm and the update loop.
constexpr int64_t kBlock = 1 << 16;

// Sum of squares of g*gscale over the whole block, in double.
double sumsq_blocks(const float *g, int64_t n, float gscale) {
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(nblocks, 0.0);
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
      partial[b] = rt_fused::sumsq_scaled(g + lo, hi - lo, gscale);
    }
  });
  double total = 0;
  for (double x : partial) {
    total += x;
  }
  return total;
}

} // namespace

char *rt_adamw_step(rt_tensor param, rt_tensor grad, rt_tensor exp_avg, rt_tensor exp_avg_sq,
                    int64_t decay_numel, double gscale, double max_norm, double lr, double beta1,
                    double beta2, double eps, double weight_decay, int64_t step,
                    double *grad_sumsq) {
  return guard([&] {
    at::NoGradGuard no_grad;
    at::Tensor &p = T(param), &g = T(grad), &m = T(exp_avg), &v = T(exp_avg_sq);
    const int64_t n = p.numel();
    const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
    const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
    const bool decay = weight_decay != 0 && decay_numel > 0;
    if (!fusable({&p, &g, &m, &v}, n)) {
      // CUDA (or an unusual layout): the same step in libtorch ops.
      g.mul_(gscale);
      const double sumsq = g.pow(2).sum().item<double>();
      *grad_sumsq = sumsq;
      if (max_norm > 0) {
        // torch.nn.utils.clip_grad_norm_: multiply by min(1, coef).
        g.mul_(std::min(1.0, max_norm / (std::sqrt(sumsq) + 1e-6)));
      }
      if (decay) {
        p.narrow(0, 0, decay_numel).mul_(1 - lr * weight_decay);
      }
      m.mul_(beta1).add_(g, 1 - beta1);
      v.mul_(beta2).addcmul_(g, g, 1 - beta2);
      at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(eps);
      p.addcdiv_(m, denom, -lr / bc1);
      g.zero_();
      return;
    }
    float *pp = p.data_ptr<float>(), *gp = g.data_ptr<float>(), *mp = m.data_ptr<float>(),
          *vp = v.data_ptr<float>();
    const float fscale = static_cast<float>(gscale);
    // The norm of the scaled gradient. Clipping needs it before the
    // update, so it is its own (read-only) pass; otherwise it is only
    // reported, and each block's sum is taken just before that block's
    // update, while the block is in cache.
    double clip = 1;
    if (max_norm > 0) {
      const double sumsq = sumsq_blocks(gp, n, fscale);
      *grad_sumsq = sumsq;
      clip = std::min(1.0, max_norm / (std::sqrt(sumsq) + 1e-6));
    }
    const int64_t nblocks = (n + kBlock - 1) / kBlock;
    std::vector<double> partial(max_norm > 0 ? 0 : nblocks, 0.0);
    const float decay_mul = decay ? static_cast<float>(1 - lr * weight_decay) : 1.0f;
    const float fclip = static_cast<float>(clip), b1 = static_cast<float>(beta1),
                omb1 = static_cast<float>(1 - beta1), b2 = static_cast<float>(beta2),
                omb2 = static_cast<float>(1 - beta2),
                bc2s = static_cast<float>(std::sqrt(bc2)), feps = static_cast<float>(eps),
                nss = static_cast<float>(-lr / bc1);
    at::parallel_for(0, nblocks, 1, [&](int64_t blo, int64_t bhi) {
      for (int64_t b = blo; b < bhi; b++) {
        const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
        if (max_norm <= 0) {
          partial[b] = rt_fused::sumsq_scaled(gp + lo, hi - lo, fscale);
        }
        // Split a block at decay_numel: the decayed prefix multiplies p by
        // decay_mul, the rest by 1 (exact in float).
        const int64_t mid = decay ? std::min(std::max(decay_numel, lo), hi) : lo;
        if (mid > lo) {
          rt_fused::adamw(pp + lo, gp + lo, mp + lo, vp + lo, mid - lo, fscale, fclip, decay_mul,
                          b1, omb1, b2, omb2, bc2s, feps, nss);
        }
        if (hi > mid) {
          rt_fused::adamw(pp + mid, gp + mid, mp + mid, vp + mid, hi - mid, fscale, fclip, 1.0f,
                          b1, omb1, b2, omb2, bc2s, feps, nss);
        }
      }
    });
    if (max_norm <= 0) {
      double total = 0;
      for (double x : partial) {
        total += x;
      }
      *grad_sumsq = total;
    }
  });
}

char *rt_sumsq_slice(rt_tensor grad, int64_t lo, int64_t n, double gscale, double *out) {
  return guard([&] {
    at::NoGradGuard no_grad;
    at::Tensor &g = T(grad);
    if (lo < 0 || n < 0 || lo + n > g.numel()) {
      throw std::runtime_error("sumsq slice out of range");
    }
    if (n == 0) {
      *out = 0;
      return;
    }
    if (!fusable({&g}, g.numel())) {
      *out = g.narrow(0, lo, n).mul(gscale).pow(2).sum(at::kDouble).item<double>();
      return;
    }
    *out = sumsq_blocks(g.data_ptr<float>() + lo, n, static_cast<float>(gscale));
  });
}

char *rt_adamw_slice(rt_tensor param, rt_tensor grad, rt_tensor exp_avg, rt_tensor exp_avg_sq,
                     int64_t lo, int64_t decay_numel, double gscale, double clip, double lr,
                     double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  return guard([&] {
    at::NoGradGuard no_grad;
    at::Tensor &p = T(param), &g = T(grad), &m = T(exp_avg), &v = T(exp_avg_sq);
    const int64_t n = m.numel();
    if (lo < 0 || lo + n > p.numel() || v.numel() != n || g.numel() != p.numel()) {
      throw std::runtime_error("adamw slice out of range");
    }
    if (n == 0) {
      return;
    }
    const double bc1 = 1 - std::pow(beta1, static_cast<double>(step));
    const double bc2 = 1 - std::pow(beta2, static_cast<double>(step));
    const bool decay = weight_decay != 0 && decay_numel > lo;
    // The decayed part of the slice, relative to lo.
    const int64_t dmid = decay ? std::min(decay_numel - lo, n) : 0;
    if (!fusable({&p, &g}, p.numel()) || !fusable({&m, &v}, n)) {
      at::Tensor ps = p.narrow(0, lo, n), gs = g.narrow(0, lo, n);
      gs.mul_(gscale);
      if (clip != 1) {
        gs.mul_(clip);
      }
      if (dmid > 0) {
        ps.narrow(0, 0, dmid).mul_(1 - lr * weight_decay);
      }
      m.mul_(beta1).add_(gs, 1 - beta1);
      v.mul_(beta2).addcmul_(gs, gs, 1 - beta2);
      at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(eps);
      ps.addcdiv_(m, denom, -lr / bc1);
      gs.zero_();
      return;
    }
    float *pp = p.data_ptr<float>() + lo, *gp = g.data_ptr<float>() + lo,
          *mp = m.data_ptr<float>(), *vp = v.data_ptr<float>();
    const float fscale = static_cast<float>(gscale), fclip = static_cast<float>(clip),
                decay_mul = decay ? static_cast<float>(1 - lr * weight_decay) : 1.0f,
                b1 = static_cast<float>(beta1), omb1 = static_cast<float>(1 - beta1),
                b2 = static_cast<float>(beta2), omb2 = static_cast<float>(1 - beta2),
                bc2s = static_cast<float>(std::sqrt(bc2)), feps = static_cast<float>(eps),
                nss = static_cast<float>(-lr / bc1);
    const int64_t nblocks = (n + kBlock - 1) / kBlock;
    at::parallel_for(0, nblocks, 1, [&](int64_t blo, int64_t bhi) {
      for (int64_t b = blo; b < bhi; b++) {
        const int64_t a = b * kBlock, e = std::min(n, a + kBlock);
        const int64_t mid = std::min(std::max(dmid, a), e);
        if (mid > a) {
          rt_fused::adamw(pp + a, gp + a, mp + a, vp + a, mid - a, fscale, fclip, decay_mul, b1,
                          omb1, b2, omb2, bc2s, feps, nss);
        }
        if (e > mid) {
          rt_fused::adamw(pp + mid, gp + mid, mp + mid, vp + mid, e - mid, fscale, fclip, 1.0f, b1,
                          omb1, b2, omb2, bc2s, feps, nss);
        }
      }
    });
  });
}

char *rt_sgd(rt_tensor param, rt_tensor grad, rt_tensor momentum_buf, int64_t decay_numel,
             double lr, double momentum, double weight_decay, int nesterov, int64_t step) {
  return guard([&] {
    at::NoGradGuard no_grad;
    at::Tensor &p = T(param), &g0 = T(grad), &buf = T(momentum_buf);
    at::Tensor g = g0;
    if (weight_decay != 0 && decay_numel > 0) {
      g = g0.clone();
      g.narrow(0, 0, decay_numel).add_(p.narrow(0, 0, decay_numel), weight_decay);
    }
    if (momentum != 0) {
      if (step <= 1) {
        buf.copy_(g);
      } else {
        buf.mul_(momentum).add_(g);
      }
      if (nesterov) {
        g = g.add(buf, momentum);
      } else {
        g = buf;
      }
    }
    p.add_(g, -lr);
  });
}

char *rt_clip_grad_norm(rt_tensor grad, double max_norm, double *total_norm) {
  return guard([&] {
    at::NoGradGuard no_grad;
    at::Tensor &g = T(grad);
    double norm = g.norm(2).item<double>();
    *total_norm = norm;
    if (max_norm > 0) {
      double coef = max_norm / (norm + 1e-6);
      if (coef < 1) {
        g.mul_(coef);
      }
    }
  });
}

} // extern "C"

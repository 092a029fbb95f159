// rt.cpp: see rt.h. Built against whichever libtorch scripts/env.sh selects.
#include "rt.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>

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

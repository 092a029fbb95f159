// watch.cpp: see watch.h.
//
// Why post hooks on the gradient accumulators: gotch has no autograd hook
// API, and splitting backward per block would need every architecture's
// forward cut at block boundaries. libtorch's engine runs a leaf's
// AccumulateGrad node once per backward pass, after summing every path into
// it, and calls the node's post hooks right after the in-place add into
// .grad: at that moment the parameter's gradient for the pass is final. It
// is the mechanism PyTorch DDP's C++ reducer uses, and it exists with the
// same signature in libtorch 1.13 and 2.x.
#include "watch.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

// Exported by watch.go.
extern "C" void ringtuneGradReady(uintptr_t handle, int64_t i);

struct rt_watch {
  uintptr_t handle = 0;
  float *host = nullptr;
  std::atomic<bool> armed{false};
  std::vector<at::Tensor> grads;
  std::vector<int64_t> offsets;
  // The accumulators are held strongly so that every forward pass reuses
  // them (a leaf keeps only a weak reference), with the key of our hook.
  // libtorch 1.13 returns a std::shared_ptr, 2.14 a c10::intrusive_ptr.
  using AccPtr =
      decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor &>()));
  std::vector<AccPtr> accs;
  std::vector<uintptr_t> keys;

  void copy(int64_t i) {
    const at::Tensor &g = grads[i];
    if (host == nullptr || g.numel() == 0) {
      return;
    }
    at::NoGradGuard no_grad;
    at::Tensor dst = at::from_blob(host + offsets[i], g.sizes(),
                                   at::TensorOptions().dtype(at::kFloat).device(at::kCPU));
    dst.copy_(g);
  }
};

namespace {

char *dup_msg(const char *msg) {
  size_t n = strlen(msg);
  char *p = static_cast<char *>(malloc(n + 1));
  if (p != nullptr) {
    memcpy(p, msg, n + 1);
  }
  return p;
}

struct ReadyHook : torch::autograd::FunctionPostHook {
  rt_watch *w;
  int64_t i;
  ReadyHook(rt_watch *w, int64_t i) : w(w), i(i) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list &outputs,
                                            const torch::autograd::variable_list &) override {
    if (w->armed.load(std::memory_order_acquire)) {
      w->copy(i); // a failed copy throws, and backward reports it
      ringtuneGradReady(w->handle, i);
    }
    return outputs;
  }
};

void unhook(rt_watch *w) {
  for (size_t i = 0; i < w->accs.size(); i++) {
    w->accs[i]->del_post_hook(w->keys[i]);
  }
  w->accs.clear();
  w->keys.clear();
}

} // namespace

extern "C" {

char *rt_watch_new(rt_watch **out, void *const *params, void *const *grads, const int64_t *offsets,
                   int64_t n, uintptr_t handle, float *host) {
  auto *w = new rt_watch();
  w->handle = handle;
  w->host = host;
  try {
    for (int64_t i = 0; i < n; i++) {
      const at::Tensor &p = *static_cast<at::Tensor *>(params[i]);
      if (!p.is_leaf() || !p.requires_grad()) {
        throw std::invalid_argument("parameter " + std::to_string(i) +
                                    " is not a leaf that requires grad");
      }
      rt_watch::AccPtr acc = torch::autograd::impl::grad_accumulator(p);
      if (!acc) {
        throw std::runtime_error("parameter " + std::to_string(i) + " has no gradient accumulator");
      }
      w->grads.push_back(*static_cast<at::Tensor *>(grads[i]));
      w->offsets.push_back(offsets[i]);
      uintptr_t key = acc->add_post_hook(std::make_unique<ReadyHook>(w, i));
      w->accs.push_back(std::move(acc));
      w->keys.push_back(key);
    }
  } catch (const c10::Error &e) {
    unhook(w);
    delete w;
    return dup_msg(e.what_without_backtrace());
  } catch (const std::exception &e) {
    unhook(w);
    delete w;
    return dup_msg(e.what());
  }
  *out = w;
  return nullptr;
}

void rt_watch_arm(rt_watch *w, int on) { w->armed.store(on != 0, std::memory_order_release); }

char *rt_watch_copy(rt_watch *w, int64_t i) {
  try {
    w->copy(i);
  } catch (const c10::Error &e) {
    return dup_msg(e.what_without_backtrace());
  } catch (const std::exception &e) {
    return dup_msg(e.what());
  }
  return nullptr;
}

void rt_watch_free(rt_watch *w) {
  if (w == nullptr) {
    return;
  }
  unhook(w);
  delete w;
}

} // extern "C"

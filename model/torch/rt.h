// rt.h: ringtune's own C entry points into libtorch, for what gotch's C API
// lacks or gets wrong (leaks, missing wrappers). Every function that can fail
// returns NULL on success or a malloc'ed message the caller frees.
#ifndef RINGTUNE_RT_H
#define RINGTUNE_RT_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

typedef void *rt_tensor;

const char *rt_version(void);
int rt_cuda_device_count(void);
char *rt_manual_seed(int64_t seed);
char *rt_set_num_threads(int n);
int rt_get_num_threads(void);

// Makes grad the .grad of param (a view into a flat gradient block), so that
// backward accumulates straight into the block.
char *rt_set_grad(rt_tensor param, rt_tensor grad);
// Out-of-place GELU; approximate != 0 uses the tanh form.
char *rt_gelu(rt_tensor *out, rt_tensor x, int approximate);
// Dropout in training mode, as at::dropout(x, p, true): x times a noise
// tensor of 0 and 1/(1-p). On CPU float32 the noise comes from
// rt_fused::dropout_mask, seeded by one draw of libtorch's default CPU
// generator (so torch::manual_seed still decides it), instead of libtorch
// 1.13's per-element Bernoulli draws without MKL, which cost ~10% of a
// BERT training step; elsewhere it is at::dropout.
char *rt_dropout(rt_tensor *out, rt_tensor x, double p);
// Tensor from raw host bytes (copied), of gotch dtype kind and device.
char *rt_from_bytes(rt_tensor *out, const void *data, const int64_t *dims, int ndims,
                    int kind, int device);
// Copies a tensor's elements (any device, made contiguous) into host memory
// of exactly nbytes.
char *rt_to_bytes(rt_tensor t, void *dst, int64_t nbytes);
// Copies nbytes of host memory into a contiguous tensor of the same size.
char *rt_from_host(rt_tensor t, const void *src, int64_t nbytes);
// AdamW with torch.optim.AdamW's single-tensor semantics on flat blocks; only
// the first decay_numel elements get weight decay.
char *rt_adamw(rt_tensor param, rt_tensor grad, rt_tensor exp_avg, rt_tensor exp_avg_sq,
               int64_t decay_numel, double lr, double beta1, double beta2, double eps,
               double weight_decay, int64_t step);
// One whole AdamW step on flat blocks: grad *= gscale; when max_norm > 0,
// clip grad to global L2 norm max_norm (torch.nn.utils.clip_grad_norm_);
// rt_adamw's update; grad = 0. On CPU float32 blocks that is one fused pass
// (two with clipping: the norm must be known before the update) instead of
// about twenty-five passes and three temporaries. Stores the sum of squares
// of the scaled gradient, before clipping, in *grad_sumsq.
char *rt_adamw_step(rt_tensor param, rt_tensor grad, rt_tensor exp_avg, rt_tensor exp_avg_sq,
                    int64_t decay_numel, double gscale, double max_norm, double lr, double beta1,
                    double beta2, double eps, double weight_decay, int64_t step,
                    double *grad_sumsq);
// The slice form of rt_adamw_step for a sharded optimizer (ZeRO-1): the
// update of the elements [lo, lo+n) of param and grad, n being the length
// of exp_avg and exp_avg_sq (which hold that slice's moments only), with the
// clipping coefficient clip (min(1, max_norm/(norm+1e-6)), or 1) already
// computed from the global norm. decay_numel stays an index of the whole
// block. grad[lo, lo+n) is zeroed; the rest of grad is left alone.
char *rt_adamw_slice(rt_tensor param, rt_tensor grad, rt_tensor exp_avg, rt_tensor exp_avg_sq,
                     int64_t lo, int64_t decay_numel, double gscale, double clip, double lr,
                     double beta1, double beta2, double eps, double weight_decay, int64_t step);
// Sum of squares of grad[lo, lo+n)*gscale, in double, in fixed blocks from
// lo (independent of the thread count).
char *rt_sumsq_slice(rt_tensor grad, int64_t lo, int64_t n, double gscale, double *out);
// SGD with torch.optim.SGD's semantics (momentum, dampening 0, coupled
// weight decay on the first decay_numel elements, optional Nesterov).
char *rt_sgd(rt_tensor param, rt_tensor grad, rt_tensor momentum_buf, int64_t decay_numel,
             double lr, double momentum, double weight_decay, int nesterov, int64_t step);
// Global L2 norm of a flat gradient; scales it in place to max_norm when
// larger (torch.nn.utils.clip_grad_norm_ semantics). max_norm <= 0 only
// measures.
char *rt_clip_grad_norm(rt_tensor grad, double max_norm, double *total_norm);

#ifdef __cplusplus
}
#endif
#endif

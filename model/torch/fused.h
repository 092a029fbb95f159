// fused.h: the element loops of the fused optimizer step (fused.cpp),
// free of libtorch so that they compile fast and can be checked for
// vectorisation on their own (g++ -O2 -fopt-info-vec fused.cpp). rt.cpp
// splits the flat blocks and runs these loops on libtorch's thread pool.
#ifndef RINGTUNE_FUSED_H
#define RINGTUNE_FUSED_H
#include <stdint.h>

namespace rt_fused {

// Sum of (g[i]*gscale)^2 over n elements, in double. The products are
// summed in eight double lanes and the lanes added in a fixed order at the
// end, so the result depends only on n and the data (not on threads), and
// the loop vectorises without -ffast-math.
double sumsq_scaled(const float *g, int64_t n, float gscale);

// One AdamW update over n elements, the same float operations in the same
// order as torch.optim.AdamW's single-tensor step after
// torch.nn.utils.clip_grad_norm_:
//   g' = (g*gscale)*clip            (clip = 1 when not clipping)
//   p  = p*decay_mul                (1 - lr*weight_decay, or 1)
//   m  = m*b1 + (1-b1)*g'
//   v  = v*b2 + (1-b2)*g'*g'
//   p  = p + neg_step_size * (m / (sqrt(v)/bc2_sqrt + eps))
// and g = 0 (the zero-grad of the next step), all in one pass: the step is
// bound by memory bandwidth, so one sweep over four arrays instead of the
// twenty-odd sweeps (and three temporaries) of the tensor-op form is what
// makes it fast.
void adamw(float *__restrict p, float *__restrict g, float *__restrict m, float *__restrict v,
           int64_t n, float gscale, float clip, float decay_mul, float b1, float one_minus_b1,
           float b2, float one_minus_b2, float bc2_sqrt, float eps, float neg_step_size);

// Dropout's scaled keep mask over n elements: out[i] = scale with
// probability 1-p, else 0 (scale = 1/(1-p) in float, as
// torch.nn.functional.dropout's noise). The bits come from xoshiro256**
// (Blackman and Vigna), one 64-bit draw per two elements, each compared
// as a 32-bit uniform against p·2^32; a block of kDropoutBlock elements
// starting at first (a multiple of it) is seeded from seed and the
// block's index alone, so the mask does not depend on how blocks are
// shared among threads.
constexpr int64_t kDropoutBlock = 1 << 16;
void dropout_mask(float *out, int64_t first, int64_t n, double p, uint64_t seed);

} // namespace rt_fused
#endif

// fused.cpp: see fused.h. Only plain loops here, no libtorch.
//
// O3 vectorises the norm loop (O2 in GCC 12 vectorises only the cheapest
// cases) without changing its float results: no reassociation, no
// fast-math. The AdamW loop is written with SSE2 intrinsics on x86-64,
// because GCC will not vectorise std::sqrt without -fno-math-errno, which
// cgo refuses in #cgo flags; SSE2 is in every x86-64 CPU, so the build needs
// no -march, and 4 floats per instruction is enough for a loop bound by
// memory bandwidth. Each lane does the scalar loop's IEEE operations in the
// same order (no FMA contraction: SSE2 has none), so both give bit-identical
// results.
#include "fused.h"

#include <cmath>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

// After the includes: GCC's intrinsics headers break under an earlier
// optimize pragma.
#pragma GCC optimize("O3")

namespace rt_fused {

double sumsq_scaled(const float *g, int64_t n, float gscale) {
  constexpr int kLanes = 8;
  double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; j++) {
      const float x = g[i + j] * gscale;
      acc[j] += static_cast<double>(x) * static_cast<double>(x);
    }
  }
  for (int j = 0; i < n; i++, j++) {
    const float x = g[i] * gscale;
    acc[j] += static_cast<double>(x) * static_cast<double>(x);
  }
  double s = 0;
  for (int j = 0; j < kLanes; j++) {
    s += acc[j];
  }
  return s;
}

void adamw(float *__restrict p, float *__restrict g, float *__restrict m, float *__restrict v,
           int64_t n, float gscale, float clip, float decay_mul, float b1, float one_minus_b1,
           float b2, float one_minus_b2, float bc2_sqrt, float eps, float neg_step_size) {
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 vgscale = _mm_set1_ps(gscale), vclip = _mm_set1_ps(clip),
               vdecay = _mm_set1_ps(decay_mul), vb1 = _mm_set1_ps(b1),
               vomb1 = _mm_set1_ps(one_minus_b1), vb2 = _mm_set1_ps(b2),
               vomb2 = _mm_set1_ps(one_minus_b2), vbc2 = _mm_set1_ps(bc2_sqrt),
               veps = _mm_set1_ps(eps), vnss = _mm_set1_ps(neg_step_size), zero = _mm_setzero_ps();
  for (; i + 4 <= n; i += 4) {
    const __m128 gi = _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(g + i), vgscale), vclip);
    const __m128 pi = _mm_mul_ps(_mm_loadu_ps(p + i), vdecay);
    const __m128 mi = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(m + i), vb1), _mm_mul_ps(vomb1, gi));
    const __m128 vi =
        _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(v + i), vb2), _mm_mul_ps(vomb2, _mm_mul_ps(gi, gi)));
    _mm_storeu_ps(m + i, mi);
    _mm_storeu_ps(v + i, vi);
    const __m128 denom = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vi), vbc2), veps);
    _mm_storeu_ps(p + i, _mm_add_ps(pi, _mm_mul_ps(vnss, _mm_div_ps(mi, denom))));
    _mm_storeu_ps(g + i, zero);
  }
#endif
  for (; i < n; i++) {
    const float gi = (g[i] * gscale) * clip;
    const float pi = p[i] * decay_mul;
    const float mi = m[i] * b1 + one_minus_b1 * gi;
    const float vi = v[i] * b2 + one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi + neg_step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
    g[i] = 0;
  }
}

namespace {

// splitmix64: expands one seed into xoshiro's 256-bit state (its authors'
// recommended seeding; never all zero).
uint64_t splitmix64(uint64_t &x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

} // namespace

void dropout_mask(float *out, int64_t first, int64_t n, double p, uint64_t seed) {
  // keep when the 32-bit uniform u >= drop, i.e. with probability
  // 1 - drop/2^32 (drop rounded to the nearest integer: off p by < 2^-33).
  const uint64_t drop64 = static_cast<uint64_t>(std::llround(p * 4294967296.0));
  const float scale = 1.0f / static_cast<float>(1.0 - p);
  for (int64_t lo = 0; lo < n; lo += kDropoutBlock) {
    uint64_t x = seed ^ (static_cast<uint64_t>((first + lo) / kDropoutBlock) * 0xd1342543de82ef95ULL);
    uint64_t s0 = splitmix64(x), s1 = splitmix64(x), s2 = splitmix64(x), s3 = splitmix64(x);
    const int64_t hi = lo + kDropoutBlock < n ? lo + kDropoutBlock : n;
    for (int64_t i = lo; i < hi; i += 2) {
      const uint64_t r = rotl(s1 * 5, 7) * 9; // xoshiro256**
      const uint64_t t = s1 << 17;
      s2 ^= s0;
      s3 ^= s1;
      s1 ^= s2;
      s0 ^= s3;
      s2 ^= t;
      s3 = rotl(s3, 45);
      out[i] = (r & 0xffffffffULL) >= drop64 ? scale : 0.0f;
      if (i + 1 < hi) {
        out[i + 1] = (r >> 32) >= drop64 ? scale : 0.0f;
      }
    }
  }
}

} // namespace rt_fused

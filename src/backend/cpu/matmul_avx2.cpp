// AVX2/FMA/F16C matmul kernels (this file is compiled with -mavx2 -mfma -mf16c; only called when the CPU
// has them). bf16 -> f32 is a zero-extend and a 16-bit left shift; f16 -> f32 is F16C's vcvtph2ps.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/matmul_internal.h"

namespace doppler::cpu::detail {
namespace {

// Storage type and conversions (8 weights -> __m256, one weight -> float) of each weight dtype.
template <DType T>
struct W;
template <>
struct W<DType::F32> {
  using S = float;
  static __m256 load8(const S* p) { return _mm256_loadu_ps(p); }
  static float f(S v) { return v; }
};
template <>
struct W<DType::BF16> {
  using S = uint16_t;
  static __m256 load8(const S* p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static float f(S v) { return bf16ToF32(v); }
};
template <>
struct W<DType::F16> {
  using S = uint16_t;
  static __m256 load8(const S* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static float f(S v) { return _cvtsh_ss(v); }
};

// Software prefetch into L1 of the next group of weight rows (see the GEMV kernels).
constexpr auto kPrefetchHint = _MM_HINT_T0;
constexpr bool kPrefetch = true;
// Input rows per pass over the y tile in the bf16 column GEMV (8 measured ~10% faster than 4 in cache).
constexpr int kColRows = 8;

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Horizontal sums of four vectors: {sum(a), sum(b), sum(c), sum(d)}.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// ---- GEMV, row layout: 4 rows at a time share each x load; 2 accumulators per row (16 weights a step).
template <DType T>
void gemvRowT(const float* x, int64_t in, const void* w, int64_t o0, int64_t o1, const float* bias, float* y) {
  using S = typename W<T>::S;
  const S* wb = static_cast<const S*>(w);
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {
    const S* r0 = wb + o * in;  // [in] each
    const S* r1 = r0 + in;
    const S* r2 = r1 + in;
    const S* r3 = r2 + in;
    // Software prefetch of the next 4 rows at the same offsets: rows are often a single 4 KiB page, and
    // the hardware prefetchers restart at every page.
    const char* pf = reinterpret_cast<const char*>(o + 8 <= o1 ? r0 + 4 * in : r0);
    const int64_t rowBytes = in * int64_t(sizeof(S));
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    int64_t k = 0;
    for (; k + 16 <= in; k += 16) {
      if (kPrefetch && (sizeof(S) == 4 || (k & 16) == 0)) {
        const char* q = pf + k * int64_t(sizeof(S));
        _mm_prefetch(q, kPrefetchHint);
        _mm_prefetch(q + rowBytes, kPrefetchHint);
        _mm_prefetch(q + 2 * rowBytes, kPrefetchHint);
        _mm_prefetch(q + 3 * rowBytes, kPrefetchHint);
      }
      const __m256 xl = _mm256_loadu_ps(x + k), xh = _mm256_loadu_ps(x + k + 8);
      a0 = _mm256_fmadd_ps(W<T>::load8(r0 + k), xl, a0);
      b0 = _mm256_fmadd_ps(W<T>::load8(r0 + k + 8), xh, b0);
      a1 = _mm256_fmadd_ps(W<T>::load8(r1 + k), xl, a1);
      b1 = _mm256_fmadd_ps(W<T>::load8(r1 + k + 8), xh, b1);
      a2 = _mm256_fmadd_ps(W<T>::load8(r2 + k), xl, a2);
      b2 = _mm256_fmadd_ps(W<T>::load8(r2 + k + 8), xh, b2);
      a3 = _mm256_fmadd_ps(W<T>::load8(r3 + k), xl, a3);
      b3 = _mm256_fmadd_ps(W<T>::load8(r3 + k + 8), xh, b3);
    }
    if (k + 8 <= in) {
      const __m256 xl = _mm256_loadu_ps(x + k);
      a0 = _mm256_fmadd_ps(W<T>::load8(r0 + k), xl, a0);
      a1 = _mm256_fmadd_ps(W<T>::load8(r1 + k), xl, a1);
      a2 = _mm256_fmadd_ps(W<T>::load8(r2 + k), xl, a2);
      a3 = _mm256_fmadd_ps(W<T>::load8(r3 + k), xl, a3);
      k += 8;
    }
    alignas(16) float s[4];
    _mm_store_ps(s, hsum4(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1), _mm256_add_ps(a2, b2),
                          _mm256_add_ps(a3, b3)));
    for (; k < in; k++) {
      const float xv = x[k];
      s[0] += xv * W<T>::f(r0[k]);
      s[1] += xv * W<T>::f(r1[k]);
      s[2] += xv * W<T>::f(r2[k]);
      s[3] += xv * W<T>::f(r3[k]);
    }
    for (int r = 0; r < 4; r++) y[o + r] = s[r] + (bias ? bias[o + r] : 0.0f);
  }
  for (; o < o1; o++) {
    const S* r0 = wb + o * in;
    __m256 a0 = _mm256_setzero_ps(), b0 = a0;
    int64_t k = 0;
    for (; k + 16 <= in; k += 16) {
      a0 = _mm256_fmadd_ps(W<T>::load8(r0 + k), _mm256_loadu_ps(x + k), a0);
      b0 = _mm256_fmadd_ps(W<T>::load8(r0 + k + 8), _mm256_loadu_ps(x + k + 8), b0);
    }
    if (k + 8 <= in) {
      a0 = _mm256_fmadd_ps(W<T>::load8(r0 + k), _mm256_loadu_ps(x + k), a0);
      k += 8;
    }
    float s = hsum(_mm256_add_ps(a0, b0));
    for (; k < in; k++) s += x[k] * W<T>::f(r0[k]);
    y[o] = s + (bias ? bias[o] : 0.0f);
  }
}

// ---- GEMV, column layout: y[o0:o1] += x[i] * Wt[i, o0:o1], in tiles of y that stay in L1 while 4 input
// rows at a time stream past them.
template <DType T>
void gemvColT(const float* x, int64_t in, const void* w, int64_t out, int64_t o0, int64_t o1, const float* bias,
              float* y) {
  using S = typename W<T>::S;
  const S* wb = static_cast<const S*>(w);  // [in, out]
  for (int64_t o = o0; o < o1; o++) y[o] = bias ? bias[o] : 0.0f;
  constexpr int64_t kTile = 2048;
  for (int64_t t0 = o0; t0 < o1; t0 += kTile) {
    const int64_t t1 = std::min(o1, t0 + kTile);
    const int64_t tv = t0 + (t1 - t0) / 16 * 16;  // end of the vectorised part
    int64_t i = 0;
    for (; i + 4 <= in; i += 4) {
      const S* r0 = wb + i * out;
      const S* r1 = r0 + out;
      const S* r2 = r1 + out;
      const S* r3 = r2 + out;
      const __m256 x0 = _mm256_set1_ps(x[i]), x1 = _mm256_set1_ps(x[i + 1]);
      const __m256 x2 = _mm256_set1_ps(x[i + 2]), x3 = _mm256_set1_ps(x[i + 3]);
      const char* pf = reinterpret_cast<const char*>(i + 8 <= in ? r0 + 4 * out : r0);  // next 4 rows
      const int64_t rowBytes = out * int64_t(sizeof(S));
      for (int64_t o = t0; o < tv; o += 16) {
        if (kPrefetch && (sizeof(S) == 4 || ((o - t0) & 16) == 0)) {
          const char* q = pf + o * int64_t(sizeof(S));
          _mm_prefetch(q, kPrefetchHint);
          _mm_prefetch(q + rowBytes, kPrefetchHint);
          _mm_prefetch(q + 2 * rowBytes, kPrefetchHint);
          _mm_prefetch(q + 3 * rowBytes, kPrefetchHint);
        }
        __m256 a = _mm256_loadu_ps(y + o), b = _mm256_loadu_ps(y + o + 8);
        a = _mm256_fmadd_ps(x0, W<T>::load8(r0 + o), a);
        b = _mm256_fmadd_ps(x0, W<T>::load8(r0 + o + 8), b);
        a = _mm256_fmadd_ps(x1, W<T>::load8(r1 + o), a);
        b = _mm256_fmadd_ps(x1, W<T>::load8(r1 + o + 8), b);
        a = _mm256_fmadd_ps(x2, W<T>::load8(r2 + o), a);
        b = _mm256_fmadd_ps(x2, W<T>::load8(r2 + o + 8), b);
        a = _mm256_fmadd_ps(x3, W<T>::load8(r3 + o), a);
        b = _mm256_fmadd_ps(x3, W<T>::load8(r3 + o + 8), b);
        _mm256_storeu_ps(y + o, a);
        _mm256_storeu_ps(y + o + 8, b);
      }
      for (int64_t o = tv; o < t1; o++)
        y[o] += x[i] * W<T>::f(r0[o]) + x[i + 1] * W<T>::f(r1[o]) + x[i + 2] * W<T>::f(r2[o]) +
                x[i + 3] * W<T>::f(r3[o]);
    }
    for (; i < in; i++) {
      const S* r0 = wb + i * out;
      const __m256 x0 = _mm256_set1_ps(x[i]);
      for (int64_t o = t0; o < tv; o += 16) {
        _mm256_storeu_ps(y + o, _mm256_fmadd_ps(x0, W<T>::load8(r0 + o), _mm256_loadu_ps(y + o)));
        _mm256_storeu_ps(y + o + 8, _mm256_fmadd_ps(x0, W<T>::load8(r0 + o + 8), _mm256_loadu_ps(y + o + 8)));
      }
      for (int64_t o = tv; o < t1; o++) y[o] += x[i] * W<T>::f(r0[o]);
    }
  }
}

// ---- bf16 GEMV without widening shuffles: a 256-bit load holds 16 bf16 as 8 u32 lanes; lane j has element
// 2j in its low half and 2j+1 in its high half. `v << 16` is the even elements as f32 and `v & 0xffff0000`
// the odd ones, so each 16 weights cost one load and two integer ops. The other operand is permuted to match
// (x for the row layout; the y tile for the column layout).
inline __m256 bf16Even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
inline __m256 bf16Odd(__m256i v, __m256i hiMask) { return _mm256_castsi256_ps(_mm256_and_si256(v, hiMask)); }
inline __m256i load16(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// xp[16b : 16b+8] = x[16b + 0, 2, .., 14], xp[16b+8 : 16b+16] = x[16b + 1, 3, .., 15] for the whole blocks.
void permuteEvenOdd(const float* x, int64_t blocks, float* xp) {
  for (int64_t b = 0; b < blocks; b++) {
    const __m256 lo = _mm256_loadu_ps(x + 16 * b), hi = _mm256_loadu_ps(x + 16 * b + 8);
    // shuffle_ps picks within 128-bit lanes: [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6]; permute4x64 orders it.
    const __m256 ev = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 od = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1));
    _mm256_storeu_ps(xp + 16 * b,
                     _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0))));
    _mm256_storeu_ps(xp + 16 * b + 8,
                     _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(od), _MM_SHUFFLE(3, 1, 2, 0))));
  }
}

// Scratch buffer of at least n floats, 32-byte aligned, one per thread.
float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (int64_t(buf.size()) < n + 8) buf.resize(size_t(n + 8));
  auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 31) & ~uintptr_t(31));
}

void gemvRowBf16(const float* x, int64_t in, const void* w, int64_t o0, int64_t o1, const float* bias,
                 float* y) {
  const uint16_t* wb = static_cast<const uint16_t*>(w);  // [out, in]
  const int64_t blocks = in / 16, kv = blocks * 16;
  float* xp = scratch(kv);  // [kv] x in even/odd order
  permuteEvenOdd(x, blocks, xp);
  const __m256i hiMask = _mm256_set1_epi32(int(0xffff0000u));
  const int64_t rowBytes = in * 2;
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {
    const uint16_t* r0 = wb + o * in;  // [in] each
    const uint16_t* r1 = r0 + in;
    const uint16_t* r2 = r1 + in;
    const uint16_t* r3 = r2 + in;
    // Prefetch the next 4 rows at the same offsets: a row is often a single 4 KiB page, and the hardware
    // prefetchers restart at every page.
    const char* pf = reinterpret_cast<const char*>(o + 8 <= o1 ? r0 + 4 * in : r0);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t k = 0; k < kv; k += 16) {
      if (kPrefetch && (k & 16) == 0) {
        const char* q = pf + k * 2;
        _mm_prefetch(q, kPrefetchHint);
        _mm_prefetch(q + rowBytes, kPrefetchHint);
        _mm_prefetch(q + 2 * rowBytes, kPrefetchHint);
        _mm_prefetch(q + 3 * rowBytes, kPrefetchHint);
      }
      const __m256 xe = _mm256_load_ps(xp + k), xo = _mm256_load_ps(xp + k + 8);
      const __m256i v0 = load16(r0 + k), v1 = load16(r1 + k), v2 = load16(r2 + k), v3 = load16(r3 + k);
      a0 = _mm256_fmadd_ps(bf16Even(v0), xe, a0);
      b0 = _mm256_fmadd_ps(bf16Odd(v0, hiMask), xo, b0);
      a1 = _mm256_fmadd_ps(bf16Even(v1), xe, a1);
      b1 = _mm256_fmadd_ps(bf16Odd(v1, hiMask), xo, b1);
      a2 = _mm256_fmadd_ps(bf16Even(v2), xe, a2);
      b2 = _mm256_fmadd_ps(bf16Odd(v2, hiMask), xo, b2);
      a3 = _mm256_fmadd_ps(bf16Even(v3), xe, a3);
      b3 = _mm256_fmadd_ps(bf16Odd(v3, hiMask), xo, b3);
    }
    alignas(16) float s[4];
    _mm_store_ps(s, hsum4(_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1), _mm256_add_ps(a2, b2),
                          _mm256_add_ps(a3, b3)));
    for (int64_t k = kv; k < in; k++) {
      const float xv = x[k];
      s[0] += xv * bf16ToF32(r0[k]);
      s[1] += xv * bf16ToF32(r1[k]);
      s[2] += xv * bf16ToF32(r2[k]);
      s[3] += xv * bf16ToF32(r3[k]);
    }
    for (int r = 0; r < 4; r++) y[o + r] = s[r] + (bias ? bias[o + r] : 0.0f);
  }
  for (; o < o1; o++) {
    const uint16_t* r0 = wb + o * in;
    __m256 a0 = _mm256_setzero_ps(), b0 = a0;
    for (int64_t k = 0; k < kv; k += 16) {
      const __m256i v0 = load16(r0 + k);
      a0 = _mm256_fmadd_ps(bf16Even(v0), _mm256_load_ps(xp + k), a0);
      b0 = _mm256_fmadd_ps(bf16Odd(v0, hiMask), _mm256_load_ps(xp + k + 8), b0);
    }
    float s = hsum(_mm256_add_ps(a0, b0));
    for (int64_t k = kv; k < in; k++) s += x[k] * bf16ToF32(r0[k]);
    y[o] = s + (bias ? bias[o] : 0.0f);
  }
}

// Column layout, bf16: the y tile is accumulated in even/odd order in a local buffer and un-permuted at the
// end; R input rows per pass over the tile.
template <int R>
void gemvColBf16(const float* x, int64_t in, const void* w, int64_t out, int64_t o0, int64_t o1,
                 const float* bias, float* y) {
  const uint16_t* wb = static_cast<const uint16_t*>(w);  // [in, out]
  const __m256i hiMask = _mm256_set1_epi32(int(0xffff0000u));
  const int64_t rowBytes = out * 2;
  constexpr int64_t kTile = 2048;
  alignas(32) float acc[kTile];  // [tile] in even/odd order per block of 16
  for (int64_t t0 = o0; t0 < o1; t0 += kTile) {
    const int64_t t1 = std::min(o1, t0 + kTile);
    const int64_t tw = (t1 - t0) / 16 * 16;  // vectorised width; the rest is scalar
    std::fill(acc, acc + tw, 0.0f);
    for (int64_t o = t0 + tw; o < t1; o++) y[o] = bias ? bias[o] : 0.0f;
    int64_t i = 0;
    for (; i + R <= in; i += R) {
      const uint16_t* r0 = wb + i * out + t0;  // R rows of [tw], stride out
      __m256 xv[R];
      for (int r = 0; r < R; r++) xv[r] = _mm256_set1_ps(x[i + r]);
      const char* pf = reinterpret_cast<const char*>(i + 2 * R <= in ? r0 + R * out : r0);  // next R rows
      for (int64_t o = 0; o < tw; o += 16) {
        if (kPrefetch && (o & 16) == 0)
          for (int r = 0; r < R; r++) _mm_prefetch(pf + r * rowBytes + o * 2, kPrefetchHint);
        __m256 a = _mm256_load_ps(acc + o), b = _mm256_load_ps(acc + o + 8);
        for (int r = 0; r < R; r++) {
          const __m256i v = load16(r0 + r * out + o);
          a = _mm256_fmadd_ps(xv[r], bf16Even(v), a);
          b = _mm256_fmadd_ps(xv[r], bf16Odd(v, hiMask), b);
        }
        _mm256_store_ps(acc + o, a);
        _mm256_store_ps(acc + o + 8, b);
      }
      for (int64_t o = t0 + tw; o < t1; o++)
        for (int r = 0; r < R; r++) y[o] += x[i + r] * bf16ToF32(wb[(i + r) * out + o]);
    }
    for (; i < in; i++) {
      const uint16_t* r0 = wb + i * out + t0;
      const __m256 xv = _mm256_set1_ps(x[i]);
      for (int64_t o = 0; o < tw; o += 16) {
        const __m256i v = load16(r0 + o);
        _mm256_store_ps(acc + o, _mm256_fmadd_ps(xv, bf16Even(v), _mm256_load_ps(acc + o)));
        _mm256_store_ps(acc + o + 8, _mm256_fmadd_ps(xv, bf16Odd(v, hiMask), _mm256_load_ps(acc + o + 8)));
      }
      for (int64_t o = t0 + tw; o < t1; o++) y[o] += x[i] * bf16ToF32(r0[o - t0]);
    }
    for (int64_t o = 0; o < tw; o += 16) {  // un-permute into y (+ bias)
      float* yo = y + t0 + o;
      for (int j = 0; j < 8; j++) {
        yo[2 * j] = acc[o + j] + (bias ? bias[t0 + o + 2 * j] : 0.0f);
        yo[2 * j + 1] = acc[o + 8 + j] + (bias ? bias[t0 + o + 2 * j + 1] : 0.0f);
      }
    }
  }
}

// ---- GEMM packing: W[o0 : o0+16, k0 : k0+kc] -> panel[k][16] (f32).
inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5, __m256& r6,
                       __m256& r7) {
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

template <DType T>
void packT(const void* w, Layout layout, int64_t in, int64_t out, int64_t o0, int64_t k0, int64_t kc,
           float* panel) {
  using S = typename W<T>::S;
  const S* wb = static_cast<const S*>(w);
  const int valid = int(std::min<int64_t>(kNr, out - o0));
  if (layout == Layout::Column) {
    for (int64_t k = 0; k < kc; k++) {
      const S* src = wb + (k0 + k) * out + o0;  // [valid]
      float* dst = panel + k * kNr;
      if (valid == kNr) {
        _mm256_store_ps(dst, W<T>::load8(src));
        _mm256_store_ps(dst + 8, W<T>::load8(src + 8));
      } else {
        for (int j = 0; j < valid; j++) dst[j] = W<T>::f(src[j]);
        for (int j = valid; j < kNr; j++) dst[j] = 0.0f;
      }
    }
    return;
  }
  // Row layout: 8x8 blocks are converted and transposed in registers.
  const int64_t kv = kc / 8 * 8;
  for (int jb = 0; jb < kNr; jb += 8) {
    if (jb + 8 <= valid) {
      const S* s = wb + (o0 + jb) * in + k0;  // 8 rows of [kc], stride in
      for (int64_t k = 0; k < kv; k += 8) {
        __m256 v0 = W<T>::load8(s + k), v1 = W<T>::load8(s + in + k), v2 = W<T>::load8(s + 2 * in + k);
        __m256 v3 = W<T>::load8(s + 3 * in + k), v4 = W<T>::load8(s + 4 * in + k);
        __m256 v5 = W<T>::load8(s + 5 * in + k), v6 = W<T>::load8(s + 6 * in + k);
        __m256 v7 = W<T>::load8(s + 7 * in + k);
        transpose8(v0, v1, v2, v3, v4, v5, v6, v7);
        float* d = panel + k * kNr + jb;
        _mm256_store_ps(d, v0);
        _mm256_store_ps(d + kNr, v1);
        _mm256_store_ps(d + 2 * kNr, v2);
        _mm256_store_ps(d + 3 * kNr, v3);
        _mm256_store_ps(d + 4 * kNr, v4);
        _mm256_store_ps(d + 5 * kNr, v5);
        _mm256_store_ps(d + 6 * kNr, v6);
        _mm256_store_ps(d + 7 * kNr, v7);
      }
      for (int j = jb; j < jb + 8; j++) {
        const S* src = wb + (o0 + j) * in + k0;
        for (int64_t k = kv; k < kc; k++) panel[k * kNr + j] = W<T>::f(src[k]);
      }
    } else {
      for (int j = jb; j < jb + 8; j++) {
        if (j >= valid) {
          for (int64_t k = 0; k < kc; k++) panel[k * kNr + j] = 0.0f;
          continue;
        }
        const S* src = wb + (o0 + j) * in + k0;
        for (int64_t k = 0; k < kc; k++) panel[k * kNr + j] = W<T>::f(src[k]);
      }
    }
  }
}

// ---- GEMM micro-kernel: MR rows x 16 columns, 2*MR accumulators, two panel loads per k. Written with
// named accumulators (GCC keeps arrays of __m256 on the stack here, at half the speed).
template <int MR>
void microT(int64_t kc, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy) {
  const __m256 z = _mm256_setzero_ps();
  __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
  const float* x0 = x;
  const float* x1 = x + ldx;
  const float* x2 = x + 2 * ldx;
  const float* x3 = x + 3 * ldx;
  const float* x4 = x + 4 * ldx;
  const float* x5 = x + 5 * ldx;
  for (int64_t k = 0; k < kc; k++) {
    const __m256 p0 = _mm256_load_ps(panel + k * kNr), p1 = _mm256_load_ps(panel + k * kNr + 8);
    __m256 a = _mm256_broadcast_ss(x0 + k);
    c00 = _mm256_fmadd_ps(a, p0, c00);
    c01 = _mm256_fmadd_ps(a, p1, c01);
    if constexpr (MR > 1) {
      a = _mm256_broadcast_ss(x1 + k);
      c10 = _mm256_fmadd_ps(a, p0, c10);
      c11 = _mm256_fmadd_ps(a, p1, c11);
    }
    if constexpr (MR > 2) {
      a = _mm256_broadcast_ss(x2 + k);
      c20 = _mm256_fmadd_ps(a, p0, c20);
      c21 = _mm256_fmadd_ps(a, p1, c21);
    }
    if constexpr (MR > 3) {
      a = _mm256_broadcast_ss(x3 + k);
      c30 = _mm256_fmadd_ps(a, p0, c30);
      c31 = _mm256_fmadd_ps(a, p1, c31);
    }
    if constexpr (MR > 4) {
      a = _mm256_broadcast_ss(x4 + k);
      c40 = _mm256_fmadd_ps(a, p0, c40);
      c41 = _mm256_fmadd_ps(a, p1, c41);
    }
    if constexpr (MR > 5) {
      a = _mm256_broadcast_ss(x5 + k);
      c50 = _mm256_fmadd_ps(a, p0, c50);
      c51 = _mm256_fmadd_ps(a, p1, c51);
    }
  }
  auto add = [&](int r, __m256 lo, __m256 hi) {
    float* yr = y + r * ldy;
    _mm256_storeu_ps(yr, _mm256_add_ps(_mm256_loadu_ps(yr), lo));
    _mm256_storeu_ps(yr + 8, _mm256_add_ps(_mm256_loadu_ps(yr + 8), hi));
  };
  add(0, c00, c01);
  if constexpr (MR > 1) add(1, c10, c11);
  if constexpr (MR > 2) add(2, c20, c21);
  if constexpr (MR > 3) add(3, c30, c31);
  if constexpr (MR > 4) add(4, c40, c41);
  if constexpr (MR > 5) add(5, c50, c51);
}

void gemvRow(const float* x, int64_t in, const void* w, DType wt, int64_t o0, int64_t o1, const float* bias,
             float* y) {
  switch (wt) {
    case DType::F32: return gemvRowT<DType::F32>(x, in, w, o0, o1, bias, y);
    case DType::F16: return gemvRowT<DType::F16>(x, in, w, o0, o1, bias, y);
    default: return gemvRowBf16(x, in, w, o0, o1, bias, y);
  }
}

void gemvCol(const float* x, int64_t in, const void* w, DType wt, int64_t out, int64_t o0, int64_t o1,
             const float* bias, float* y) {
  switch (wt) {
    case DType::F32: return gemvColT<DType::F32>(x, in, w, out, o0, o1, bias, y);
    case DType::F16: return gemvColT<DType::F16>(x, in, w, out, o0, o1, bias, y);
    default: return gemvColBf16<kColRows>(x, in, w, out, o0, o1, bias, y);
  }
}

void pack(const void* w, DType wt, Layout layout, int64_t in, int64_t out, int64_t o0, int64_t k0, int64_t kc,
          float* panel) {
  switch (wt) {
    case DType::F32: return packT<DType::F32>(w, layout, in, out, o0, k0, kc, panel);
    case DType::F16: return packT<DType::F16>(w, layout, in, out, o0, k0, kc, panel);
    default: return packT<DType::BF16>(w, layout, in, out, o0, k0, kc, panel);
  }
}

static_assert(kMr == 6 && kNr == 16, "the AVX2 micro-kernels are written for 6x16 tiles");
void micro(int mr, int64_t kc, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy) {
  switch (mr) {
    case 1: return microT<1>(kc, x, ldx, panel, y, ldy);
    case 2: return microT<2>(kc, x, ldx, panel, y, ldy);
    case 3: return microT<3>(kc, x, ldx, panel, y, ldy);
    case 4: return microT<4>(kc, x, ldx, panel, y, ldy);
    case 5: return microT<5>(kc, x, ldx, panel, y, ldy);
    default: return microT<6>(kc, x, ldx, panel, y, ldy);
  }
}

uint64_t readSum(const uint64_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
  }
  alignas(32) uint64_t l[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(l),
                     _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  uint64_t s = l[0] + l[1] + l[2] + l[3];
  for (; i < n; i++) s += p[i];
  return s;
}

}  // namespace

const Kernels& avx2Kernels() {
  static const Kernels k{"avx2", gemvRow, gemvCol, pack, micro, readSum};
  return k;
}

}  // namespace doppler::cpu::detail

// Portable C++ matmul kernels (no intrinsics; the compiler vectorises with the baseline ISA).
// Same blocking and summation structure as the AVX2 kernels, so both agree up to f32 rounding.
#include <algorithm>
#include <cstring>

#include "backend/cpu/matmul_internal.h"

namespace doppler::cpu::detail {
namespace {

// GCC/Clang vector types of 4 lanes (SSE2 width on x86-64, NEON on ARM, scalarised elsewhere). Kept in
// named variables: arrays of them end up on the stack.
typedef float v4 __attribute__((vector_size(16)));
typedef uint32_t u4 __attribute__((vector_size(16)));
typedef uint16_t h4 __attribute__((vector_size(8)));
inline v4 loadv(const float* p) {
  v4 v;
  std::memcpy(&v, p, 16);
  return v;
}
inline float hsum(v4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }

// Storage type and conversions (one weight -> float, 4 weights -> v4) of each weight dtype.
template <DType T>
struct W;
template <>
struct W<DType::F32> {
  using S = float;
  static float f(S v) { return v; }
  static v4 load4(const S* p) { return loadv(p); }
};
template <>
struct W<DType::BF16> {
  using S = uint16_t;
  static float f(S v) { return bf16ToF32(v); }
  static v4 load4(const S* p) {
    h4 h;
    std::memcpy(&h, p, 8);
    const u4 u = __builtin_convertvector(h, u4) << 16;
    v4 v;
    std::memcpy(&v, &u, 16);
    return v;
  }
};
template <>
struct W<DType::F16> {
  using S = uint16_t;
  static float f(S v) { return halfToFloat(v); }
  // Branch-free halfToFloat on 4 lanes: normal numbers rebias the exponent (+112), inf/NaN rebias twice
  // (exponent 31 -> 255), zero/subnormals are mant * 2^-24 computed exactly in f32.
  static v4 load4(const S* p) {
    h4 h;
    std::memcpy(&h, p, 8);
    const u4 u = __builtin_convertvector(h, u4);
    const u4 em = u & 0x7fffu, sign = (u & 0x8000u) << 16;
    const u4 normal = (em << 13) + (112u << 23) + ((em >= 0x7c00u) & (112u << 23));
    typedef int32_t i4 __attribute__((vector_size(16)));
    const v4 subf = __builtin_convertvector(i4(em), v4) * 0x1p-24f;  // em < 2^15: the signed conversion is exact
    u4 sub;
    std::memcpy(&sub, &subf, 16);
    const u4 isSub = u4(em < 0x400u);  // all-ones lanes where subnormal / zero
    const u4 bits = sign | (sub & isSub) | (normal & ~isSub);
    v4 v;
    std::memcpy(&v, &bits, 16);
    return v;
  }
};

// GEMV, row layout: 4 rows share each load of x; 8 partial sums per row (as in the AVX2 kernel).
template <DType T>
void gemvRowT(const float* x, int64_t in, const void* w, int64_t o0, int64_t o1, const float* bias, float* y) {
  using S = typename W<T>::S;
  using L = W<T>;
  const S* wb = static_cast<const S*>(w);
  const int64_t kv = in / 8 * 8;
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {
    const S* r0 = wb + o * in;  // [in] each
    const S* r1 = r0 + in;
    const S* r2 = r1 + in;
    const S* r3 = r2 + in;
    v4 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
    for (int64_t k = 0; k < kv; k += 8) {
      const v4 xl = loadv(x + k), xh = loadv(x + k + 4);
      a0 += xl * L::load4(r0 + k);
      b0 += xh * L::load4(r0 + k + 4);
      a1 += xl * L::load4(r1 + k);
      b1 += xh * L::load4(r1 + k + 4);
      a2 += xl * L::load4(r2 + k);
      b2 += xh * L::load4(r2 + k + 4);
      a3 += xl * L::load4(r3 + k);
      b3 += xh * L::load4(r3 + k + 4);
    }
    float s0 = hsum(a0 + b0), s1 = hsum(a1 + b1), s2 = hsum(a2 + b2), s3 = hsum(a3 + b3);
    for (int64_t k = kv; k < in; k++) {
      const float xv = x[k];
      s0 += xv * L::f(r0[k]);
      s1 += xv * L::f(r1[k]);
      s2 += xv * L::f(r2[k]);
      s3 += xv * L::f(r3[k]);
    }
    y[o] = s0 + (bias ? bias[o] : 0.0f);
    y[o + 1] = s1 + (bias ? bias[o + 1] : 0.0f);
    y[o + 2] = s2 + (bias ? bias[o + 2] : 0.0f);
    y[o + 3] = s3 + (bias ? bias[o + 3] : 0.0f);
  }
  for (; o < o1; o++) {
    const S* r0 = wb + o * in;
    v4 a0 = {}, b0 = {};
    for (int64_t k = 0; k < kv; k += 8) {
      a0 += loadv(x + k) * L::load4(r0 + k);
      b0 += loadv(x + k + 4) * L::load4(r0 + k + 4);
    }
    float s0 = hsum(a0 + b0);
    for (int64_t k = kv; k < in; k++) s0 += x[k] * L::f(r0[k]);
    y[o] = s0 + (bias ? bias[o] : 0.0f);
  }
}

template <DType T>
void gemvColT(const float* x, int64_t in, const void* w, int64_t out, int64_t o0, int64_t o1, const float* bias,
              float* y) {
  using S = typename W<T>::S;
  const S* wb = static_cast<const S*>(w);  // [in, out]
  for (int64_t o = o0; o < o1; o++) y[o] = bias ? bias[o] : 0.0f;
  constexpr int64_t kTile = 2048;  // y tile kept in L1 while all input rows stream past it
  for (int64_t t0 = o0; t0 < o1; t0 += kTile) {
    const int64_t t1 = std::min(o1, t0 + kTile);
    int64_t i = 0;
    for (; i + 4 <= in; i += 4) {  // 4 input rows per pass over the y tile
      const S* r0 = wb + i * out;
      const S* r1 = r0 + out;
      const S* r2 = r1 + out;
      const S* r3 = r2 + out;
      const float x0 = x[i], x1 = x[i + 1], x2 = x[i + 2], x3 = x[i + 3];
      int64_t o = t0;
      // GCC vectorises the scalar loop below well for f32 and bf16; f16 needs the explicit vector form.
      if constexpr (T == DType::F16)
        for (; o + 4 <= t1; o += 4) {
          const v4 v = loadv(y + o) + (x0 * W<T>::load4(r0 + o) + x1 * W<T>::load4(r1 + o) +
                                       x2 * W<T>::load4(r2 + o) + x3 * W<T>::load4(r3 + o));
          std::memcpy(y + o, &v, 16);
        }
      for (; o < t1; o++)
        y[o] += x0 * W<T>::f(r0[o]) + x1 * W<T>::f(r1[o]) + x2 * W<T>::f(r2[o]) + x3 * W<T>::f(r3[o]);
    }
    for (; i < in; i++) {
      const S* r0 = wb + i * out;
      const float x0 = x[i];
      for (int64_t o = t0; o < t1; o++) y[o] += x0 * W<T>::f(r0[o]);
    }
  }
}

template <DType T>
void packT(const void* w, Layout layout, int64_t in, int64_t out, int64_t o0, int64_t k0, int64_t kc,
           float* panel) {
  using S = typename W<T>::S;
  const S* wb = static_cast<const S*>(w);
  if (layout == Layout::Row) {
    for (int j = 0; j < kNr; j++) {
      const int64_t o = o0 + j;
      if (o >= out) {
        for (int64_t k = 0; k < kc; k++) panel[k * kNr + j] = 0.0f;
        continue;
      }
      const S* src = wb + o * in + k0;  // [kc]
      for (int64_t k = 0; k < kc; k++) panel[k * kNr + j] = W<T>::f(src[k]);
    }
  } else {
    const int valid = int(std::min<int64_t>(kNr, out - o0));
    for (int64_t k = 0; k < kc; k++) {
      const S* src = wb + (k0 + k) * out + o0;  // [valid]
      float* dst = panel + k * kNr;
      for (int j = 0; j < valid; j++) dst[j] = W<T>::f(src[j]);
      for (int j = valid; j < kNr; j++) dst[j] = 0.0f;
    }
  }
}

// GEMM micro-kernel on R (1 or 2) rows x 16 columns, accumulators in registers.

template <int R>
void microRows(int64_t kc, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy) {
  v4 a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
  for (int64_t k = 0; k < kc; k++) {
    const float* p = panel + k * kNr;
    const v4 p0 = loadv(p), p1 = loadv(p + 4), p2 = loadv(p + 8), p3 = loadv(p + 12);
    const float xa = x[k];
    a0 += xa * p0;
    a1 += xa * p1;
    a2 += xa * p2;
    a3 += xa * p3;
    if constexpr (R > 1) {
      const float xb = x[ldx + k];
      b0 += xb * p0;
      b1 += xb * p1;
      b2 += xb * p2;
      b3 += xb * p3;
    }
  }
  auto add = [](float* yr, v4 c0, v4 c1, v4 c2, v4 c3) {
    std::memcpy(yr, &(c0 += loadv(yr)), 16);
    std::memcpy(yr + 4, &(c1 += loadv(yr + 4)), 16);
    std::memcpy(yr + 8, &(c2 += loadv(yr + 8)), 16);
    std::memcpy(yr + 12, &(c3 += loadv(yr + 12)), 16);
  };
  add(y, a0, a1, a2, a3);
  if constexpr (R > 1) add(y + ldy, b0, b1, b2, b3);
}

void gemvRow(const float* x, int64_t in, const void* w, DType wt, int64_t o0, int64_t o1, const float* bias,
             float* y) {
  switch (wt) {
    case DType::F32: return gemvRowT<DType::F32>(x, in, w, o0, o1, bias, y);
    case DType::F16: return gemvRowT<DType::F16>(x, in, w, o0, o1, bias, y);
    default: return gemvRowT<DType::BF16>(x, in, w, o0, o1, bias, y);
  }
}

void gemvCol(const float* x, int64_t in, const void* w, DType wt, int64_t out, int64_t o0, int64_t o1,
             const float* bias, float* y) {
  switch (wt) {
    case DType::F32: return gemvColT<DType::F32>(x, in, w, out, o0, o1, bias, y);
    case DType::F16: return gemvColT<DType::F16>(x, in, w, out, o0, o1, bias, y);
    default: return gemvColT<DType::BF16>(x, in, w, out, o0, o1, bias, y);
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

void micro(int mr, int64_t kc, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy) {
  int r = 0;
  for (; r + 2 <= mr; r += 2) microRows<2>(kc, x + r * ldx, ldx, panel, y + r * ldy, ldy);
  if (r < mr) microRows<1>(kc, x + r * ldx, ldx, panel, y + r * ldy, ldy);
}

uint64_t readSum(const uint64_t* p, size_t n) {
  uint64_t a[8] = {};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) a[l] += p[i + l];
  for (; i < n; i++) a[0] += p[i];
  uint64_t s = 0;
  for (int l = 0; l < 8; l++) s += a[l];
  return s;
}

}  // namespace

const Kernels& portableKernels() {
  static const Kernels k{"portable", gemvRow, gemvCol, pack, micro, readSum};
  return k;
}

}  // namespace doppler::cpu::detail

// Portable C++ matmul kernels (no intrinsics; the compiler vectorises with the baseline ISA).
// Same blocking and summation structure as the AVX2 kernels, so both agree up to f32 rounding.
#include <algorithm>

#include "backend/cpu/matmul_internal.h"

namespace doppler::cpu::detail {
namespace {

// Storage type and scalar conversion of each weight dtype.
template <DType T>
struct W;
template <>
struct W<DType::F32> {
  using S = float;
  static float f(S v) { return v; }
};
template <>
struct W<DType::BF16> {
  using S = uint16_t;
  static float f(S v) { return bf16ToF32(v); }
};
template <>
struct W<DType::F16> {
  using S = uint16_t;
  static float f(S v) { return halfToFloat(v); }
};

template <DType T>
void gemvRowT(const float* x, int64_t in, const void* w, int64_t o0, int64_t o1, const float* bias, float* y) {
  using S = typename W<T>::S;
  constexpr int L = 8;  // partial sums per row (the AVX2 kernel uses 8 lanes too)
  const S* wb = static_cast<const S*>(w);
  int64_t o = o0;
  for (; o + 4 <= o1; o += 4) {  // 4 rows share each load of x
    const S* r0 = wb + o * in;   // [in] each
    const S* r1 = r0 + in;
    const S* r2 = r1 + in;
    const S* r3 = r2 + in;
    float a0[L] = {}, a1[L] = {}, a2[L] = {}, a3[L] = {};
    int64_t k = 0;
    for (; k + L <= in; k += L) {
      for (int l = 0; l < L; l++) {
        float xv = x[k + l];
        a0[l] += xv * W<T>::f(r0[k + l]);
        a1[l] += xv * W<T>::f(r1[k + l]);
        a2[l] += xv * W<T>::f(r2[k + l]);
        a3[l] += xv * W<T>::f(r3[k + l]);
      }
    }
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int l = 0; l < L; l++) s0 += a0[l], s1 += a1[l], s2 += a2[l], s3 += a3[l];
    for (; k < in; k++) {
      float xv = x[k];
      s0 += xv * W<T>::f(r0[k]);
      s1 += xv * W<T>::f(r1[k]);
      s2 += xv * W<T>::f(r2[k]);
      s3 += xv * W<T>::f(r3[k]);
    }
    y[o] = s0 + (bias ? bias[o] : 0.0f);
    y[o + 1] = s1 + (bias ? bias[o + 1] : 0.0f);
    y[o + 2] = s2 + (bias ? bias[o + 2] : 0.0f);
    y[o + 3] = s3 + (bias ? bias[o + 3] : 0.0f);
  }
  for (; o < o1; o++) {
    const S* r0 = wb + o * in;
    float a0[L] = {};
    int64_t k = 0;
    for (; k + L <= in; k += L)
      for (int l = 0; l < L; l++) a0[l] += x[k + l] * W<T>::f(r0[k + l]);
    float s0 = 0;
    for (int l = 0; l < L; l++) s0 += a0[l];
    for (; k < in; k++) s0 += x[k] * W<T>::f(r0[k]);
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
      for (int64_t o = t0; o < t1; o++)
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

template <int MR>
void microT(int64_t kc, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy) {
  float acc[MR][kNr];
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < kNr; j++) acc[r][j] = y[r * ldy + j];
  for (int64_t k = 0; k < kc; k++) {
    const float* p = panel + k * kNr;
    for (int r = 0; r < MR; r++) {
      const float xv = x[r * ldx + k];
      for (int j = 0; j < kNr; j++) acc[r][j] += xv * p[j];
    }
  }
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < kNr; j++) y[r * ldy + j] = acc[r][j];
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

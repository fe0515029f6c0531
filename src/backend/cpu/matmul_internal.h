// Internals of the CPU matmul (backend/cpu/matmul.h): the kernel table that each instruction-set family
// (portable C++, AVX2/FMA/F16C) fills in, and the blocking constants shared by the drivers in matmul.cpp.
// Kernels trust their arguments; matmul() validates them first.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/tensor.h"

namespace doppler::cpu::detail {

// GEMM register blocking: a micro-kernel computes a [kMr, kNr] tile of y from kMr rows of x and a packed
// f32 weight panel [kc, kNr]. kKc is the depth of a packed panel (a panel is kKc * kNr * 4 = 16 KiB, L1).
inline constexpr int kMr = 6;
inline constexpr int kNr = 16;
inline constexpr int64_t kKc = 256;

struct Kernels {
  const char* name;

  // GEMV, row layout W[out, in]: y[o] = dot(x, W[o, :]) + (bias ? bias[o] : 0) for o in [o0, o1).
  // x: [in], w: [out, in], y: [out] (only [o0, o1) written).
  void (*gemvRow)(const float* x, int64_t in, const void* w, DType wt, int64_t o0, int64_t o1, const float* bias,
                  float* y);

  // GEMV, column layout Wt[in, out]: y[o0:o1] = x · Wt[:, o0:o1] + bias[o0:o1].
  // x: [in], w: [in, out], y: [out] (only [o0, o1) written).
  void (*gemvCol)(const float* x, int64_t in, const void* w, DType wt, int64_t out, int64_t o0, int64_t o1,
                  const float* bias, float* y);

  // Converts the logical block W[o0 : o0+kNr, k0 : k0+kc] to f32 in panel order: panel[k * kNr + j] =
  // W[o0 + j, k0 + k]; rows o0 + j >= out are zero. w: [out, in] (Row) or [in, out] (Column).
  // panel: [kc, kNr], 32-byte aligned.
  void (*packPanel)(const void* w, DType wt, Layout layout, int64_t in, int64_t out, int64_t o0, int64_t k0,
                    int64_t kc, float* panel);

  // y[r, 0:kNr] += sum_k x[r * ldx + k] * panel[k * kNr + 0:kNr] for r < mr (1 <= mr <= kMr).
  // x: [mr, ldx] (kc used), panel: [kc, kNr], y: [mr, ldy] (kNr used).
  void (*micro)(int mr, int64_t kc, const float* x, int64_t ldx, const float* panel, float* y, int64_t ldy);

  // Sum of n 64-bit words (a memory-read probe for the bandwidth measurement); returns a checksum.
  uint64_t (*readSum)(const uint64_t* p, size_t n);
};

const Kernels& portableKernels();
// Only call when the CPU has AVX2, FMA and F16C.
const Kernels& avx2Kernels();

// f16 -> f32 without a table (exact for all 65536 inputs, NaN payloads kept); inline for the portable loops.
inline float halfToFloat(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  uint32_t u;
  if (em >= 0x0400u && em < 0x7c00u) {
    u = sign | ((em << 13) + (112u << 23));  // rebias exponent 15 -> 127
  } else if (em < 0x0400u) {                 // zero / subnormal: mant * 2^-24 is exact in f32
    float f = float(em) * 0x1p-24f;
    std::memcpy(&u, &f, 4);
    u |= sign;
  } else {  // inf / NaN
    u = sign | 0x7f800000u | ((em & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace doppler::cpu::detail

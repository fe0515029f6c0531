// MXFP4 weights on the CPU: OCP microscaling FP4 as gpt-oss ships its experts. A row of W[out, in] is in / 32
// blocks of 17 bytes (core/dtype.h): an E8M0 scale byte e (the block's values are multiplied by 2^(e - 127)),
// then 32 E2M1 codes, two per byte, the even element in the low nibble. The matmul dequantises inside the
// kernel (one block of 32 values at a time), so the weights stay 4.25 bits per value in memory.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace doppler::cpu {

// The value of each E2M1 code: +0, 0.5, 1, 1.5, 2, 3, 4, 6, then the same negated (transformers' FP4_VALUES).
extern const float kE2M1Values[16];

// 2^(e - 127) for an E8M0 scale byte, as torch.ldexp computes it (e = 255 gives +inf).
float e8m0Scale(uint8_t e);

// One 17-byte block -> 32 floats.
void dequantizeMxfp4Block(const uint8_t* block, float* out);

// Row-major MXFP4 W[rows, cols] (cols % 32 == 0) -> f32 out[rows, cols].
void dequantizeMxfp4(const void* w, int64_t rows, int64_t cols, float* out);

// f32 x[rows, cols] -> MXFP4 blocks (rows * cols / 32 * 17 bytes): per block of 32 the scale 2^(floor(log2(amax))
// - 2) (E2M1's largest exponent is 2; OCP MX's rule), each value rounded to the nearest E2M1 value (ties to the
// even code), magnitudes past 6 clamped to 6. For tests and tools.
void quantizeMxfp4(const float* x, int64_t rows, int64_t cols, uint8_t* out);

// y[n, out] = x[n, in] · Wᵀ (+ bias[out]) for W an MXFP4 matrix [out, in] in row layout. x, y row-major f32.
// Error (one line) for another dtype or layout, in % 32 != 0, or y overlapping x.
void matmulMxfp4(const float* x, int64_t n, const WeightView& w, const float* bias, float* y,
                 ThreadPool& pool = ThreadPool::global());

}  // namespace doppler::cpu

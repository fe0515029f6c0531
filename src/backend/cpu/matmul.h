// CPU matrix products with f32 activations and f32/f16/bf16 weights, f32 accumulation.
// Weights follow the nn.Linear convention W[out, in]; `layout` says how W lies in memory (core/tensor.h).
// n == 1 takes the GEMV path (decode), n > 1 the GEMM path (prefill). The kernel is chosen at run time:
// AVX2/FMA when the CPU has them, a portable fallback otherwise (both give the same results up to rounding).
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace doppler::cpu {

// y[n, out] = x[n, in] · Wᵀ (+ bias[out] if bias != nullptr). x, y row-major f32; y must not alias x.
void matmul(const float* x, int64_t n, int64_t in, const void* w, DType wtype, Layout layout, int64_t out,
            const float* bias, float* y, ThreadPool& pool = ThreadPool::global());

inline void matmul(const float* x, int64_t n, const WeightView& w, const float* bias, float* y,
                   ThreadPool& pool = ThreadPool::global()) {
  matmul(x, n, w.cols(), w.data, w.dtype, w.layout, w.rows(), bias, y, pool);
}

// Which kernel family runs on this CPU ("avx2" or "portable").
const char* matmulKernelName();

}  // namespace doppler::cpu

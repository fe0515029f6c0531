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

// ---- additions for tests and benchmarks (issue #3) ----

// True when the CPU (and OS) support AVX2, FMA and F16C, i.e. the "avx2" kernels can run.
bool cpuHasAvx2Kernels();

// Forces the portable kernels even where AVX2 is available (process-wide; for tests and benchmarks).
// matmulKernelName() reports the family actually used.
void setForcePortable(bool on);

// This machine's memory read bandwidth: every thread of `pool` sums its slice of a `bytes`-sized buffer
// (touched first, so its pages are resident); one warm-up pass, then `runs` timed passes.
struct ReadBandwidth {
  double medianGBs = 0, minGBs = 0, maxGBs = 0;  // 1 GB = 1e9 bytes
  size_t bytes = 0;
  int runs = 0, threads = 0;
};
ReadBandwidth measureReadBandwidth(size_t bytes = size_t(1) << 30, int runs = 7,
                                   ThreadPool& pool = ThreadPool::global());

}  // namespace doppler::cpu

// Prefill GEMMs through cuBLAS (issue #8), loaded at run time (dlopen) so that doppler still needs only the driver
// on a GPU machine: without cuBLAS the backend keeps its own tiled GEMM (kernels.cu).
//
// f32 activations against bf16 weights with f32 accuracy on tensor cores: x is split into three bf16 parts,
// x = x1 + x2 + x3 (x1 = bf16(x), x2 = bf16(x - x1), x3 = bf16(x - x1 - x2): 24 significant bits, all of an f32's),
// and y = W·x1 + W·x2 + W·x3 runs as ONE bf16 GEMM over the three parts side by side (3n columns, f32 accumulation;
// a bf16 x bf16 product is exact in f32), whose three column blocks a small kernel adds. The error is f32 rounding
// of the sums, as in a plain f32 GEMM, at about a third of bf16 tensor-core speed; one cuBLAS call per product
// because each costs ~9 us of host time. f32 weights use cuBLAS's f32 GEMM (no TF32). Other weight types (f16,
// mxfp4) stay on the tiled kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "backend/cuda/kernels.h"

namespace doppler::cuda {

class CublasGemm {
 public:
  // Loads cuBLAS (DOPPLER_CUBLAS=0: never) and makes a handle that issues on `stream`.
  explicit CublasGemm(cudaStream_t stream);
  ~CublasGemm();
  CublasGemm(const CublasGemm&) = delete;
  CublasGemm& operator=(const CublasGemm&) = delete;

  bool available() const { return handle_ != nullptr; }
  const std::string& why() const { return why_; }  // why not available
  // Whether matmul() takes this weight (type and sizes).
  bool takes(const MatW& w, int64_t n) const;
  // Bytes of device scratch matmul() needs for n rows of x: the parts, then the three products.
  static size_t scratchBytes(const MatW& w, int64_t n) {
    return w.type == kBF16 ? partsBytes(n, w.in) + productBytes(n, w.out) : 0;
  }
  static size_t partsBytes(int64_t n, int64_t in) { return (size_t(3 * 2 * n * in) + 255) / 256 * 256; }
  static size_t productBytes(int64_t n, int64_t out) { return size_t(3 * 4 * n * out); }
  // y[n, out] = x[n, in] · Wᵀ (+ bias), enqueued on the stream; scratch: scratchBytes() bytes of device memory
  // (16-byte aligned). Throws Error naming the cuBLAS status on failure.
  void matmul(const float* x, int64_t n, const MatW& w, const float* bias, float* y, void* scratch);
  // The same in two steps, so that several bf16 weights share one split of x: split() writes x's three bf16 parts
  // (partsBytes(n, in) bytes), matmulParts() multiplies them by a bf16 W (products: productBytes(n, out) bytes).
  void split(const float* x, int64_t n, int64_t in, void* parts);
  void matmulParts(const void* parts, int64_t n, const MatW& w, const float* bias, float* y, float* products);

 private:
  struct Api;
  Api* api_ = nullptr;
  void* lib_ = nullptr;
  void* handle_ = nullptr;
  cudaStream_t stream_;
  std::string why_;
};

}  // namespace doppler::cuda

#include "backend/cuda/cublas_gemm.h"

#include <cublas_api.h>
#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <string_view>

#include "core/error.h"

namespace doppler::cuda {

// The entry points used, resolved from the library (declared by cublas_api.h; not linked).
struct CublasGemm::Api {
  cublasStatus_t (*create)(cublasHandle_t*);
  cublasStatus_t (*destroy)(cublasHandle_t);
  cublasStatus_t (*setStream)(cublasHandle_t, cudaStream_t);
  cublasStatus_t (*setMathMode)(cublasHandle_t, cublasMath_t);
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const float*,
                          const float*, int, const float*, int, const float*, float*, int);
  cublasStatus_t (*gemmEx)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                           const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                           cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
  const char* (*statusString)(cublasStatus_t);
};

namespace {
template <class F>
bool resolve(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}
}  // namespace

CublasGemm::CublasGemm(cudaStream_t stream) : stream_(stream) {
  const char* env = std::getenv("DOPPLER_CUBLAS");
  if (env && std::string_view(env) == "0") {
    why_ = "DOPPLER_CUBLAS=0";
    return;
  }
  const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  lib_ = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib_) {
    const char* e = dlerror();
    why_ = e ? e : name + " not found";
    return;
  }
  auto* a = new Api{};
  const bool ok = resolve(lib_, "cublasCreate_v2", a->create) && resolve(lib_, "cublasDestroy_v2", a->destroy) &&
                  resolve(lib_, "cublasSetStream_v2", a->setStream) &&
                  resolve(lib_, "cublasSetMathMode", a->setMathMode) && resolve(lib_, "cublasSgemm_v2", a->sgemm) &&
                  resolve(lib_, "cublasGemmEx", a->gemmEx) &&
                  resolve(lib_, "cublasGetStatusString", a->statusString);
  cublasHandle_t h = nullptr;
  if (!ok) {
    why_ = name + " lacks an entry point doppler uses";
  } else if (a->create(&h) != CUBLAS_STATUS_SUCCESS) {
    why_ = "cublasCreate failed";
    h = nullptr;
  } else if (a->setStream(h, stream) != CUBLAS_STATUS_SUCCESS ||
             a->setMathMode(h, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {  // no TF32 in the f32 GEMM
    why_ = "cublasSetStream / cublasSetMathMode failed";
    a->destroy(h);
    h = nullptr;
  }
  if (!h) {
    delete a;
    dlclose(lib_);
    lib_ = nullptr;
    return;
  }
  api_ = a;
  handle_ = h;
}

CublasGemm::~CublasGemm() {
  if (handle_) api_->destroy(static_cast<cublasHandle_t>(handle_));
  delete api_;
  if (lib_) dlclose(lib_);
}

bool CublasGemm::takes(const MatW& w, int64_t n) const {
  return handle_ && (w.type == kBF16 || w.type == kF32) && n > 0 && n <= INT_MAX && w.out <= INT_MAX &&
         w.in <= INT_MAX && 3 * n <= INT_MAX;
}

namespace {
void cku(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("cuda {}: {}", what, cudaGetErrorString(e));
}
}  // namespace

void CublasGemm::matmul(const float* x, int64_t n, const MatW& w, const float* bias, float* y, void* scratch) {
  if (w.type == kBF16) {
    split(x, n, w.in, scratch);
    matmulParts(scratch, n, w, bias, y,
                reinterpret_cast<float*>(static_cast<uint8_t*>(scratch) + partsBytes(n, w.in)));
    return;
  }
  // f32: one f32 GEMM (no TF32), y = W·x (+ bias: y starts as the bias rows, beta = 1).
  const float one = 1.0f, zero = 0.0f;
  if (bias) cku(initRows(y, n, w.out, bias, stream_), "initRows");
  const cublasStatus_t s =
      api_->sgemm(static_cast<cublasHandle_t>(handle_), w.column ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, int(w.out),
                  int(n), int(w.in), &one, static_cast<const float*>(w.data), w.column ? int(w.out) : int(w.in), x,
                  int(w.in), bias ? &one : &zero, y, int(w.out));
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("cuBLAS sgemm failed for a [{}, {}] weight and {} rows: {}", w.out, w.in, n, api_->statusString(s));
}

void CublasGemm::split(const float* x, int64_t n, int64_t in, void* parts) {
  cku(splitBf16x3(x, n * in, static_cast<uint16_t*>(parts), stream_), "splitBf16x3");
}

void CublasGemm::matmulParts(const void* parts, int64_t n, const MatW& w, const float* bias, float* y,
                             float* products) {
  // Column-major view: P (out x 3n, ld out) = op(A) · X (in x 3n, ld in), X the parts [3][n, in] side by side, so
  // column p * n + t of P is part p of token t: P is [3][n, out] row-major. Row layout W[out, in] is A = (in x out)
  // transposed; column layout (element (o, i) at i * out + o) is A = (out x in) as it is.
  const cublasOperation_t ta = w.column ? CUBLAS_OP_N : CUBLAS_OP_T;
  const int m = int(w.out), k = int(w.in), lda = w.column ? int(w.out) : int(w.in);
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t s = api_->gemmEx(static_cast<cublasHandle_t>(handle_), ta, CUBLAS_OP_N, m, int(3 * n), k, &one,
                                        w.data, CUDA_R_16BF, lda, parts, CUDA_R_16BF, k, &zero, products, CUDA_R_32F, m,
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("cuBLAS bf16 gemm failed for a [{}, {}] weight and {} rows: {}", w.out, w.in, n, api_->statusString(s));
  cku(sumParts(products, n * w.out, w.out, bias, y, stream_), "sumParts");
}

}  // namespace doppler::cuda

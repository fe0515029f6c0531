// Backend selection (--backend cpu|cuda|auto). Only this file knows whether the CUDA backend was compiled
// (DOPPLER_HAVE_CUDA is set on it alone by CMake), so every other object builds the same either way.
#include "backend/backend.h"

#include <algorithm>
#include <climits>
#include <vector>

#include "core/error.h"
#include "kv/kv_codec.h"

namespace doppler {

#ifdef DOPPLER_HAVE_CUDA
std::unique_ptr<Backend> makeCudaBackend();  // backend/cuda/cuda_backend.cpp
namespace cuda {
int deviceCount(std::string* why);
std::string deviceSummary();
}  // namespace cuda
#endif

bool cudaCompiled() {
#ifdef DOPPLER_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

int cudaDeviceCount(std::string* why) {
#ifdef DOPPLER_HAVE_CUDA
  return cuda::deviceCount(why);
#else
  if (why) *why = "this doppler was built without CUDA (configure with -DDOPPLER_CUDA=ON and nvcc present)";
  return 0;
#endif
}

std::string cudaDeviceSummary() {
#ifdef DOPPLER_HAVE_CUDA
  return cuda::deviceSummary();
#else
  std::string why;
  cudaDeviceCount(&why);
  return "none (" + why + ")";
#endif
}

int32_t firstMaxIndex(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

void Backend::gatherRows(const float* src, const int64_t* rows, int64_t count, int64_t dim, float* dst) {
  for (int64_t i = 0; i < count; i++)
    copy(dst + i * dim, Tier::Device, src + rows[i] * dim, Tier::Device, size_t(dim) * sizeof(float));
}

void Backend::scatterAddRows(const float* src, const int64_t* rows, const float* w, int64_t count, int64_t dim,
                             float* dst) {
  for (int64_t i = 0; i < count; i++) axpy(w[i], src + i * dim, dim, dst + rows[i] * dim);
}

void Backend::argmax(const float* x, int64_t rows, int64_t n, int32_t* out) {
  check(rows >= 0 && n > 0 && n <= INT32_MAX, "argmax: {} rows of {} values", rows, n);
  std::vector<float> host;
  if (!hostVisible()) {
    host.resize(size_t(rows * n));
    copy(host.data(), Tier::Host, x, Tier::Device, host.size() * sizeof(float));
    x = host.data();
  }
  for (int64_t r = 0; r < rows; r++) out[r] = firstMaxIndex(x + r * n, n);
}

void Backend::pickToDevice(const float*, int64_t, int32_t*, int, const DeviceSampling*) {
  fail("backend {} keeps no picks on the device (devicePicks() is false)", name());
}
int32_t Backend::pickResult(int) { fail("backend {} keeps no picks on the device (devicePicks() is false)", name()); }
void Backend::embedDevice(const WeightView&, const int32_t*, int64_t, float*) {
  fail("backend {} keeps no picks on the device (devicePicks() is false)", name());
}

void Backend::encodeKVBlock(const kv::BlockFormat& f, const float* k, const float* v, uint8_t* dst) {
  if (hostVisible()) return kv::encodeBlock(f, k, v, dst);
  std::vector<float> kh(f.kElems()), vh(f.vElems());
  std::vector<uint8_t> enc(f.bytes());
  copy(kh.data(), Tier::Host, k, Tier::Device, kh.size() * sizeof(float));
  if (!vh.empty()) copy(vh.data(), Tier::Host, v, Tier::Device, vh.size() * sizeof(float));
  kv::encodeBlock(f, kh.data(), vh.data(), enc.data());
  copy(dst, Tier::Device, enc.data(), Tier::Host, enc.size());
}

void Backend::decodeKVBlock(const kv::BlockFormat& f, const uint8_t* src, float* k, float* v) {
  if (hostVisible()) return kv::decodeBlock(f, src, k, v);
  std::vector<uint8_t> enc(f.bytes());
  std::vector<float> kh(f.kElems()), vh(f.vElems());
  copy(enc.data(), Tier::Host, src, Tier::Device, enc.size());
  kv::decodeBlock(f, enc.data(), kh.data(), vh.data());
  copy(k, Tier::Device, kh.data(), Tier::Host, kh.size() * sizeof(float));
  if (!vh.empty()) copy(v, Tier::Device, vh.data(), Tier::Host, vh.size() * sizeof(float));
}

void Backend::matmulAdd(const float* x, int64_t n, const WeightView& w, const float* bias, float* y) {
  DeviceArray t(*this, size_t(n * w.rows()));  // [n, out]
  matmul(x, n, w, bias, t.data());
  axpy(1.0f, t.data(), n * w.rows(), y);
}

void Backend::moeExperts(const float* x, const ExpertCall* calls, int64_t count, float limit, float alpha,
                         float* out) {
  for (int64_t j = 0; j < count; j++) {
    const ExpertCall& c = calls[j];
    const int64_t inter = c.gate.rows(), hid = c.down.rows();
    DeviceArray g(*this, size_t(inter)), u(*this, size_t(inter)), y(*this, size_t(hid));
    matmul(x, 1, c.gate, nullptr, g.data());
    matmul(x, 1, c.up, nullptr, u.data());
    swiglu(g.data(), u.data(), inter, limit, alpha, g.data());
    matmul(g.data(), 1, c.down, nullptr, y.data());
    axpy(c.weight, y.data(), hid, out);
  }
}

std::unique_ptr<Backend> makeBackend(std::string_view kind) {
  if (kind == "cpu") return makeCpuBackend();
  if (kind == "cuda" || kind == "auto") {
    std::string why;
    const int n = cudaDeviceCount(&why);
    if (n > 0) {
#ifdef DOPPLER_HAVE_CUDA
      return makeCudaBackend();
#endif
    }
    if (kind == "auto") return makeCpuBackend();
    fail("--backend cuda: no usable GPU: {}", why);
  }
  fail("unknown backend '{}' (expected cpu, cuda or auto)", kind);
}

}  // namespace doppler

#include "backend/gpu_bandwidth.h"

namespace doppler {
#ifdef DOPPLER_HAVE_CUDA
namespace cuda {
GpuBandwidth measureBandwidth(size_t bytes, int runs);  // backend/cuda/cuda_backend.cpp
}
#endif
GpuBandwidth measureGpuBandwidth(size_t bytes, int runs) {
#ifdef DOPPLER_HAVE_CUDA
  if (cudaDeviceCount(nullptr) > 0) return cuda::measureBandwidth(bytes, runs);
#endif
  return GpuBandwidth{};
}
}  // namespace doppler

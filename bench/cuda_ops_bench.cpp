// Per-op cost of the CUDA backend at Qwen3-30B-A3B decode shapes (issue #8): for each op, the host time to issue
// it (no synchronisation) and the time per op when 200 are run back to back and then waited for. Tells launch and
// API overhead apart from GPU time. Usage: cuda_ops_bench (needs a GPU).
#include <cuda_runtime.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <functional>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"
#include "engine/sampler.h"

using namespace doppler;

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void timeOp(Backend& b, const char* name, const std::function<void()>& op, int reps = 200) {
  op();
  b.synchronize();
  double t0 = now();
  for (int i = 0; i < reps; i++) op();
  const double issue = now() - t0;
  b.synchronize();
  const double total = now() - t0;
  std::printf("%-34s issue %8.2f us/op   complete %8.2f us/op\n", name, issue / reps * 1e6, total / reps * 1e6);
}
// Getting pinned host memory (the host tier's buffers): cudaHostAlloc at expert and slab sizes, and memory mapped
// by us (transparent huge pages asked for, or not), touched, then registered with cudaHostRegister.
void hostMemoryBench() {
  auto ms = [](double s) { return s * 1e3; };
  for (size_t mb : {9, 64, 256}) {
    const size_t bytes = mb << 20;
    double alloc = 0, freeT = 0;
    const int reps = mb < 64 ? 8 : 2;
    for (int i = 0; i < reps; i++) {
      void* p = nullptr;
      double t0 = now();
      if (cudaHostAlloc(&p, bytes, cudaHostAllocPortable) != cudaSuccess) {
        std::printf("cudaHostAlloc %zu MiB failed\n", mb);
        return;
      }
      alloc += now() - t0;
      t0 = now();
      cudaFreeHost(p);
      freeT += now() - t0;
    }
    std::printf("host memory: cudaHostAlloc %4zu MiB  %8.2f ms (%5.2f GB/s)   cudaFreeHost %6.2f ms\n", mb,
                ms(alloc / reps), double(bytes) * reps / alloc / 1e9, ms(freeT / reps));
  }
  for (int huge : {1, 0}) {
    for (size_t mb : {10, 256}) {
      const size_t bytes = mb << 20;
      double t0 = now();
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return;
      madvise(p, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
      std::memset(p, 0, bytes);
      const double touch = now() - t0;
      t0 = now();
      const cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterPortable);
      const double reg = now() - t0;
      t0 = now();
      if (e == cudaSuccess) cudaHostUnregister(p);
      const double unreg = now() - t0;
      munmap(p, bytes);
      std::printf("host memory: mmap %s %4zu MiB: touch %7.2f ms (%5.2f GB/s), cudaHostRegister %7.2f ms (%5.2f GB/s)%s, "
                  "unregister %6.2f ms\n", huge ? "+THP" : "-THP", mb, ms(touch), double(bytes) / touch / 1e9, ms(reg),
                  double(bytes) / reg / 1e9, e == cudaSuccess ? "" : " FAILED", ms(unreg));
    }
  }
}
}  // namespace

int main() {
  std::string why;
  if (cudaDeviceCount(&why) <= 0) {
    std::printf("no GPU: %s\n", why.c_str());
    return 0;
  }
  hostMemoryBench();
  auto b = makeBackend("cuda");
  std::mt19937 g(1);
  auto devBf16 = [&](int64_t rows, int64_t cols) {
    std::vector<uint16_t> h(size_t(rows * cols));
    std::normal_distribution<float> d(0, 0.02f);
    for (auto& x : h) x = f32ToBf16(d(g));
    void* p = b->allocate(Tier::Device, h.size() * 2);
    b->copy(p, Tier::Device, h.data(), Tier::Host, h.size() * 2);
    return WeightView{p, DType::BF16, {rows, cols}, Layout::Row};
  };
  auto devF32 = [&](size_t n) {
    std::vector<float> h(n, 0.5f);
    auto* p = static_cast<float*>(b->allocate(Tier::Device, n * 4));
    b->copy(p, Tier::Device, h.data(), Tier::Host, n * 4);
    return p;
  };
  const int64_t hid = 2048, H = 32, KVH = 4, D = 128, I = 768, E = 128, K = 8, T = 96, V = 151936;
  WeightView q = devBf16(H * D, hid), o = devBf16(hid, H * D), router = devBf16(E, hid), head = devBf16(V, hid);
  std::vector<ExpertCall> calls;
  for (int64_t j = 0; j < K; j++) calls.push_back({devBf16(I, hid), devBf16(I, hid), devBf16(hid, I), 0.1f});
  float *x = devF32(size_t(hid)), *y = devF32(size_t(H * D)), *logits = devF32(size_t(V)), *nw = devF32(size_t(hid));
  float *kc = devF32(size_t(T * KVH * D)), *vc = devF32(size_t(T * KVH * D)), *att = devF32(size_t(H * D));
  std::vector<KVChunk> chunks;
  for (int64_t t = 0; t < T; t += 16) chunks.push_back({t, t + 16, kc + t * KVH * D, vc + t * KVH * D});
  std::vector<int64_t> pos{T - 1};
  std::vector<float> inv(size_t(D / 2), 0.01f);
  AttentionParams ap{H, KVH, D, D, 0.088f, 0, nullptr};
  RopeParams rp{inv.data(), D, 1.0f, false};
  std::vector<float> hostLogits(static_cast<size_t>(E));

  std::printf("%s\n", b->name().c_str());
  timeOp(*b, "matmul q [4096, 2048] bf16", [&] { b->matmul(x, 1, q, nullptr, y); });
  timeOp(*b, "matmul o [2048, 4096] bf16", [&] { b->matmul(y, 1, o, nullptr, x); });
  timeOp(*b, "matmul router [128, 2048]", [&] { b->matmul(x, 1, router, nullptr, logits); });
  timeOp(*b, "matmul lm_head [151936, 2048]", [&] { b->matmul(x, 1, head, nullptr, logits); }, 50);
  timeOp(*b, "moeExperts 8 x [768, 2048]", [&] { b->moeExperts(x, calls.data(), K, 0, 1.702f, nw); });
  timeOp(*b, "attention H32 KVH4 D128 T96 (6 ch)",
         [&] { b->attention(y, 1, pos.data(), chunks.data(), int64_t(chunks.size()), ap, att); });
  timeOp(*b, "rope 32 heads", [&] { b->rope(y, 1, H, D, pos.data(), rp); });
  timeOp(*b, "rmsNorm 2048", [&] { b->rmsNorm(x, 1, hid, nw, 1e-6f, x); });
  timeOp(*b, "rmsNorm 32 x 128 (qk norm)", [&] { b->rmsNorm(y, H, D, nw, 1e-6f, y); });
  timeOp(*b, "axpy 2048", [&] { b->axpy(1.0f, nw, hid, x); });
  timeOp(*b, "fill 2048", [&] { b->fill(nw, hid, 0.0f); });
  timeOp(*b, "copy D2D 8 KiB", [&] { b->copy(att, Tier::Device, y, Tier::Device, 8192); });
  timeOp(*b, "copy D2H 512 B (waits)", [&] { b->copy(hostLogits.data(), Tier::Host, logits, Tier::Device, 512); });
  std::vector<float> hostAll(static_cast<size_t>(V));
  timeOp(*b, "copy D2H logits 608 KB (waits)",
         [&] { b->copy(hostAll.data(), Tier::Host, logits, Tier::Device, hostAll.size() * 4); }, 50);
  int32_t pick = 0;
  timeOp(*b, "argmax 151936 (waits)", [&] { b->argmax(logits, 1, V, &pick); });
  // The next token with the run command's default sampling (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05): drawn
  // on the device (pickToDevice + waiting for the id), or the logits copied to the host and sampled there.
  {
    int32_t* dev = static_cast<int32_t*>(b->allocate(Tier::Device, 4));
    SamplerConfig sc{.temperature = 0.8f, .topK = 40, .topP = 0.95f, .minP = 0.05f, .seed = 1};
    Sampler sampler(sc);
    std::vector<int32_t> ctx;
    for (int64_t n : {int64_t(4096), int64_t(32768), V}) {
      const std::string sz = std::to_string(n);
      timeOp(*b, ("pick on device " + sz + " (waits)").c_str(), [&] {
        b->pickToDevice(logits, n, dev, 0);
        b->pickResult(0);
      });
      timeOp(*b, ("sample on device " + sz + " (waits)").c_str(), [&] {
        const DeviceSampling ds = sampler.nextDeviceSampling();
        b->pickToDevice(logits, n, dev, 0, &ds);
        b->pickResult(0);
      });
      std::vector<float> host(static_cast<size_t>(n));
      timeOp(*b, ("sample on host " + sz + " (copy + sample)").c_str(), [&] {
        b->copy(host.data(), Tier::Host, logits, Tier::Device, host.size() * 4);
        sampler.sample(host, ctx);
      }, 50);
    }
    b->release(Tier::Device, dev, 4);
  }
  // Prefill GEMMs: cuBLAS (three bf16 parts of x) against our tiled kernel (a backend made with DOPPLER_CUBLAS=0):
  // attention's q [4096, 2048] and one Qwen3 expert's FFN (gate and up [768, 2048], down [2048, 768]) for n rows.
  ::setenv("DOPPLER_CUBLAS", "0", 1);
  auto tiled = makeBackend("cuda");
  ::unsetenv("DOPPLER_CUBLAS");
  const WeightView eg = calls[0].gate, eu = calls[0].up, ed = calls[0].down;
  for (int64_t n : {9, 16, 32, 64, 128, 256, 1024}) {
    float* xs = devF32(size_t(n * H * D));
    float* ys = devF32(size_t(n * H * D));
    float *gs = devF32(size_t(n * I)), *us = devF32(size_t(n * I));
    for (Backend* be : {b.get(), tiled.get()}) {
      const char* kind = be == b.get() ? "cuBLAS" : "tiled";
      auto run = [&](const char* what, double flops, const std::function<void()>& op) {
        const int reps = n >= 256 ? 10 : 30;
        op();
        be->synchronize();
        const double t0 = now();
        for (int i = 0; i < reps; i++) op();
        const double issue = (now() - t0) / reps;
        be->synchronize();
        const double t = (now() - t0) / reps;
        std::printf("prefill %-6s n=%-4lld %-7s issue %8.2f us  complete %8.2f us  %7.2f TFLOP/s\n", what,
                    (long long)n, kind, issue * 1e6, t * 1e6, flops / t / 1e12);
      };
      run("q", 2.0 * double(n) * double(H * D) * double(hid), [&] { be->matmul(xs, n, q, nullptr, ys); });
      run("expert", 6.0 * double(n) * double(I) * double(hid), [&] {
        const Backend::MatmulOut gu[2] = {{eg, nullptr, gs}, {eu, nullptr, us}};
        be->matmulMany(xs, n, gu, 2);
        be->swiglu(gs, us, n * I, 0.0f, 1.702f, gs);
        be->matmul(gs, n, ed, nullptr, ys);
      });
    }
  }
  timeOp(*b, "allocate + release 16 KiB", [&] {
    void* p = b->allocate(Tier::Device, 16384);
    b->release(Tier::Device, p, 16384);
  });
  // Last (a device that cannot read registered host memory would fail here): zero-copy, the 8 experts' weights in
  // the host tier (pinned, registered) read by the kernels over PCIe, against copying them to the device first and
  // running them there (what the tier cache does for a miss).
  {
    std::vector<ExpertCall> hostCalls;
    std::vector<std::pair<void*, size_t>> hostBufs;
    auto hostBf16 = [&](int64_t rows, int64_t cols) {
      const size_t bytes = size_t(rows * cols) * 2;
      void* p = b->allocate(Tier::Host, bytes);
      b->copy(p, Tier::Host, calls[0].gate.data, Tier::Device, std::min(bytes, calls[0].gate.bytes()));  // any bf16
      hostBufs.push_back({p, bytes});
      return WeightView{p, DType::BF16, {rows, cols}, Layout::Row};
    };
    for (int64_t j = 0; j < K; j++) hostCalls.push_back({hostBf16(I, hid), hostBf16(I, hid), hostBf16(hid, I), 0.1f});
    const double bytes = double(K) * 3 * double(I * hid) * 2;
    double t0 = now();
    const int reps = 20;
    for (int r = 0; r < reps; r++) b->moeExperts(x, hostCalls.data(), K, 0, 1.702f, nw);
    b->synchronize();
    const double zc = (now() - t0) / reps;
    t0 = now();
    for (int r = 0; r < reps; r++) {
      for (int64_t j = 0; j < K; j++)
        for (int k = 0; k < 3; k++) {
          const WeightView& h = k == 0 ? hostCalls[size_t(j)].gate : k == 1 ? hostCalls[size_t(j)].up : hostCalls[size_t(j)].down;
          const WeightView& d = k == 0 ? calls[size_t(j)].gate : k == 1 ? calls[size_t(j)].up : calls[size_t(j)].down;
          b->copy(const_cast<void*>(d.data), Tier::Device, h.data, Tier::Host, h.bytes());
        }
      b->moeExperts(x, calls.data(), K, 0, 1.702f, nw);
    }
    b->synchronize();
    const double cp = (now() - t0) / reps;
    // As the tier cache copies a miss: each expert one contiguous unit (gate, up, down), one copy per unit.
    const size_t unit = size_t(3 * I * hid) * 2;
    void* hostUnits = b->allocate(Tier::Host, size_t(K) * unit);
    void* devUnits = b->allocate(Tier::Device, size_t(K) * unit);
    std::vector<ExpertCall> unitCalls;
    for (int64_t j = 0; j < K; j++) {
      auto* u = static_cast<uint8_t*>(devUnits) + size_t(j) * unit;
      const size_t m = size_t(I * hid) * 2;
      unitCalls.push_back({WeightView{u, DType::BF16, {I, hid}, Layout::Row},
                           WeightView{u + m, DType::BF16, {I, hid}, Layout::Row},
                           WeightView{u + 2 * m, DType::BF16, {hid, I}, Layout::Row}, 0.1f});
    }
    t0 = now();
    for (int r = 0; r < reps; r++) {
      for (int64_t j = 0; j < K; j++)
        b->copy(static_cast<uint8_t*>(devUnits) + size_t(j) * unit, Tier::Device,
                static_cast<uint8_t*>(hostUnits) + size_t(j) * unit, Tier::Host, unit);
      b->moeExperts(x, unitCalls.data(), K, 0, 1.702f, nw);
    }
    b->synchronize();
    const double cu = (now() - t0) / reps;
    std::printf("zero-copy: 8 experts [768, 2048] read from pinned host memory by the kernels %8.1f us (%5.1f GB/s); "
                "copied first (24 matrices), then run %8.1f us (%5.1f GB/s); copied as 8 units (one per expert, as "
                "the tier cache copies), then run %8.1f us (%5.1f GB/s)\n", zc * 1e6, bytes / zc / 1e9, cp * 1e6,
                bytes / cp / 1e9, cu * 1e6, bytes / cu / 1e9);
    b->release(Tier::Device, devUnits, size_t(K) * unit);
    b->release(Tier::Host, hostUnits, size_t(K) * unit);
    for (auto& [p, n] : hostBufs) b->release(Tier::Host, p, n);
  }
  return 0;
}

// CPU matmul benchmark (issue #3) on Qwen3-30B-A3B-like shapes.
//   GEMV (decode, n = 1): GB/s of weight bytes streamed, against the memory read bandwidth measured in the
//   same run. Weights are rotated over distinct copies spanning >= 1 GiB, so every call reads from DRAM as
//   a real decode step does (a 3 MiB expert would otherwise sit in the last-level cache).
//   GEMM (prefill, n = 128): GFLOP/s against this machine's measured peak AVX2 FMA rate.
//   Tiny products: microseconds per call (they must not pay for waking threads).
//
//   matmul_bench [--portable] [--threads T] [--runs R] [--quick] [--only NAME]
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "backend/cpu/matmul_internal.h"

using namespace doppler;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Shape {
  const char* name;
  int64_t out, in;  // W[out, in]
};

// One core's FMA loop: 12 independent 8-lane f32 FMA chains (named, so they stay in registers), `iters`
// steps; returns a checksum.
__attribute__((target("avx2,fma"))) float fmaLoop(int64_t iters) {
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  __m256 a0 = _mm256_set1_ps(0.1f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
  __m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
  for (int64_t k = 0; k < iters; k++) {
    a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c), a2 = _mm256_fmadd_ps(a2, m, c);
    a3 = _mm256_fmadd_ps(a3, m, c), a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c), a8 = _mm256_fmadd_ps(a8, m, c);
    a9 = _mm256_fmadd_ps(a9, m, c), a10 = _mm256_fmadd_ps(a10, m, c), a11 = _mm256_fmadd_ps(a11, m, c);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                                 _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  return _mm256_cvtss_f32(_mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
}

// Peak AVX2 FMA rate of the pool (GFLOP/s, 2 flops per lane), or 0 without AVX2.
double fmaPeakGflops(ThreadPool& pool) {
  if (!cpu::cpuHasAvx2Kernels()) return 0;
  constexpr int64_t kIters = 20'000'000;
  std::vector<double> runs;
  std::vector<float> sink(size_t(pool.size()));
  for (int rep = 0; rep < 5; rep++) {
    auto t0 = Clock::now();
    pool.parallelFor(pool.size(), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; t++) sink[size_t(t)] = fmaLoop(kIters);
    });
    auto t1 = Clock::now();
    runs.push_back(double(pool.size()) * kIters * 12 * 16 / seconds(t0, t1) / 1e9);
  }
  return median(runs);
}

}  // namespace

int main(int argc, char** argv) {
  bool portable = false, quick = false;
  int threads = 0, runs = 7;
  std::string only;  // one matrix name, e.g. "q_proj"
  volatile uint64_t sink = 0;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--portable") {
      portable = true;
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: matmul_bench [--portable] [--threads T] [--runs R] [--quick] [--only NAME]\n");
      return 2;
    }
  }
  try {
    cpu::setForcePortable(portable);
    ThreadPool pool(threads);
    const size_t footprint = size_t(1) << 30;  // weights rotate over >= 1 GiB: far beyond any cache
    std::printf("kernels: %s, threads: %d, runs: %d (median reported)\n", cpu::matmulKernelName(), pool.size(),
                runs);
    const cpu::ReadBandwidth bw = cpu::measureReadBandwidth(size_t(1) << 30, runs, pool);
    std::printf("memory read bandwidth: %.2f GB/s (median; min %.2f, max %.2f; 1 GiB, %d threads)\n\n",
                bw.medianGBs, bw.minGBs, bw.maxGBs, bw.threads);

    const std::vector<Shape> shapes = {
        {"expert gate/up", 768, 2048}, {"expert down", 2048, 768}, {"q_proj", 4096, 2048},
        {"o_proj", 2048, 4096},        {"lm_head", 151936, 2048},
    };
    // One buffer for all weights; every 16-bit word is a normal number whether read as bf16, f16 or (in
    // pairs) f32, so no case runs into denormal slow paths.
    size_t bufBytes = footprint;
    for (const Shape& s : shapes) bufBytes = std::max(bufBytes, size_t(s.out * s.in) * 4);
    // 64-byte aligned, as tensors are in RDRR files (docs/rdrr.md).
    std::unique_ptr<uint16_t, decltype(&std::free)> buf(static_cast<uint16_t*>(std::aligned_alloc(64, bufBytes)),
                                                         &std::free);
    check(buf != nullptr, "cannot allocate {} bytes", bufBytes);
    {
      uint64_t state = 1;  // a 64-bit LCG: 0.6 G words in ~1 s
      for (size_t i = 0; i < bufBytes / 2; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        buf.get()[i] = uint16_t(0x3c00u | (uint32_t(state >> 40) & 0x83ffu));
      }
    }
    std::vector<float> x(size_t(128) * 4096), y(size_t(128) * 151936);
    {
      std::mt19937 rng(2);
      std::uniform_real_distribution<float> d(-1, 1);
      for (auto& v : x) v = d(rng);
    }

    // Each timed GEMV pass is paired with a plain read pass (the bandwidth probe's kernel) over the same
    // bytes, so the ratio is robust to other load on the machine.
    const auto& probe = cpu::cpuHasAvx2Kernels() ? cpu::detail::avx2Kernels() : cpu::detail::portableKernels();
    std::printf("GEMV (n = 1): weight GB/s; read = plain read of the same bytes; ratio = median of GEMV/read "
                "pairs, ratio1G = GB/s / the 1 GiB bandwidth above\n");
    std::printf("%-15s %-15s %-5s %-7s %9s %8s %8s %6s %7s\n", "matrix", "[out, in]", "dtype", "layout", "us/call",
                "GB/s", "read", "ratio", "ratio1G");
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      for (const Shape& s : shapes) {
        if (!only.empty() && only != s.name) continue;
        const size_t wbytes = size_t(s.out * s.in) * dtypeSize(dt);
        if (wbytes > bufBytes) continue;
        const size_t copies = std::max<size_t>(1, footprint / wbytes);
        const auto* base = reinterpret_cast<const uint8_t*>(buf.get());
        for (Layout lo : {Layout::Row, Layout::Column}) {
          std::vector<double> t, rd, ratio;
          for (int r = -1; r < runs; r++) {  // run -1 warms up
            std::atomic<uint64_t> sum{0};
            auto r0 = Clock::now();
            pool.parallelFor(int64_t(copies * wbytes / 8), [&](int64_t b, int64_t e) {
              sum += probe.readSum(reinterpret_cast<const uint64_t*>(base) + b, size_t(e - b));
            });
            auto t0 = Clock::now();
            for (size_t c = 0; c < copies; c++)
              cpu::matmul(x.data(), 1, s.in, base + c * wbytes, dt, lo, s.out, nullptr, y.data(), pool);
            auto t1 = Clock::now();
            sink = sink + sum.load();
            if (r < 0) continue;
            t.push_back(seconds(t0, t1) / double(copies));
            rd.push_back(double(copies * wbytes) / seconds(r0, t0) / 1e9);
            ratio.push_back(seconds(r0, t0) / seconds(t0, t1));
          }
          const double sec = median(t), gbs = double(wbytes) / sec / 1e9;
          char shape[32];
          std::snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)s.out, (long long)s.in);
          std::printf("%-15s %-15s %-5s %-7s %9.1f %8.2f %8.2f %6.2f %7.2f\n", s.name, shape, dtypeName(dt).data(),
                      layoutName(lo).data(), sec * 1e6, gbs, median(rd), median(ratio), gbs / bw.medianGBs);
        }
      }
      if (quick) break;
    }

    const double peak = fmaPeakGflops(pool);
    std::printf("\nGEMM (n = 128, prefill), bf16 weights; peak = measured AVX2 FMA rate %.1f GFLOP/s\n", peak);
    std::printf("%-16s %-16s %-7s %9s %9s %7s\n", "matrix", "[out, in]", "layout", "ms/call", "GFLOP/s", "/peak");
    for (const Shape& s : shapes) {
      // the lm head runs on the last position only
      if (s.out > 8192 || (!only.empty() && only != s.name)) continue;
      const int64_t n = 128;
      for (Layout lo : {Layout::Row, Layout::Column}) {
        std::vector<double> t;
        for (int r = -1; r < runs; r++) {
          auto t0 = Clock::now();
          cpu::matmul(x.data(), n, s.in, buf.get(), DType::BF16, lo, s.out, nullptr, y.data(), pool);
          auto t1 = Clock::now();
          if (r >= 0) t.push_back(seconds(t0, t1));
        }
        const double sec = median(t), gf = 2.0 * double(n * s.in * s.out) / sec / 1e9;
        char shape[32];
        std::snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)s.out, (long long)s.in);
        std::printf("%-16s %-16s %-7s %9.3f %9.1f %7.2f\n", s.name, shape, layoutName(lo).data(), sec * 1e3, gf,
                    peak > 0 ? gf / peak : 0.0);
      }
    }

    std::printf("\nTiny products (single-threaded by the grain), bf16 row, us/call (median of 2000 calls):\n");
    for (int64_t d : {16, 64, 256}) {
      for (int64_t n : {1, 4}) {
        std::vector<double> t;
        for (int r = 0; r < 2000; r++) {
          auto t0 = Clock::now();
          cpu::matmul(x.data(), n, d, buf.get(), DType::BF16, Layout::Row, d, nullptr, y.data(), pool);
          t.push_back(seconds(t0, Clock::now()));
        }
        std::printf("  %lldx%lld n=%lld: %.2f us\n", (long long)d, (long long)d, (long long)n, median(t) * 1e6);
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "matmul_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

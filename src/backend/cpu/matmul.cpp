// CPU matmul drivers: argument checks, kernel choice (AVX2 or portable, at run time), thread split and
// GEMM blocking. The kernels themselves live in matmul_avx2.cpp and matmul_portable.cpp.
#include "backend/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/cpu/matmul_internal.h"
#include "core/error.h"

namespace doppler::cpu {

namespace {

std::atomic<bool> gForcePortable{false};

const detail::Kernels& kernels() {
  if (!gForcePortable.load(std::memory_order_relaxed) && cpuHasAvx2Kernels()) return detail::avx2Kernels();
  return detail::portableKernels();
}

// Below this much work per chunk, waking another thread (~5-20 us) costs more than it saves.
// GEMV is memory-bound: 2^17 bf16 weights are 256 KiB, ~10 us at 25 GB/s.
constexpr int64_t kMinGemvMacsPerChunk = int64_t(1) << 17;
// GEMM is compute-bound: 2^20 multiply-adds are ~20 us at 100 GFLOP/s.
constexpr int64_t kMinGemmMacsPerChunk = int64_t(1) << 20;
// Column GEMV: input rows per job segment (at most) and outputs per job block (see gemvColumn).
constexpr int64_t kColSeg = 128;
constexpr int64_t kColBlock = 2048;
// GEMM: rows of x per block, so that the x block [kNb, kKc] (256 KiB) stays in L2 across weight panels.
constexpr int64_t kNb = 256;

// Runs fn(b, e) over [0, units) in blocks of at least `grain` units (a multiple of `align`), handed out
// through an atomic counter to the pool's threads: a thread that starts late (the machine is busy) takes
// fewer blocks instead of holding up the whole product. Each unit belongs to exactly one block whatever the
// thread count, so results do not depend on it. ~4 blocks per thread balance load at a negligible cost.
template <class F>
void blockedFor(ThreadPool& pool, int64_t units, int64_t grain, int64_t align, const F& fn) {
  const int64_t threads = pool.size();
  int64_t block = std::max(grain, (units + 4 * threads - 1) / (4 * threads));
  block = (block + align - 1) / align * align;
  const int64_t blocks = (units + block - 1) / block;
  if (blocks <= 1 || threads == 1) {
    fn(0, units);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.parallelFor(std::min(threads, blocks), [&](int64_t, int64_t) {
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < blocks;)
      fn(b * block, std::min(units, (b + 1) * block));
  });
}

bool overlaps(const void* a, size_t abytes, const void* b, size_t bbytes) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bbytes && pb < pa + abytes;
}

void validate(const float* x, int64_t n, int64_t in, const void* w, DType wtype, Layout layout, int64_t out,
              const float* bias, float* y) {
  check(wtype == DType::F32 || wtype == DType::F16 || wtype == DType::BF16,
        "matmul: weight dtype {} is not supported (expected f32, f16 or bf16)", dtypeName(wtype));
  check(layout == Layout::Row || layout == Layout::Column, "matmul: weight layout {} is not row or column",
        int(layout));
  check(in > 0 && out > 0, "matmul: weight shape [{}, {}] (out, in) must be positive", out, in);
  check(n >= 0, "matmul: x has {} rows, expected >= 0", n);
  constexpr int64_t kMax = int64_t(1) << 40;  // elements; far beyond any real tensor, safe from overflow
  check(in <= kMax / out, "matmul: weight shape [{}, {}] is too large", out, in);
  check(n <= kMax / in && n <= kMax / out, "matmul: x [{}, {}] / y [{}, {}] is too large", n, in, n, out);
  if (n == 0) return;
  check(x != nullptr, "matmul: x [{}, {}] is null", n, in);
  check(w != nullptr, "matmul: weight [{}, {}] is null", out, in);
  check(y != nullptr, "matmul: y [{}, {}] is null", n, out);
  const size_t ybytes = size_t(n * out) * 4;
  check(!overlaps(y, ybytes, x, size_t(n * in) * 4), "matmul: y [{}, {}] overlaps x [{}, {}]", n, out, n, in);
  check(!overlaps(y, ybytes, w, size_t(in * out) * dtypeSize(wtype)), "matmul: y [{}, {}] overlaps the weight",
        n, out);
  check(bias == nullptr || !overlaps(y, ybytes, bias, size_t(out) * 4), "matmul: y [{}, {}] overlaps bias [{}]",
        n, out, out);
}

// GEMM on rows [r0, r1) of x and weight panels [p0, p1) (panel p = outputs [p * kNr, p * kNr + kNr)).
void gemmBlock(const detail::Kernels& K, const float* x, int64_t in, const void* w, DType wtype, Layout layout,
               int64_t out, const float* bias, float* y, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
  using detail::kKc;
  using detail::kMr;
  using detail::kNr;
  const int64_t o0 = p0 * kNr, o1 = std::min(out, p1 * kNr);
  for (int64_t r = r0; r < r1; r++) {  // y[r, o0:o1] = bias or 0; the micro-kernels accumulate into it
    float* yr = y + r * out;
    if (bias)
      std::memcpy(yr + o0, bias + o0, size_t(o1 - o0) * 4);
    else
      std::fill(yr + o0, yr + o1, 0.0f);
  }
  alignas(64) float panel[kKc * kNr];  // [kc, kNr] packed f32 weights (16 KiB)
  alignas(64) float edge[kMr * kNr];   // [kMr, kNr] y tile for the last, partial panel
  for (int64_t nb = r0; nb < r1; nb += kNb) {
    const int64_t ne = std::min(r1, nb + kNb);
    for (int64_t k0 = 0; k0 < in; k0 += kKc) {
      const int64_t kc = std::min(kKc, in - k0);
      for (int64_t p = p0; p < p1; p++) {
        const int64_t o = p * kNr;
        const int valid = int(std::min<int64_t>(kNr, out - o));
        K.packPanel(w, wtype, layout, in, out, o, k0, kc, panel);
        for (int64_t r = nb; r < ne; r += kMr) {
          const int mr = int(std::min<int64_t>(kMr, ne - r));
          const float* xb = x + r * in + k0;  // [mr, in], kc used
          float* yb = y + r * out + o;        // [mr, out], kNr used
          if (valid == kNr) {
            K.micro(mr, kc, xb, in, panel, yb, out);
          } else {
            for (int i = 0; i < mr; i++) {
              std::memcpy(edge + i * kNr, yb + i * out, size_t(valid) * 4);
              std::fill(edge + i * kNr + valid, edge + (i + 1) * kNr, 0.0f);
            }
            K.micro(mr, kc, xb, in, panel, edge, kNr);
            for (int i = 0; i < mr; i++) std::memcpy(yb + i * out, edge + i * kNr, size_t(valid) * 4);
          }
        }
      }
    }
  }
}

// Column-layout GEMV. With in <= kColSeg, blocks of outputs (each owning a slice of y). Otherwise jobs are
// (segment of ~kColSeg input rows) x (block of up to kColBlock outputs): a job streams long contiguous runs
// of Wt[in, out] (whole rows when out <= kColBlock), and even a small `out` gives enough jobs for the pool.
// Each job writes its own partial y, and a second pass adds them in segment order: no atomics, and the
// segments depend on the shape only, so the sums are the same whatever the thread count.
void gemvColumn(const detail::Kernels& K, const float* x, int64_t in, const void* w, DType wtype, int64_t out,
                const float* bias, float* y, ThreadPool& pool) {
  using detail::kNr;
  const int64_t segs = (in + kColSeg - 1) / kColSeg;
  if (segs == 1) {
    const int64_t units = (out + kNr - 1) / kNr;
    blockedFor(pool, units, std::max<int64_t>(1, kMinGemvMacsPerChunk / (kNr * in)), 1, [&](int64_t b, int64_t e) {
      K.gemvCol(x, in, w, wtype, out, b * kNr, std::min(out, e * kNr), bias, y);
    });
    return;
  }
  // segment sg: q or q + 1 input rows (balanced, each <= kColSeg) starting at row sg * q + min(sg, r)
  const int64_t q = in / segs, r = in % segs;
  const int64_t blockOut = std::min(kColBlock, (out + kNr - 1) / kNr * kNr);
  const int64_t blocks = (out + blockOut - 1) / blockOut;
  const size_t wsize = dtypeSize(wtype);
  thread_local std::vector<float> partialBuf;
  partialBuf.resize(size_t(segs * out));
  float* partial = partialBuf.data();  // [segs, out]
  const int64_t jobs = segs * blocks;  // job j: block j / segs, segment j % segs (a run of jobs: adjacent rows)
  blockedFor(pool, jobs, std::max<int64_t>(1, kMinGemvMacsPerChunk / (kColSeg * blockOut)), 1,
             [&](int64_t jb, int64_t je) {
               for (int64_t j = jb; j < je; j++) {
                 const int64_t b = j / segs, sg = j % segs;
                 const int64_t i0 = sg * q + std::min(sg, r), rows = q + (sg < r ? 1 : 0);
                 K.gemvCol(x + i0, rows, static_cast<const uint8_t*>(w) + size_t(i0 * out) * wsize, wtype, out,
                           b * blockOut, std::min(out, (b + 1) * blockOut), nullptr, partial + sg * out);
               }
             });
  blockedFor(pool, out, std::max<int64_t>(1, kMinGemvMacsPerChunk / segs), 1, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; o++) {
      float s = bias ? bias[o] : 0.0f;
      for (int64_t sg = 0; sg < segs; sg++) s += partial[sg * out + o];
      y[o] = s;
    }
  });
}

}  // namespace

bool cpuHasAvx2Kernels() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
}

void setForcePortable(bool on) { gForcePortable.store(on, std::memory_order_relaxed); }

const char* matmulKernelName() { return kernels().name; }

void matmul(const float* x, int64_t n, int64_t in, const void* w, DType wtype, Layout layout, int64_t out,
            const float* bias, float* y, ThreadPool& pool) {
  validate(x, n, in, w, wtype, layout, out, bias, y);
  if (n == 0) return;
  const detail::Kernels& K = kernels();
  using detail::kNr;

  if (n == 1) {
    if (layout == Layout::Row) {  // units of 4 output rows: one pass of the row kernel
      const int64_t units = (out + 3) / 4;
      blockedFor(pool, units, std::max<int64_t>(1, kMinGemvMacsPerChunk / (4 * in)), 1, [&](int64_t b, int64_t e) {
        K.gemvRow(x, in, w, wtype, b * 4, std::min(out, e * 4), bias, y);
      });
    } else {
      gemvColumn(K, x, in, w, wtype, out, bias, y, pool);
    }
    return;
  }

  // GEMM: split the weight panels (each weight tile is converted once per block and reused for all n rows);
  // when there are too few panels for the pool, split the rows of x instead.
  const int64_t panels = (out + kNr - 1) / kNr;
  const int64_t threads = pool.size();
  if (panels >= 2 * threads || n < 2 * detail::kMr * threads) {
    blockedFor(pool, panels, std::max<int64_t>(1, kMinGemmMacsPerChunk / (kNr * in * n)), 1,
               [&](int64_t b, int64_t e) { gemmBlock(K, x, in, w, wtype, layout, out, bias, y, 0, n, b, e); });
  } else {
    blockedFor(pool, n, std::max<int64_t>(detail::kMr, kMinGemmMacsPerChunk / (in * out)), detail::kMr,
               [&](int64_t b, int64_t e) { gemmBlock(K, x, in, w, wtype, layout, out, bias, y, b, e, 0, panels); });
  }
}

ReadBandwidth measureReadBandwidth(size_t bytes, int runs, ThreadPool& pool) {
  check(bytes >= (size_t(1) << 20), "measureReadBandwidth: buffer of {} bytes is too small (need >= 1 MiB)",
        bytes);
  check(runs >= 1, "measureReadBandwidth: runs = {}, expected >= 1", runs);
  constexpr size_t kAlign = size_t(2) << 20;
  const size_t words = bytes / 8;
  const size_t alloc = (words * 8 + kAlign - 1) / kAlign * kAlign;
  std::unique_ptr<uint64_t, decltype(&std::free)> buf(static_cast<uint64_t*>(std::aligned_alloc(kAlign, alloc)),
                                                       &std::free);
  check(buf != nullptr, "measureReadBandwidth: cannot allocate {} bytes", alloc);
  uint64_t* p = buf.get();
  pool.parallelFor(int64_t(words), [&](int64_t b, int64_t e) {  // touch every page from the thread reading it
    for (int64_t i = b; i < e; i++) p[i] = uint64_t(i);
  });
  const detail::Kernels& K = kernels();
  std::vector<uint64_t> sums(size_t(pool.size()) + 1);
  std::vector<double> gbs;
  volatile uint64_t sink = 0;
  for (int run = -1; run < runs; run++) {
    std::atomic<int> slot{0};
    auto t0 = std::chrono::steady_clock::now();
    pool.parallelFor(int64_t(words), [&](int64_t b, int64_t e) {
      sums[size_t(slot.fetch_add(1))] = K.readSum(p + b, size_t(e - b));
    });
    auto t1 = std::chrono::steady_clock::now();
    for (int i = 0; i < slot.load(); i++) sink = sink + sums[size_t(i)];
    if (run >= 0) gbs.push_back(double(words * 8) / std::chrono::duration<double>(t1 - t0).count() / 1e9);
  }
  std::sort(gbs.begin(), gbs.end());
  ReadBandwidth r;
  r.medianGBs = gbs[gbs.size() / 2];
  r.minGBs = gbs.front();
  r.maxGBs = gbs.back();
  r.bytes = words * 8;
  r.runs = runs;
  r.threads = pool.size();
  return r;
}

}  // namespace doppler::cpu

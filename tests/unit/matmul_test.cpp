// CPU matmul (backend/cpu/matmul.h): every kernel family x layout x weight dtype x GEMV/GEMM against a
// double-precision reference on the same (dequantised) weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/matmul_internal.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"

using namespace doppler;

namespace {

// Selects the kernel family for the lifetime of the object.
struct KernelFamily {
  explicit KernelFamily(bool portable) { cpu::setForcePortable(portable); }
  ~KernelFamily() { cpu::setForcePortable(false); }
};

// A random weight W[out, in] stored as `dtype` in `layout`, with its dequantised values for the reference.
struct TestWeight {
  int64_t out, in;
  DType dtype;
  Layout layout;
  std::vector<uint8_t> bytes;  // storage: [out, in] (Row) or [in, out] (Column)
  std::vector<double> deq;     // [out, in] the exact values the kernel sees

  TestWeight(int64_t out_, int64_t in_, DType dt, Layout lo, uint32_t seed)
      : out(out_), in(in_), dtype(dt), layout(lo), bytes(size_t(out_ * in_) * dtypeSize(dt)),
        deq(size_t(out_ * in_)) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    for (int64_t o = 0; o < out; o++) {
      for (int64_t i = 0; i < in; i++) {
        const float v = dist(rng);
        const size_t at = size_t(layout == Layout::Row ? o * in + i : i * out + o);
        float stored;
        if (dtype == DType::F32) {
          std::memcpy(bytes.data() + at * 4, &v, 4);
          stored = v;
        } else if (dtype == DType::BF16) {
          const uint16_t h = f32ToBf16(v);
          std::memcpy(bytes.data() + at * 2, &h, 2);
          stored = bf16ToF32(h);
        } else {
          const uint16_t h = f32ToF16(v);
          std::memcpy(bytes.data() + at * 2, &h, 2);
          stored = f16ToF32(h);
        }
        deq[size_t(o * in + i)] = stored;
      }
    }
  }
};

std::vector<float> randomVec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& f : v) f = dist(rng);
  return v;
}

// Checks y [n, out] against the double reference: each element within 1e-5 of sum_i |x_i * w_i| + |bias|
// (the scale of the f32 accumulation error), and the whole product within 1e-5 relative (L2).
void expectMatchesReference(const TestWeight& W, const std::vector<float>& x, int64_t n, const float* bias,
                            const std::vector<float>& y, const std::string& what) {
  double errSq = 0, refSq = 0;
  int bad = 0;
  for (int64_t r = 0; r < n; r++) {
    for (int64_t o = 0; o < W.out; o++) {
      double ref = bias ? double(bias[o]) : 0.0, mag = bias ? std::fabs(double(bias[o])) : 0.0;
      for (int64_t i = 0; i < W.in; i++) {
        const double p = double(x[size_t(r * W.in + i)]) * W.deq[size_t(o * W.in + i)];
        ref += p;
        mag += std::fabs(p);
      }
      const double got = y[size_t(r * W.out + o)];
      const double err = std::fabs(got - ref);
      errSq += err * err;
      refSq += ref * ref;
      if (!(err <= 1e-5 * mag + 1e-30) && bad++ < 5)
        ADD_FAILURE() << what << ": y[" << r << ", " << o << "] = " << got << ", reference " << ref
                      << " (|x||w| = " << mag << ")";
    }
  }
  EXPECT_EQ(bad, 0) << what;
  EXPECT_LE(std::sqrt(errSq / refSq), 1e-5) << what;
}

const char* dtName(DType t) { return dtypeName(t).data(); }

void runMatrix(bool portable, int64_t in, int64_t out, const std::vector<int64_t>& ns, ThreadPool& pool) {
  KernelFamily fam(portable);
  ASSERT_STREQ(cpu::matmulKernelName(), portable ? "portable" : "avx2");
  uint32_t seed = 1;
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    for (Layout lo : {Layout::Row, Layout::Column}) {
      const TestWeight W(out, in, dt, lo, seed++);
      const std::vector<float> bias = randomVec(size_t(out), seed++);
      for (int64_t n : ns) {
        const std::vector<float> x = randomVec(size_t(n * in), seed++);
        for (bool withBias : {false, true}) {
          std::vector<float> y(size_t(n * out), NAN);
          const float* b = withBias ? bias.data() : nullptr;
          cpu::matmul(x.data(), n, in, W.bytes.data(), dt, lo, out, b, y.data(), pool);
          const std::string what = std::string(cpu::matmulKernelName()) + " " + dtName(dt) + " " +
                                   std::string(layoutName(lo)) + " n=" + std::to_string(n) + " in=" +
                                   std::to_string(in) + " out=" + std::to_string(out) + (withBias ? " bias" : "");
          expectMatchesReference(W, x, n, b, y, what);
        }
      }
    }
  }
}

}  // namespace

TEST(Matmul, PortableMatchesReferenceOnOddSizes) {
  ThreadPool pool(2);
  runMatrix(true, 67, 45, {1, 3, 17, 64}, pool);
  runMatrix(true, 5, 3, {1, 2, 7}, pool);
}

TEST(Matmul, Avx2MatchesReferenceOnOddSizes) {
  if (!cpu::cpuHasAvx2Kernels()) GTEST_SKIP() << "CPU lacks AVX2/FMA/F16C";
  ThreadPool pool(2);
  runMatrix(false, 67, 45, {1, 3, 17, 64}, pool);
  runMatrix(false, 5, 3, {1, 2, 7}, pool);
}

// Several K blocks of the GEMM (in > 256), several segments of the column GEMV (in > 128), every tail of
// the vector loops (in % 16 = 13, out % 16 = 7), and several y tiles per job in the column GEMV.
TEST(Matmul, LargerProductsMatchReferenceOnEveryFamily) {
  ThreadPool pool(3);
  runMatrix(true, 269, 87, {1, 13}, pool);
  if (cpu::cpuHasAvx2Kernels()) runMatrix(false, 269, 87, {1, 13}, pool);
  // out > 2 * 2048: several y tiles per thread in the column GEMV
  runMatrix(true, 19, 4133, {1, 2}, pool);
  if (cpu::cpuHasAvx2Kernels()) runMatrix(false, 19, 4133, {1, 2}, pool);
}

// Each output element is computed the same way whatever the split, so thread counts agree bit for bit.
// [600, 300] splits the outputs across threads; [20, 600] with n = 120 has too few outputs, so the GEMM
// splits the rows of x instead.
static void expectSameForEveryThreadCount(int64_t in, int64_t out, const std::vector<int64_t>& ns) {
  for (bool portable : {true, false}) {
    if (!portable && !cpu::cpuHasAvx2Kernels()) continue;
    KernelFamily fam(portable);
    for (Layout lo : {Layout::Row, Layout::Column}) {
      const TestWeight W(out, in, DType::BF16, lo, 7);
      for (int64_t n : ns) {
        const std::vector<float> x = randomVec(size_t(n * in), 11);
        std::vector<float> first;
        for (int threads : {1, 2, 3, 5}) {
          ThreadPool pool(threads);
          std::vector<float> y(size_t(n * out), NAN);
          cpu::matmul(x.data(), n, in, W.bytes.data(), DType::BF16, lo, out, nullptr, y.data(), pool);
          if (first.empty())
            first = y;
          else
            EXPECT_EQ(std::memcmp(first.data(), y.data(), y.size() * 4), 0)
                << cpu::matmulKernelName() << " " << layoutName(lo) << " n=" << n << " threads=" << threads;
        }
        expectMatchesReference(W, x, n, nullptr, first, "thread-count case");
      }
    }
  }
}

TEST(Matmul, ResultsDoNotDependOnThreadCount) {
  expectSameForEveryThreadCount(300, 600, {1, 24});
  expectSameForEveryThreadCount(600, 20, {1, 120});
}

TEST(Matmul, RowAndColumnLayoutsAndFamiliesAgree) {
  const int64_t in = 131, out = 77, n = 9;
  const std::vector<float> x = randomVec(size_t(n * in), 3);
  std::vector<std::vector<float>> results;
  for (bool portable : {true, false}) {
    if (!portable && !cpu::cpuHasAvx2Kernels()) continue;
    KernelFamily fam(portable);
    for (Layout lo : {Layout::Row, Layout::Column}) {
      for (int64_t rows : {int64_t(1), n}) {  // GEMV on row 0 and GEMM on all rows
        const TestWeight W(out, in, DType::F16, lo, 5);  // same seed: same values in either layout
        std::vector<float> y(size_t(rows * out));
        cpu::matmul(x.data(), rows, in, W.bytes.data(), DType::F16, lo, out, nullptr, y.data());
        y.resize(size_t(out));  // compare row 0
        results.push_back(y);
      }
    }
  }
  for (size_t k = 1; k < results.size(); k++)
    for (int64_t o = 0; o < out; o++)
      EXPECT_NEAR(results[k][size_t(o)], results[0][size_t(o)], 1e-5 * (1 + std::fabs(results[0][size_t(o)])))
          << "variant " << k << " o=" << o;
}

// Every finite f16 / bf16 bit pattern goes through each kernel's conversion exactly: W [4096, 16] holds all
// 65536 patterns (inf / NaN replaced by 0, as 0 * inf would poison the sums), and x = one-hot rows pick
// single weights (GEMV with x = e_j, GEMM with x = I16).
TEST(Matmul, EveryHalfAndBfloatWeightConvertsExactly) {
  const int64_t in = 16, out = 4096;
  for (bool portable : {true, false}) {
    if (!portable && !cpu::cpuHasAvx2Kernels()) continue;
    KernelFamily fam(portable);
    for (DType dt : {DType::F16, DType::BF16}) {
      auto toF32 = [&](uint16_t h) { return dt == DType::F16 ? f16ToF32(h) : bf16ToF32(h); };
      std::vector<float> expect(size_t(out * in));  // [out, in]
      for (Layout lo : {Layout::Row, Layout::Column}) {
        std::vector<uint16_t> w(size_t(out * in));
        for (int64_t o = 0; o < out; o++) {
          for (int64_t i = 0; i < in; i++) {
            uint16_t h = uint16_t(o * in + i);
            if (!std::isfinite(toF32(h))) h = 0;
            w[size_t(lo == Layout::Row ? o * in + i : i * out + o)] = h;
            expect[size_t(o * in + i)] = toF32(h);
          }
        }
        std::vector<float> eye(size_t(in * in), 0.0f), y(size_t(in * out));
        for (int64_t j = 0; j < in; j++) eye[size_t(j * in + j)] = 1.0f;
        int bad = 0;
        for (int64_t j = 0; j < in; j++) {  // GEMV
          cpu::matmul(eye.data() + j * in, 1, in, w.data(), dt, lo, out, nullptr, y.data());
          for (int64_t o = 0; o < out; o++) bad += y[size_t(o)] != expect[size_t(o * in + j)];
        }
        cpu::matmul(eye.data(), in, in, w.data(), dt, lo, out, nullptr, y.data());  // GEMM
        for (int64_t j = 0; j < in; j++)
          for (int64_t o = 0; o < out; o++) bad += y[size_t(j * out + o)] != expect[size_t(o * in + j)];
        EXPECT_EQ(bad, 0) << cpu::matmulKernelName() << " " << dtName(dt) << " " << layoutName(lo);
      }
    }
  }
}

TEST(Matmul, WeightViewOverloadAndEmptyBatch) {
  const TestWeight W(24, 40, DType::BF16, Layout::Column, 9);
  WeightView view;
  view.data = W.bytes.data();
  view.dtype = DType::BF16;
  view.shape = {24, 40};
  view.layout = Layout::Column;
  const std::vector<float> x = randomVec(2 * 40, 4);
  std::vector<float> y(2 * 24, NAN);
  cpu::matmul(x.data(), 2, view, nullptr, y.data());
  expectMatchesReference(W, x, 2, nullptr, y, "WeightView");
  // n == 0 writes nothing (and accepts null pointers)
  std::vector<float> untouched(4, 42.0f);
  cpu::matmul(nullptr, 0, 40, W.bytes.data(), DType::BF16, Layout::Row, 24, nullptr, untouched.data());
  EXPECT_EQ(untouched[0], 42.0f);
}

TEST(Matmul, BadArgumentsRaiseErrors) {
  std::vector<float> x(64, 1.0f), y(64), w(64, 1.0f);
  auto expectError = [](auto fn, const char* needle) {
    try {
      fn();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expectError([&] { cpu::matmul(x.data(), 1, 8, w.data(), DType::I8, Layout::Row, 8, nullptr, y.data()); },
              "dtype i8 is not supported");
  expectError([&] { cpu::matmul(x.data(), 1, 0, w.data(), DType::F32, Layout::Row, 8, nullptr, y.data()); },
              "must be positive");
  expectError([&] { cpu::matmul(x.data(), -1, 8, w.data(), DType::F32, Layout::Row, 8, nullptr, y.data()); },
              "expected >= 0");
  expectError([&] { cpu::matmul(x.data(), 1, 8, nullptr, DType::F32, Layout::Row, 8, nullptr, y.data()); },
              "is null");
  expectError([&] { cpu::matmul(x.data(), 1, 8, w.data(), DType::F32, Layout::Row, 8, nullptr, nullptr); },
              "is null");
  expectError([&] { cpu::matmul(x.data(), 2, 8, w.data(), DType::F32, Layout::Row, 8, nullptr, x.data() + 4); },
              "overlaps x");
  expectError([&] { cpu::matmul(x.data(), 1, 8, w.data(), DType::F32, Layout::Row, 8, y.data(), y.data()); },
              "overlaps bias");
  expectError(
      [&] { cpu::matmul(x.data(), 1, 8, w.data(), DType::F32, Layout::Column, 8, nullptr, w.data() + 8); },
      "overlaps the weight");
}

TEST(Matmul, ForcePortableSwitchesFamily) {
  cpu::setForcePortable(true);
  EXPECT_STREQ(cpu::matmulKernelName(), "portable");
  cpu::setForcePortable(false);
  EXPECT_STREQ(cpu::matmulKernelName(), cpu::cpuHasAvx2Kernels() ? "avx2" : "portable");
}

TEST(Matmul, PortableHalfConversionIsExact) {
  for (uint32_t h = 0; h < 65536; h++) {
    const float a = cpu::detail::halfToFloat(uint16_t(h)), b = f16ToF32(uint16_t(h));
    uint32_t ua, ub;
    std::memcpy(&ua, &a, 4);
    std::memcpy(&ub, &b, 4);
    ASSERT_EQ(ua, ub) << "f16 bits 0x" << std::hex << h;
  }
}

TEST(Matmul, ReadBandwidthIsPositive) {
  ThreadPool pool(2);
  const cpu::ReadBandwidth bw = cpu::measureReadBandwidth(size_t(8) << 20, 3, pool);
  EXPECT_GT(bw.medianGBs, 0.0);
  EXPECT_LE(bw.minGBs, bw.medianGBs);
  EXPECT_LE(bw.medianGBs, bw.maxGBs);
  EXPECT_EQ(bw.bytes, size_t(8) << 20);
  EXPECT_EQ(bw.threads, 2);
  EXPECT_THROW(cpu::measureReadBandwidth(100, 3, pool), Error);
}

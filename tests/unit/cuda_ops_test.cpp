// Issue #8: every op of the CUDA backend against the CPU backend on fresh seeded random inputs (relative L2 error,
// i.e. sqrt(NMSE), bound), and the tier copies. Skipped when no GPU is usable (CI; this build without CUDA).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>

#include "backend/backend.h"
#include "backend/cpu/mxfp4.h"
#include "core/dtype.h"
#include "core/error.h"
#include "engine/sampler.h"
#include "kv/kv_codec.h"

using namespace doppler;

namespace {

// Fresh data per run (seeded from the test's counter so a failure names the seed it used).
uint32_t nextSeed() {
  static uint32_t s = uint32_t(std::random_device{}());
  return s++;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

double relErr(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += double(a[i] - ref[i]) * double(a[i] - ref[i]);
    den += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

constexpr double kTol = 2e-6;  // f32 arithmetic in another order

// W[out, in] f32 values -> bytes of `dt` in `layout`.
std::vector<uint8_t> encodeWeight(const std::vector<float>& w, int64_t out, int64_t in, DType dt, Layout layout) {
  std::vector<float> src = w;
  if (layout == Layout::Column) {
    for (int64_t o = 0; o < out; o++)
      for (int64_t i = 0; i < in; i++) src[size_t(i * out + o)] = w[size_t(o * in + i)];
  }
  if (dt == DType::MXFP4) {
    std::vector<uint8_t> b(size_t(dtypeBytes(dt, uint64_t(out * in))));
    cpu::quantizeMxfp4(src.data(), out, in, b.data());
    return b;
  }
  std::vector<uint8_t> b(src.size() * dtypeSize(dt));
  for (size_t i = 0; i < src.size(); i++) {
    if (dt == DType::F32) std::memcpy(b.data() + 4 * i, &src[i], 4);
    else {
      uint16_t h = dt == DType::F16 ? f32ToF16(src[i]) : f32ToBf16(src[i]);
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
  }
  return b;
}


class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cudaDeviceCount(&why) <= 0) GTEST_SKIP() << "no usable GPU: " << why;
    gpu = makeBackend("cuda");
    cpu = makeCpuBackend();
  }
  void TearDown() override {
    for (auto& [p, bytes] : allocs) gpu->release(Tier::Device, p, bytes);
  }
  // A device copy of host bytes (poisoned spare capacity is not needed: sizes are exact).
  template <class T>
  T* up(const std::vector<T>& v) {
    const size_t bytes = std::max<size_t>(v.size() * sizeof(T), 1);
    void* p = gpu->allocate(Tier::Device, bytes);
    allocs.emplace_back(p, bytes);
    if (!v.empty()) gpu->copy(p, Tier::Device, v.data(), Tier::Host, v.size() * sizeof(T));
    return static_cast<T*>(p);
  }
  // A device array of n floats filled with NaN, so unwritten outputs show.
  float* poisoned(size_t n) { return up(std::vector<float>(n, NAN)); }
  std::vector<float> down(const float* d, size_t n) {
    std::vector<float> v(n);
    gpu->copy(v.data(), Tier::Host, d, Tier::Device, n * sizeof(float));
    return v;
  }

  // `count` random SwiGLU experts [inter, hid] of one type and layout, expert j weighted 0.1 + 0.2 j: host views
  // (hc, for the CPU) and device copies (dc); hostW keeps the host bytes alive.
  struct Experts {
    std::vector<std::vector<uint8_t>> hostW;
    std::vector<ExpertCall> hc, dc;
  };
  Experts makeExperts(int64_t count, int64_t inter, int64_t hid, DType dt, Layout layout, uint32_t seed) {
    Experts x;
    for (int64_t j = 0; j < count; j++) {
      ExpertCall c;
      auto g = encodeWeight(randn(size_t(inter * hid), seed + 10 * uint32_t(j), 0.1f), inter, hid, dt, layout);
      auto u = encodeWeight(randn(size_t(inter * hid), seed + 10 * uint32_t(j) + 1, 0.1f), inter, hid, dt, layout);
      auto d = encodeWeight(randn(size_t(hid * inter), seed + 10 * uint32_t(j) + 2, 0.1f), hid, inter, dt, layout);
      c.gate = WeightView{g.data(), dt, {inter, hid}, layout};
      c.up = WeightView{u.data(), dt, {inter, hid}, layout};
      c.down = WeightView{d.data(), dt, {hid, inter}, layout};
      c.weight = 0.1f + 0.2f * float(j);
      x.hc.push_back(c);
      c.gate.data = up(g);
      c.up.data = up(u);
      c.down.data = up(d);
      x.dc.push_back(c);
      x.hostW.push_back(std::move(g));
      x.hostW.push_back(std::move(u));
      x.hostW.push_back(std::move(d));
    }
    return x;
  }

  std::unique_ptr<Backend> gpu, cpu;
  std::vector<std::pair<void*, size_t>> allocs;
};

}  // namespace

TEST_F(CudaOps, MatmulAllTypesLayoutsAndBatchSizes) {
  struct Shape { int64_t out, in; };
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::MXFP4}) {
    for (Layout layout : {Layout::Row, Layout::Column}) {
      if (dt == DType::MXFP4 && layout == Layout::Column) continue;  // mxfp4 is row layout only
      for (Shape s : {Shape{67, 96}, Shape{130, 100}, Shape{1000, 512}, Shape{33, 2048}}) {
        if (dt == DType::MXFP4 && s.in % 32 != 0) continue;
        for (int64_t n : {1, 2, 3, 8, 9, 16, 70, 300}) {  // from 16 rows on, f32 and bf16 go to cuBLAS (if loaded)
          for (bool withBias : {false, true}) {
            const uint32_t seed = nextSeed();
            auto wf = randn(size_t(s.out * s.in), seed, 0.05f);
            auto wb = encodeWeight(wf, s.out, s.in, dt, layout);
            auto x = randn(size_t(n * s.in), seed + 1);
            auto bias = randn(size_t(s.out), seed + 2);
            WeightView hw{wb.data(), dt, {s.out, s.in}, layout};
            std::vector<float> ref(size_t(n * s.out));
            cpu->matmul(x.data(), n, hw, withBias ? bias.data() : nullptr, ref.data());
            WeightView dw = hw;
            dw.data = up(wb);
            float* y = poisoned(ref.size());
            gpu->matmul(up(x), n, dw, withBias ? up(bias) : nullptr, y);
            const double e = relErr(down(y, ref.size()), ref);
            EXPECT_LT(e, kTol) << dtypeName(dt) << " " << layoutName(layout) << " [" << s.out << ", " << s.in
                               << "] n " << n << " bias " << withBias << " seed " << seed;
          }
        }
      }
    }
  }
}

// Prefill through cuBLAS (f32, and bf16 as three bf16 parts of x) against our tiled GEMM (DOPPLER_CUBLAS=0) and the
// CPU, on a shape big enough for tensor-core tiles, with bias.
TEST_F(CudaOps, CublasPrefillMatchesTiledGemm) {
  ::setenv("DOPPLER_CUBLAS", "0", 1);
  auto tiled = makeBackend("cuda");
  ::unsetenv("DOPPLER_CUBLAS");
  std::printf("[cuda] %s / %s\n", gpu->name().c_str(), tiled->name().c_str());
  EXPECT_EQ(tiled->name().find("cuBLAS"), std::string::npos);
  const int64_t out = 1536, in = 1024, n = 257;
  for (DType dt : {DType::F32, DType::BF16}) {
    for (Layout layout : {Layout::Row, Layout::Column}) {
      const uint32_t seed = nextSeed();
      auto wb = encodeWeight(randn(size_t(out * in), seed, 0.05f), out, in, dt, layout);
      auto x = randn(size_t(n * in), seed + 1, 3.0f);
      auto bias = randn(size_t(out), seed + 2);
      WeightView hw{wb.data(), dt, {out, in}, layout};
      std::vector<float> ref(size_t(n * out));
      cpu->matmul(x.data(), n, hw, bias.data(), ref.data());
      WeightView dw = hw;
      dw.data = up(wb);
      const float *dx = up(x), *db = up(bias);
      float* y = poisoned(ref.size());
      gpu->matmul(dx, n, dw, db, y);
      const double eBlas = relErr(down(y, ref.size()), ref);
      // The tiled backend's own buffers (its stream differs from gpu's: both synchronise on the copy back).
      auto* ty = static_cast<float*>(tiled->allocate(Tier::Device, ref.size() * 4));
      tiled->matmul(dx, n, dw, db, ty);
      std::vector<float> tv(ref.size());
      tiled->copy(tv.data(), Tier::Host, ty, Tier::Device, tv.size() * 4);
      tiled->release(Tier::Device, ty, ref.size() * 4);
      const double eTiled = relErr(tv, ref);
      std::printf("[cuda] prefill %s %s n %lld: cuBLAS path %.3g, tiled %.3g\n", dtypeName(dt).data(),
                  layoutName(layout).data(), (long long)n, eBlas, eTiled);
      EXPECT_LT(eBlas, kTol) << dtypeName(dt) << " " << layoutName(layout) << " seed " << seed;
      EXPECT_LT(eTiled, kTol) << dtypeName(dt) << " " << layoutName(layout) << " seed " << seed;
    }
  }
}

// q, k, v in one launch (Backend::matmulMany): each output as the CPU's matmul gives it; shapes the fused path
// takes (n = 1, row layout) and ones it hands back to plain matmuls (column layout, n = 3, mixed types).
TEST_F(CudaOps, MatmulManyMatchesCpu) {
  struct Case { int64_t n; Layout layout; bool mixed; };
  // n = 40: prefill, bf16 weights through cuBLAS sharing one split of x (all row or all column, or mixed types).
  for (Case c : {Case{1, Layout::Row, false}, Case{1, Layout::Column, false}, Case{3, Layout::Row, false},
                 Case{1, Layout::Row, true}, Case{40, Layout::Row, false}, Case{40, Layout::Column, false},
                 Case{40, Layout::Row, true}}) {
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      const int64_t in = 264, outs[3] = {520, 72, 9};
      const uint32_t seed = nextSeed();
      auto x = randn(size_t(c.n * in), seed);
      std::vector<std::vector<uint8_t>> wb(3);
      std::vector<std::vector<float>> bias(3), ref(3);
      Backend::MatmulOut hm[3], dm[3];
      for (int j = 0; j < 3; j++) {
        const DType t = c.mixed && j == 2 ? DType::F32 : dt;
        wb[size_t(j)] = encodeWeight(randn(size_t(outs[j] * in), seed + 1 + uint32_t(j), 0.05f), outs[j], in, t, c.layout);
        bias[size_t(j)] = randn(size_t(outs[j]), seed + 7 + uint32_t(j));
        ref[size_t(j)].resize(size_t(c.n * outs[j]));
        const WeightView hw{wb[size_t(j)].data(), t, {outs[j], in}, c.layout};
        hm[j] = {hw, j == 1 ? bias[size_t(j)].data() : nullptr, ref[size_t(j)].data()};
        WeightView dw = hw;
        dw.data = up(wb[size_t(j)]);
        dm[j] = {dw, j == 1 ? up(bias[size_t(j)]) : nullptr, poisoned(ref[size_t(j)].size())};
      }
      cpu->matmulMany(x.data(), c.n, hm, 3);
      gpu->matmulMany(up(x), c.n, dm, 3);
      for (int j = 0; j < 3; j++)
        EXPECT_LT(relErr(down(dm[j].y, ref[size_t(j)].size()), ref[size_t(j)]), kTol)
            << dtypeName(dt) << " n " << c.n << " " << layoutName(c.layout) << " mixed " << c.mixed << " out " << j
            << " seed " << seed;
    }
  }
}

// y += x · Wᵀ (+ bias) (Backend::matmulAdd: the o projection into the residual stream): the decode GEMV's own store
// (n <= 8, every type and layout) and the prefill fallback (n = 9, 70: a product, then an add).
TEST_F(CudaOps, MatmulAddAddsIntoY) {
  for (DType dt : {DType::F32, DType::BF16, DType::MXFP4}) {
    for (Layout layout : {Layout::Row, Layout::Column}) {
      if (dt == DType::MXFP4 && layout == Layout::Column) continue;
      const int64_t out = 130, in = 512;
      for (int64_t n : {1, 3, 8, 9, 70}) {
        const uint32_t seed = nextSeed();
        auto wb = encodeWeight(randn(size_t(out * in), seed, 0.05f), out, in, dt, layout);
        auto x = randn(size_t(n * in), seed + 1);
        auto bias = randn(size_t(out), seed + 2);
        auto y0 = randn(size_t(n * out), seed + 3, 4.0f);
        WeightView hw{wb.data(), dt, {out, in}, layout};
        std::vector<float> ref = y0;
        cpu->matmulAdd(x.data(), n, hw, bias.data(), ref.data());
        std::vector<float> prod(ref.size());
        cpu->matmul(x.data(), n, hw, bias.data(), prod.data());
        for (size_t i = 0; i < ref.size(); i++) ASSERT_EQ(ref[i], y0[i] + prod[i]);  // the CPU's default: y += product
        WeightView dw = hw;
        dw.data = up(wb);
        float* y = up(y0);
        gpu->matmulAdd(up(x), n, dw, up(bias), y);
        EXPECT_LT(relErr(down(y, ref.size()), ref), kTol)
            << dtypeName(dt) << " " << layoutName(layout) << " n " << n << " seed " << seed;
      }
    }
  }
}

// Sampling on the device (Backend::pickToDevice with DeviceSampling) draws the token engine/sampler.cpp draws from
// the same logits with the same seed: temperature, top-k (up to the backend's 64), top-p, min-p; logits with many
// ties (rounded to halves) check the order of equal candidates.
TEST_F(CudaOps, SamplingOnDeviceMatchesSampler) {
  const int maxK = gpu->deviceSamplingTopK();
  ASSERT_GE(maxK, 40);
  struct Case { float temp; int64_t topK; float topP, minP; };
  int32_t* dev = reinterpret_cast<int32_t*>(poisoned(1));
  for (int64_t V : {1000, 151936}) {
    for (Case c : {Case{0.8f, 40, 0.95f, 0.05f}, Case{1.3f, maxK, 1.0f, 0.0f}, Case{0.5f, 1, 1.0f, 0.0f},
                   Case{1.0f, 10, 0.5f, 0.2f}}) {
      for (bool ties : {false, true}) {
        const uint32_t seed = nextSeed();
        SamplerConfig sc{.temperature = c.temp, .topK = c.topK, .topP = c.topP, .minP = c.minP, .seed = seed};
        Sampler host(sc), device(sc);
        ASSERT_TRUE(device.onDevice(maxK));
        for (int draw = 0; draw < 40; draw++) {
          auto logits = randn(size_t(V), seed * 7 + uint32_t(draw), 3.0f);
          if (ties)
            for (auto& l : logits) l = std::round(l * 2.0f) / 2.0f;
          const float* x = up(logits);
          const DeviceSampling ds = device.nextDeviceSampling();
          gpu->pickToDevice(x, V, dev, draw % 2, &ds);
          const int32_t got = gpu->pickResult(draw % 2);
          std::vector<int32_t> ctx;
          const int32_t want = host.sample(logits, ctx);
          ASSERT_EQ(got, want) << "V " << V << " temp " << c.temp << " top-k " << c.topK << " top-p " << c.topP
                               << " min-p " << c.minP << " ties " << ties << " draw " << draw << " seed " << seed;
        }
      }
    }
  }
}

// KV cache blocks encoded and decoded on the GPU give the host codec's bytes and values exactly (f32, f16, bf16,
// int8 with its per-row scales; keys only, and odd sizes that leave the int8 scales unaligned).
TEST_F(CudaOps, KVBlockCodecMatchesHost) {
  struct Shape { int64_t tokens, heads, kDim, vDim; };
  for (KVDType dt : {KVDType::F32, KVDType::F16, KVDType::BF16, KVDType::Int8}) {
    for (Shape sh : {Shape{16, 4, 128, 128}, Shape{16, 1, 192, 0}, Shape{5, 3, 7, 6}}) {
      const kv::BlockFormat f{dt, sh.tokens, sh.heads, sh.kDim, sh.vDim};
      const uint32_t seed = nextSeed();
      auto k = randn(f.kElems(), seed, 3.0f), v = randn(f.vElems(), seed + 1, 0.5f);
      if (!k.empty()) k[0] = 0.0f;
      std::vector<uint8_t> ref(f.bytes());
      kv::encodeBlock(f, k.data(), v.data(), ref.data());
      auto* enc = reinterpret_cast<uint8_t*>(up(std::vector<uint8_t>(f.bytes(), 0xcd)));
      gpu->encodeKVBlock(f, up(k), v.empty() ? nullptr : up(v), enc);
      std::vector<uint8_t> got(f.bytes());
      gpu->copy(got.data(), Tier::Host, enc, Tier::Device, got.size());
      const std::string what = std::string(kvDTypeName(dt)) + " [" + std::to_string(sh.tokens) + ", " +
                               std::to_string(sh.heads) + ", " + std::to_string(sh.kDim) + "/" +
                               std::to_string(sh.vDim) + "] seed " + std::to_string(seed);
      EXPECT_EQ(got, ref) << "encoded bytes " << what;
      std::vector<float> kr(f.kElems()), vr(f.vElems());
      kv::decodeBlock(f, ref.data(), kr.data(), vr.data());
      float* kd = poisoned(kr.size());
      float* vd = vr.empty() ? nullptr : poisoned(vr.size());
      gpu->decodeKVBlock(f, up(ref), kd, vd);
      EXPECT_EQ(down(kd, kr.size()), kr) << "decoded keys " << what;
      if (vd) {
        EXPECT_EQ(down(vd, vr.size()), vr) << "decoded values " << what;
      }
    }
  }
}

// The residual add fused into RMSNorm: x += add (written back), y = rmsNorm(x).
TEST_F(CudaOps, AddRmsNormMatchesCpu) {
  for (int64_t dim : {64, 100, 2048}) {
    const int64_t rows = 3;
    const uint32_t seed = nextSeed();
    auto x = randn(size_t(rows * dim), seed, 2.0f), add = randn(size_t(rows * dim), seed + 1),
         w = randn(size_t(dim), seed + 2);
    std::vector<float> xr = x, yr(x.size());
    cpu->addRmsNorm(xr.data(), add.data(), rows, dim, w.data(), 1e-6f, yr.data());
    float* xd = up(x);
    float* y = poisoned(x.size());
    gpu->addRmsNorm(xd, up(add), rows, dim, up(w), 1e-6f, y);
    EXPECT_LT(relErr(down(xd, x.size()), xr), kTol) << "x dim " << dim << " seed " << seed;
    EXPECT_LT(relErr(down(y, x.size()), yr), kTol) << "y dim " << dim << " seed " << seed;
  }
}

TEST_F(CudaOps, EmbedRowAndColumn) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16})
    for (Layout layout : {Layout::Row, Layout::Column}) {
      const int64_t V = 50, D = 72, n = 7;
      const uint32_t seed = nextSeed();
      auto wf = randn(size_t(V * D), seed);
      auto wb = encodeWeight(wf, V, D, dt, layout);
      std::vector<int32_t> ids{0, 49, 3, 3, 17, 25, 1};
      WeightView hw{wb.data(), dt, {V, D}, layout};
      std::vector<float> ref(size_t(n * D));
      cpu->embed(hw, ids.data(), n, ref.data());
      WeightView dw = hw;
      dw.data = up(wb);
      float* y = poisoned(ref.size());
      gpu->embed(dw, ids.data(), n, y);
      EXPECT_EQ(relErr(down(y, ref.size()), ref), 0.0) << dtypeName(dt) << " " << layoutName(layout);
    }
}

TEST_F(CudaOps, NormsInPlaceAndNot) {
  for (int64_t dim : {64, 100, 2048, 4096}) {
    const int64_t rows = 5;
    const uint32_t seed = nextSeed();
    auto x = randn(size_t(rows * dim), seed, 3.0f), w = randn(size_t(dim), seed + 1), b = randn(size_t(dim), seed + 2);
    std::vector<float> ref(x.size());
    cpu->rmsNorm(x.data(), rows, dim, w.data(), 1e-5f, ref.data());
    float* y = poisoned(x.size());
    gpu->rmsNorm(up(x), rows, dim, up(w), 1e-5f, y);
    EXPECT_LT(relErr(down(y, x.size()), ref), kTol) << "rmsnorm dim " << dim;
    float* xd = up(x);
    gpu->rmsNorm(xd, rows, dim, up(w), 1e-5f, xd);  // in place
    EXPECT_LT(relErr(down(xd, x.size()), ref), kTol) << "rmsnorm in place dim " << dim;
    for (bool bias : {false, true}) {
      cpu->layerNorm(x.data(), rows, dim, w.data(), bias ? b.data() : nullptr, 1e-5f, ref.data());
      float* yl = poisoned(x.size());
      gpu->layerNorm(up(x), rows, dim, up(w), bias ? up(b) : nullptr, 1e-5f, yl);
      EXPECT_LT(relErr(down(yl, x.size()), ref), kTol) << "layernorm dim " << dim << " bias " << bias;
    }
  }
}

TEST_F(CudaOps, RopeVariants) {
  struct Case { int64_t heads, headDim, rotDim, offset; bool interleaved; };
  // offset/stride: deepseek ropes q[:, :, N:] inside heads of N + R (x + N, headDim = N + R, rotDim = R).
  for (Case c : {Case{4, 64, 64, 0, false}, Case{2, 128, 64, 0, false}, Case{3, 48, 16, 32, true},
                 Case{1, 40, 8, 32, false}, Case{8, 128, 128, 0, false}}) {
    const int64_t n = c.heads == 8 ? 40 : 9;  // 40 tokens: positions uploaded rather than passed inline
    const uint32_t seed = nextSeed();
    auto x = randn(size_t(n * c.heads * c.headDim), seed);
    std::vector<float> inv(size_t(c.rotDim / 2));
    for (size_t j = 0; j < inv.size(); j++) inv[j] = 1.0f / std::pow(10000.0f, float(2 * j) / float(c.rotDim));
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; i++) pos[size_t(i)] = 1000 + 37 * i;
    RopeParams rp{inv.data(), c.rotDim, 1.25f, c.interleaved};
    auto ref = x;
    cpu->rope(ref.data() + c.offset, n, c.heads, c.headDim, pos.data(), rp);
    float* xd = up(x);
    gpu->rope(xd + c.offset, n, c.heads, c.headDim, pos.data(), rp);
    EXPECT_LT(relErr(down(xd, x.size()), ref), kTol) << "heads " << c.heads << " rotDim " << c.rotDim;
  }
}

// q/k norm + rope in one launch (Backend::qkNormRope) against the CPU's rmsNorm then rope.
TEST_F(CudaOps, QkNormRopeMatchesCpu) {
  struct Case { int64_t qHeads, kHeads, headDim, rotDim, n; bool norm, interleaved; };
  for (Case c : {Case{8, 2, 128, 128, 1, true, false}, Case{4, 4, 64, 32, 3, true, true},
                 Case{6, 2, 96, 64, 1, false, false}, Case{4, 1, 128, 128, 40, true, false}}) {
    const uint32_t seed = nextSeed();
    auto q = randn(size_t(c.n * c.qHeads * c.headDim), seed, 2.0f), k = randn(size_t(c.n * c.kHeads * c.headDim), seed + 1);
    auto qw = randn(size_t(c.headDim), seed + 2), kw = randn(size_t(c.headDim), seed + 3);
    std::vector<float> inv(size_t(c.rotDim / 2));
    for (size_t j = 0; j < inv.size(); j++) inv[j] = 1.0f / std::pow(10000.0f, float(2 * j) / float(c.rotDim));
    std::vector<int64_t> pos(static_cast<size_t>(c.n));
    for (int64_t i = 0; i < c.n; i++) pos[size_t(i)] = 500 + 11 * i;
    RopeParams rp{inv.data(), c.rotDim, 1.0f, c.interleaved};
    auto qr = q, kr = k;
    cpu->qkNormRope(qr.data(), kr.data(), c.n, c.qHeads, c.kHeads, c.headDim, c.norm ? qw.data() : nullptr,
                    c.norm ? kw.data() : nullptr, 1e-6f, pos.data(), rp);
    float *qd = up(q), *kd = up(k);
    gpu->qkNormRope(qd, kd, c.n, c.qHeads, c.kHeads, c.headDim, c.norm ? up(qw) : nullptr, c.norm ? up(kw) : nullptr,
                    1e-6f, pos.data(), rp);
    EXPECT_LT(relErr(down(qd, q.size()), qr), kTol) << "q heads " << c.qHeads << " n " << c.n << " seed " << seed;
    EXPECT_LT(relErr(down(kd, k.size()), kr), kTol) << "k heads " << c.kHeads << " n " << c.n << " seed " << seed;
  }
}

TEST_F(CudaOps, AttentionChunksGqaWindowsSinks) {
  struct Case { int64_t H, KVH, D, VD, T, n; };
  for (Case c : {Case{4, 2, 16, 8, 37, 3}, Case{8, 1, 64, 64, 200, 1}, Case{6, 6, 24, 24, 50, 50},
                 Case{4, 1, 96, 96, 20, 2}}) {
    for (int64_t window : {int64_t(0), int64_t(5)}) {
      for (bool sinks : {false, true}) {
        const uint32_t seed = nextSeed();
        auto k = randn(size_t(c.T * c.KVH * c.D), seed), v = randn(size_t(c.T * c.KVH * c.VD), seed + 1);
        auto q = randn(size_t(c.n * c.H * c.D), seed + 2);
        auto sinkv = randn(size_t(c.H), seed + 3);
        std::vector<int64_t> pos(size_t(c.n));
        for (int64_t i = 0; i < c.n; i++) pos[size_t(i)] = c.T - c.n + i;
        AttentionParams p{c.H, c.KVH, c.D, c.VD, 1.0f / std::sqrt(float(c.D)), window, nullptr};
        // uneven chunks
        const int64_t cut1 = c.T / 3, cut2 = cut1 + 1;
        auto mk = [&](const float* kb, const float* vb) {
          return std::vector<KVChunk>{{0, cut1, kb, vb},
                                      {cut1, cut2, kb + cut1 * c.KVH * c.D, vb + cut1 * c.KVH * c.VD},
                                      {cut2, c.T, kb + cut2 * c.KVH * c.D, vb + cut2 * c.KVH * c.VD}};
        };
        std::vector<float> ref(size_t(c.n * c.H * c.VD));
        p.sinks = sinks ? sinkv.data() : nullptr;
        auto hc = mk(k.data(), v.data());
        cpu->attention(q.data(), c.n, pos.data(), hc.data(), 3, p, ref.data());
        auto dc = mk(up(k), up(v));
        p.sinks = sinks ? up(sinkv) : nullptr;
        float* o = poisoned(ref.size());
        gpu->attention(up(q), c.n, pos.data(), dc.data(), 3, p, o);
        EXPECT_LT(relErr(down(o, ref.size()), ref), kTol)
            << "H " << c.H << " KVH " << c.KVH << " D " << c.D << " T " << c.T << " n " << c.n << " window "
            << window << " sinks " << sinks << " seed " << seed;
      }
    }
  }
}

TEST_F(CudaOps, SwigluAxpyFill) {
  const int64_t n = 10007;
  const uint32_t seed = nextSeed();
  auto g = randn(size_t(n), seed, 4.0f), u = randn(size_t(n), seed + 1, 4.0f);
  for (float limit : {0.0f, 7.0f}) {
    std::vector<float> ref(static_cast<size_t>(n));
    cpu->swiglu(g.data(), u.data(), n, limit, 1.702f, ref.data());
    float* o = poisoned(size_t(n));
    gpu->swiglu(up(g), up(u), n, limit, 1.702f, o);
    EXPECT_LT(relErr(down(o, size_t(n)), ref), kTol) << "limit " << limit;
  }
  auto ref = u;
  cpu->axpy(0.37f, g.data(), n, ref.data());
  float* yd = up(u);
  gpu->axpy(0.37f, up(g), n, yd);
  EXPECT_LT(relErr(down(yd, size_t(n)), ref), kTol);
  gpu->fill(yd, n, 2.5f);
  EXPECT_EQ(down(yd, size_t(n)), std::vector<float>(size_t(n), 2.5f));
}

// The greedy pick on the device against the host's (firstMaxIndex) across block counts (2048 values per block, at
// most 128 blocks), with ties, NaN and repeated launches (each launch must leave its counters at zero).
TEST_F(CudaOps, ArgmaxMatchesHostPick) {
  const uint32_t seed = nextSeed();
  std::mt19937 g(seed);
  for (int64_t n : {int64_t(1), int64_t(5), int64_t(2047), int64_t(2048), int64_t(2049), int64_t(151936),
                    int64_t(300017)}) {
    const int64_t rows = 4;
    auto x = randn(size_t(rows * n), seed + uint32_t(n));
    std::uniform_int_distribution<int64_t> at(0, n - 1);
    x[size_t(at(g))] = 50.0f;                 // row 0: one clear maximum
    const int64_t a = at(g), c = at(g);       // row 1: the same maximum twice: the lower index wins
    x[size_t(n + a)] = x[size_t(n + c)] = 60.0f;
    x[size_t(2 * n)] = NAN;                   // row 2: a NaN at index 0 is kept
    x[size_t(3 * n + at(g))] = NAN;           // row 3: a NaN elsewhere never wins
    const float* d = up(x);
    for (int rep = 0; rep < 3; rep++) {
      int32_t got[4] = {-1, -1, -1, -1};
      gpu->argmax(d, rows, n, got);
      for (int64_t r = 0; r < rows; r++)
        EXPECT_EQ(got[r], firstMaxIndex(x.data() + r * n, n)) << "n " << n << " row " << r << " rep " << rep
                                                              << " seed " << seed;
    }
    int32_t one = -1;  // one row after four: the counters of rows 1-3 must not matter
    gpu->argmax(d + n, 1, n, &one);
    EXPECT_EQ(one, firstMaxIndex(x.data() + n, n)) << "n " << n;
  }
}

// MoE prefill's row moves: gather token rows for an expert, add its weighted outputs back, against the CPU.
TEST_F(CudaOps, GatherAndScatterAddRows) {
  const int64_t tokens = 37, dim = 2050;
  const uint32_t seed = nextSeed();
  auto h = randn(size_t(tokens * dim), seed), base = randn(size_t(tokens * dim), seed + 1);
  const std::vector<int64_t> rows = {36, 0, 5, 17, 2, 35, 9};
  const std::vector<float> w = {0.5f, -1.25f, 2.0f, 0.1f, 1.0f, 0.75f, -0.3f};
  const int64_t count = int64_t(rows.size());
  std::vector<float> refG(size_t(count * dim)), refS = base;
  cpu->gatherRows(h.data(), rows.data(), count, dim, refG.data());
  cpu->scatterAddRows(refG.data(), rows.data(), w.data(), count, dim, refS.data());
  for (int64_t i = 0; i < count; i++)  // the CPU reference itself: row i is token rows[i]
    ASSERT_EQ(refG[size_t(i * dim + 3)], h[size_t(rows[size_t(i)] * dim + 3)]);
  float* g = poisoned(size_t(count * dim));
  gpu->gatherRows(up(h), rows.data(), count, dim, g);
  EXPECT_EQ(down(g, refG.size()), refG) << "seed " << seed;
  float* s = up(base);
  gpu->scatterAddRows(g, rows.data(), w.data(), count, dim, s);
  EXPECT_LT(relErr(down(s, refS.size()), refS), kTol) << "seed " << seed;
}

TEST_F(CudaOps, TierCopiesRoundTrip) {
  const size_t n = (size_t(1) << 20) + 3;
  auto x = randn(n, nextSeed());
  auto* host = static_cast<float*>(gpu->allocate(Tier::Host, n * 4));  // pinned
  std::memcpy(host, x.data(), n * 4);
  auto* d1 = static_cast<float*>(gpu->allocate(Tier::Device, n * 4));
  auto* d2 = static_cast<float*>(gpu->allocate(Tier::Device, n * 4));
  gpu->copy(d1, Tier::Device, host, Tier::Host, n * 4);
  gpu->copy(d2, Tier::Device, d1, Tier::Device, n * 4);
  std::vector<float> back(n);
  gpu->copy(back.data(), Tier::Host, d2, Tier::Device, n * 4);
  EXPECT_EQ(back, x);
  uint64_t total = 0, free = 0;
  EXPECT_TRUE(gpu->deviceMemory(&total, &free));
  EXPECT_GT(total, 0u);
  EXPECT_FALSE(gpu->hostVisible());
  gpu->release(Tier::Device, d1, n * 4);
  gpu->release(Tier::Device, d2, n * 4);
  gpu->release(Tier::Host, host, n * 4);
  EXPECT_THROW(gpu->allocate(Tier::Disk, 16), Error);
  // Host-tier buffers (mapped, huge pages asked for, registered) of sizes around the 2 MiB page: device -> host tier
  // -> device copies keep every byte.
  for (size_t bytes : {size_t(1), size_t(2) << 20, (size_t(3) << 20) + 5}) {
    std::vector<uint8_t> want(bytes);
    for (size_t i = 0; i < bytes; i++) want[i] = uint8_t(i * 131 + bytes);
    auto* d = static_cast<uint8_t*>(gpu->allocate(Tier::Device, bytes));
    auto* h = static_cast<uint8_t*>(gpu->allocate(Tier::Host, bytes));
    auto* h2 = static_cast<uint8_t*>(gpu->allocate(Tier::Host, bytes));
    gpu->copy(d, Tier::Device, want.data(), Tier::Host, bytes);
    gpu->copy(h, Tier::Host, d, Tier::Device, bytes);  // into the pinned buffer
    EXPECT_EQ(std::memcmp(h, want.data(), bytes), 0) << bytes;
    gpu->fill(reinterpret_cast<float*>(d), int64_t(bytes / 4), 0.0f);
    gpu->copy(d, Tier::Device, h, Tier::Host, bytes);  // from it
    gpu->copy(h2, Tier::Host, d, Tier::Device, bytes);
    EXPECT_EQ(std::memcmp(h2, want.data(), bytes), 0) << bytes;
    gpu->release(Tier::Host, h, bytes);
    gpu->release(Tier::Host, h2, bytes);
    gpu->release(Tier::Device, d, bytes);
  }
}

TEST(CudaSelect, AutoFallsBackToCpuWithoutGpu) {
  std::string why;
  auto b = makeBackend("auto");
  if (cudaDeviceCount(&why) > 0) EXPECT_EQ(b->name().rfind("cuda", 0), 0u) << b->name();
  else {
    EXPECT_EQ(b->name().rfind("cpu", 0), 0u) << b->name();
    EXPECT_THROW(makeBackend("cuda"), Error);
  }
  EXPECT_THROW(makeBackend("tpu"), Error);
}

// The grouped MoE (decode: every selected expert of a token in two launches) against the CPU's one expert at a
// time, for each weight type, plain and clamped SwiGLU; column layout falls back to the per-expert path.
TEST_F(CudaOps, GroupedMoeExpertsMatchCpu) {
  const int64_t hid = 256, inter = 96, K = 5;
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (Layout layout : {Layout::Row, Layout::Column})
      for (float limit : {0.0f, 7.0f}) {
        const uint32_t seed = nextSeed();
        const Experts ex = makeExperts(K, inter, hid, dt, layout, seed);
        auto x = randn(size_t(hid), seed + 99);
        auto out0 = randn(size_t(hid), seed + 98);
        auto ref = out0;
        cpu->moeExperts(x.data(), ex.hc.data(), K, limit, 1.702f, ref.data());
        float* o = up(out0);
        gpu->moeExperts(up(x), ex.dc.data(), K, limit, 1.702f, o);
        EXPECT_LT(relErr(down(o, size_t(hid)), ref), kTol)
            << dtypeName(dt) << " " << layoutName(layout) << " limit " << limit << " seed " << seed;
      }
}

// Device routing (softmax top-k over the router logits, renormalised or not) + the grouped experts, against the
// same routing done here and the CPU's experts.
TEST_F(CudaOps, RoutedOnDeviceMatchesHostRouting) {
  const int64_t hid = 128, inter = 64, E = 40, K = 6;
  for (bool norm : {true, false}) {
    const uint32_t seed = nextSeed();
    const Experts ex = makeExperts(E, inter, hid, DType::BF16, Layout::Row, seed);
    const std::vector<ExpertCall>& hc = ex.hc;
    auto x = randn(size_t(hid), seed + 99);
    auto logits = randn(size_t(E), seed + 97, 2.0f);
    // host routing as model/routing.cpp does it
    float m = *std::max_element(logits.begin(), logits.end()), sum = 0;
    std::vector<float> p(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; e++) sum += (p[size_t(e)] = std::exp(logits[size_t(e)] - m));
    for (auto& v : p) v /= sum;
    std::vector<int64_t> order(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; e++) order[size_t(e)] = e;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
    float ksum = 0;
    for (int64_t k = 0; k < K; k++) ksum += p[size_t(order[size_t(k)])];
    std::vector<ExpertCall> chosen;
    for (int64_t k = 0; k < K; k++) {
      ExpertCall c = hc[size_t(order[size_t(k)])];
      c.weight = norm ? p[size_t(order[size_t(k)])] / ksum : p[size_t(order[size_t(k)])];
      chosen.push_back(c);
    }
    const std::vector<float> residual = randn(size_t(hid), seed + 95);  // the experts' sum is added to it
    std::vector<float> ref = residual;
    cpu->moeExperts(x.data(), chosen.data(), K, 0.0f, 1.702f, ref.data());
    float* o = up(residual);
    ASSERT_TRUE(gpu->moeRoutedOnDevice(up(x), up(logits), ex.dc.data(), E, K, norm, 0.0f, 1.702f, o));
    EXPECT_LT(relErr(down(o, size_t(hid)), ref), kTol) << "norm " << norm << " seed " << seed;
    EXPECT_FALSE(cpu->moeRoutedOnDevice(x.data(), logits.data(), hc.data(), E, K, norm, 0.0f, 1.702f, ref.data()));
  }
}

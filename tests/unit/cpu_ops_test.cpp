// The CPU backend's ops against naive double-precision references on seeded random data.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend.h"
#include "model/rope.h"

using namespace doppler;

namespace {
std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
double maxRel(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0, s = 1e-12;
  for (double x : b) s = std::max(s, std::abs(x));
  for (size_t i = 0; i < a.size(); i++) m = std::max(m, std::abs(a[i] - b[i]) / s);
  return m;
}

// Naive attention: query i at positions[i] over keys 0..pos (window, sinks).
std::vector<double> naiveAttention(const std::vector<float>& q, const std::vector<float>& k,
                                   const std::vector<float>& v, int64_t n, const std::vector<int64_t>& pos,
                                   const AttentionParams& p) {
  std::vector<double> out(size_t(n * p.numHeads * p.vDim));
  const int64_t group = p.numHeads / p.numKvHeads;
  for (int64_t i = 0; i < n; i++)
    for (int64_t h = 0; h < p.numHeads; h++) {
      const int64_t kvh = h / group;
      std::vector<double> s;
      std::vector<int64_t> ts;
      for (int64_t t = 0; t <= pos[size_t(i)]; t++) {
        if (p.window > 0 && t <= pos[size_t(i)] - p.window) continue;
        double dot = 0;
        for (int64_t d = 0; d < p.headDim; d++)
          dot += double(q[size_t((i * p.numHeads + h) * p.headDim + d)]) * k[size_t((t * p.numKvHeads + kvh) * p.headDim + d)];
        s.push_back(dot * p.scale);
        ts.push_back(t);
      }
      double m = -1e300;
      for (double x : s) m = std::max(m, x);
      if (p.sinks) m = std::max(m, double(p.sinks[h]));
      double den = p.sinks ? std::exp(p.sinks[h] - m) : 0;
      for (double x : s) den += std::exp(x - m);
      for (int64_t d = 0; d < p.vDim; d++) {
        double acc = 0;
        for (size_t j = 0; j < s.size(); j++)
          acc += std::exp(s[j] - m) / den * v[size_t((ts[j] * p.numKvHeads + kvh) * p.vDim + d)];
        out[size_t((i * p.numHeads + h) * p.vDim + d)] = acc;
      }
    }
  return out;
}
}  // namespace

class CpuOps : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> b = makeCpuBackend();
};

// The greedy pick: the first maximum, as std::max_element (NaN never wins; a NaN at index 0 is kept).
TEST_F(CpuOps, ArgmaxPicksTheFirstMaximum) {
  const float nan = NAN, inf = INFINITY;
  const std::vector<std::pair<std::vector<float>, int32_t>> cases = {
      {{1, 3, 3, 2}, 1}, {{nan, 5, 1}, 0}, {{1, nan, 5, 5}, 2}, {{-inf, -inf}, 0}, {{nan, nan}, 0}, {{7}, 0},
      {{-2, -1, inf, 0}, 2}};
  for (const auto& [x, want] : cases) {
    int32_t got = -1;
    b->argmax(x.data(), 1, int64_t(x.size()), &got);
    EXPECT_EQ(got, want) << ::testing::PrintToString(x);
    EXPECT_EQ(firstMaxIndex(x.data(), int64_t(x.size())), want);
  }
  const std::vector<float> rows = {0, 4, 4, 1, 9, 9, 8, nan, 2};  // 3 rows of 3
  int32_t got[3] = {-1, -1, -1};
  b->argmax(rows.data(), 3, 3, got);
  EXPECT_EQ(got[0], 1);
  EXPECT_EQ(got[1], 1);
  EXPECT_EQ(got[2], 0);
}

TEST_F(CpuOps, AttentionMatchesNaiveAcrossChunksWindowsAndSinks) {
  const int64_t H = 4, KVH = 2, D = 16, VD = 8, T = 37;
  auto k = randn(size_t(T * KVH * D), 1), v = randn(size_t(T * KVH * VD), 2);
  for (int64_t window : {0, 5}) {
    for (bool sinks : {false, true}) {
      const int64_t n = 3;  // the last 3 positions as queries
      std::vector<int64_t> pos{T - 3, T - 2, T - 1};
      auto q = randn(size_t(n * H * D), 3);
      auto sinkv = randn(size_t(H), 4);
      AttentionParams p{H, KVH, D, VD, 0.25f, window, sinks ? sinkv.data() : nullptr};
      // split the cache into uneven chunks
      std::vector<KVChunk> chunks{{0, 10, k.data(), v.data()},
                                  {10, 11, k.data() + 10 * KVH * D, v.data() + 10 * KVH * VD},
                                  {11, T, k.data() + 11 * KVH * D, v.data() + 11 * KVH * VD}};
      std::vector<float> out(size_t(n * H * VD));
      b->attention(q.data(), n, pos.data(), chunks.data(), 3, p, out.data());
      EXPECT_LT(maxRel(out, naiveAttention(q, k, v, n, pos, p)), 1e-5) << "window " << window << " sinks " << sinks;
    }
  }
}

TEST_F(CpuOps, RopeRotatesHalvesOrPairs) {
  const int64_t n = 3, heads = 2, D = 8;
  auto x = randn(size_t(n * heads * D), 5);
  std::vector<int64_t> pos{0, 7, 100};
  RopeConfig rc;
  rc.theta = 10000;
  RopeTable t = computeRope(rc, D, 4096);
  for (bool inter : {false, true}) {
    auto y = x;
    b->rope(y.data(), n, heads, D, pos.data(), RopeParams{t.invFreq.data(), D, 1.0f, inter});
    std::vector<double> ref(y.size());
    for (int64_t i = 0; i < n; i++)
      for (int64_t h = 0; h < heads; h++)
        for (int64_t j = 0; j < D / 2; j++) {
          double ang = double(pos[size_t(i)]) / std::pow(10000.0, 2.0 * j / D);
          int64_t a = inter ? 2 * j : j, c = inter ? 2 * j + 1 : j + D / 2;
          size_t base = size_t((i * heads + h) * D);
          ref[base + a] = x[base + a] * std::cos(ang) - x[base + c] * std::sin(ang);
          ref[base + c] = x[base + c] * std::cos(ang) + x[base + a] * std::sin(ang);
        }
    EXPECT_LT(maxRel(y, ref), 2e-5);
  }
}

TEST_F(CpuOps, NormsAndSwiglu) {
  const int64_t rows = 3, dim = 33;
  auto x = randn(size_t(rows * dim), 6), w = randn(size_t(dim), 7), bias = randn(size_t(dim), 8);
  std::vector<float> y(x.size()), z(x.size());
  b->rmsNorm(x.data(), rows, dim, w.data(), 1e-6f, y.data());
  b->layerNorm(x.data(), rows, dim, w.data(), bias.data(), 1e-5f, z.data());
  std::vector<double> ry(x.size()), rz(x.size());
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0, mean = 0, var = 0;
    for (int64_t i = 0; i < dim; i++) ss += double(x[size_t(r * dim + i)]) * x[size_t(r * dim + i)], mean += x[size_t(r * dim + i)];
    mean /= dim;
    for (int64_t i = 0; i < dim; i++) var += std::pow(x[size_t(r * dim + i)] - mean, 2);
    var /= dim;
    for (int64_t i = 0; i < dim; i++) {
      ry[size_t(r * dim + i)] = x[size_t(r * dim + i)] / std::sqrt(ss / dim + 1e-6) * w[size_t(i)];
      rz[size_t(r * dim + i)] = (x[size_t(r * dim + i)] - mean) / std::sqrt(var + 1e-5) * w[size_t(i)] + bias[size_t(i)];
    }
  }
  EXPECT_LT(maxRel(y, ry), 1e-5);
  EXPECT_LT(maxRel(z, rz), 1e-5);

  auto g = randn(64, 9, 4.0f), u = randn(64, 10, 4.0f);
  std::vector<float> o(64), oc(64);
  b->swiglu(g.data(), u.data(), 64, 0.0f, 1.702f, o.data());
  b->swiglu(g.data(), u.data(), 64, 7.0f, 1.702f, oc.data());
  std::vector<double> ro(64), roc(64);
  for (size_t i = 0; i < 64; i++) {
    ro[i] = g[i] / (1 + std::exp(-double(g[i]))) * u[i];
    double gc = std::min<double>(g[i], 7.0), uc = std::clamp<double>(u[i], -7.0, 7.0);
    roc[i] = gc / (1 + std::exp(-1.702 * gc)) * (uc + 1);
  }
  EXPECT_LT(maxRel(o, ro), 1e-5);
  EXPECT_LT(maxRel(oc, roc), 1e-5);
}

TEST(Rope, Llama3ScalingMatchesTransformersFormula) {
  // Spot values computed with transformers' _compute_llama3_parameters formula (in double) for
  // theta 500000, dim 16, factor 8, low 1, high 4, original context 64.
  RopeConfig rc;
  rc.type = "llama3";
  rc.theta = 500000;
  rc.factor = 8;
  rc.lowFreqFactor = 1;
  rc.highFreqFactor = 4;
  rc.originalMaxPositions = 64;
  RopeTable t = computeRope(rc, 16, 4096);
  ASSERT_EQ(t.invFreq.size(), 8u);
  for (int j = 0; j < 8; j++) {
    double f = 1.0 / std::pow(500000.0, 2.0 * j / 16);
    double wave = 2 * M_PI / f;
    double expect = f;
    if (wave > 64.0) expect = f / 8;
    if (wave >= 16.0 && wave <= 64.0) {
      double smooth = (64.0 / wave - 1) / 3;
      expect = (1 - smooth) * f / 8 + smooth * f;
    }
    EXPECT_NEAR(t.invFreq[size_t(j)], expect, 1e-6 * std::max(1.0, expect)) << j;
  }
}

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "engine/sampler.h"

using namespace doppler;

namespace {
std::vector<float> logitsFor(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(float(std::log(p)));
  return l;
}
std::map<int32_t, int> histogram(SamplerConfig cfg, const std::vector<float>& logits, int draws) {
  Sampler s(cfg);
  std::map<int32_t, int> h;
  for (int i = 0; i < draws; i++) {
    auto l = logits;
    h[s.sample(l, {})]++;
  }
  return h;
}
}  // namespace

TEST(Sampler, GreedyTakesFirstMaximum) {
  Sampler s(SamplerConfig{});
  std::vector<float> l{0.1f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  SamplerConfig c{.temperature = 1.0f, .topK = 0, .topP = 1.0f, .minP = 0.0f, .seed = 42};
  auto logits = logitsFor({0.1, 0.2, 0.3, 0.4});
  std::vector<int32_t> a, b;
  Sampler s1(c), s2(c);
  for (int i = 0; i < 50; i++) {
    auto l1 = logits, l2 = logits;
    a.push_back(s1.sample(l1, {}));
    b.push_back(s2.sample(l2, {}));
  }
  EXPECT_EQ(a, b);
  c.seed = 43;
  Sampler s3(c);
  std::vector<int32_t> d;
  for (int i = 0; i < 50; i++) {
    auto l = logits;
    d.push_back(s3.sample(l, {}));
  }
  EXPECT_NE(a, d);
}

TEST(Sampler, TemperatureOneFollowsTheDistribution) {
  SamplerConfig c{.temperature = 1.0f, .topK = 0, .topP = 1.0f, .minP = 0.0f, .seed = 7};
  auto h = histogram(c, logitsFor({0.1, 0.2, 0.3, 0.4}), 20000);
  EXPECT_NEAR(h[0] / 20000.0, 0.1, 0.015);
  EXPECT_NEAR(h[3] / 20000.0, 0.4, 0.015);
}

TEST(Sampler, TopKTopPMinPFilter) {
  auto l = logitsFor({0.05, 0.15, 0.3, 0.5});
  auto hk = histogram({.temperature = 1.0f, .topK = 2, .topP = 1.0f, .minP = 0.0f, .seed = 1}, l, 3000);
  EXPECT_EQ(hk.count(0) + hk.count(1), 0u);
  EXPECT_NEAR(hk[3] / 3000.0, 0.5 / 0.8, 0.03);
  // top-p 0.6: {0.5, 0.3} reaches 0.8 >= 0.6 -> two tokens survive
  auto hp = histogram({.temperature = 1.0f, .topK = 0, .topP = 0.6f, .minP = 0.0f, .seed = 1}, l, 3000);
  EXPECT_EQ(hp.count(0) + hp.count(1), 0u);
  EXPECT_GT(hp[2], 0);
  // min-p 0.5: keep p >= 0.25 -> {0.5, 0.3}
  auto hm = histogram({.temperature = 1.0f, .topK = 0, .topP = 1.0f, .minP = 0.5f, .seed = 1}, l, 3000);
  EXPECT_EQ(hm.count(0) + hm.count(1), 0u);
  EXPECT_GT(hm[2], 0);
}

TEST(Sampler, RepetitionPenaltyAsTransformers) {
  SamplerConfig c;
  c.repetitionPenalty = 2.0f;
  Sampler s(c);
  std::vector<float> l{3.0f, 2.0f, -1.0f};
  std::vector<int32_t> ctx{0, 2};
  EXPECT_EQ(s.sample(l, ctx), 1);  // 3/2 = 1.5 < 2
  EXPECT_FLOAT_EQ(l[0], 1.5f);
  EXPECT_FLOAT_EQ(l[2], -2.0f);  // negative logits are multiplied
}

TEST(Sampler, RejectsBadOptions) {
  EXPECT_THROW(Sampler(SamplerConfig{.temperature = -1.0f}), Error);
  EXPECT_THROW(Sampler(SamplerConfig{.temperature = 1.0f, .topK = 0, .topP = 0.0f}), Error);
  EXPECT_THROW(Sampler(SamplerConfig{.temperature = 1.0f, .topK = 0, .topP = 1.0f, .minP = 1.5f}), Error);
}

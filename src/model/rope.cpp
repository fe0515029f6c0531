#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace doppler {

double yarnGetMscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

namespace {
// 1 / base^(2j/dim) in f32 as transformers computes it.
std::vector<float> baseInvFreq(double theta, int64_t dim) {
  std::vector<float> f(static_cast<size_t>(dim / 2));
  for (int64_t j = 0; j < dim / 2; j++) {
    float expo = float(2 * j) / float(dim);
    f[size_t(j)] = 1.0f / std::pow(float(theta), expo);
  }
  return f;
}
}  // namespace

RopeTable computeRope(const RopeConfig& rc, int64_t rotDim, int64_t maxPositions, int64_t seqLen) {
  check(rotDim > 0 && rotDim % 2 == 0, "rope: rotary dimension {} must be positive and even", rotDim);
  RopeTable t;
  t.rotDim = rotDim;
  const int64_t half = rotDim / 2;
  if (rc.type == "default" || rc.type.empty()) {
    t.invFreq = baseInvFreq(rc.theta, rotDim);
  } else if (rc.type == "linear") {
    t.invFreq = baseInvFreq(rc.theta, rotDim);
    for (auto& f : t.invFreq) f = f / float(rc.factor);
  } else if (rc.type == "llama3") {
    auto inv = baseInvFreq(rc.theta, rotDim);
    const double factor = rc.factor, lo = rc.lowFreqFactor, hi = rc.highFreqFactor;
    const double oldCtx = double(rc.originalMaxPositions);
    check(oldCtx > 0 && hi != lo, "rope llama3: needs original_max_position_embeddings and high_freq_factor != low_freq_factor");
    const double loWave = oldCtx / lo, hiWave = oldCtx / hi;
    t.invFreq.resize(size_t(half));
    for (int64_t j = 0; j < half; j++) {
      const float f = inv[size_t(j)];
      const float wave = float(2 * M_PI) / f;
      float scaled = wave > float(loWave) ? f / float(factor) : f;
      const bool medium = !(wave < float(hiWave)) && !(wave > float(loWave));
      if (medium) {
        const float smooth = (float(oldCtx) / wave - float(lo)) / float(hi - lo);
        scaled = (1 - smooth) * scaled / float(factor) + smooth * scaled;
      }
      t.invFreq[size_t(j)] = scaled;
    }
  } else if (rc.type == "yarn") {
    // transformers v5: rope_parameters' factor (the config reader fills in max_position_embeddings / original
    // when the file gives none); the correction range uses original_max_position_embeddings.
    const double factor = rc.factor;
    const int64_t origMax = rc.originalMaxPositions > 0 ? rc.originalMaxPositions : maxPositions;
    double attn;
    if (rc.attentionFactor) {
      attn = *rc.attentionFactor;
    } else if (rc.mscale != 0 && rc.mscaleAllDim != 0) {
      attn = yarnGetMscale(factor, rc.mscale) / yarnGetMscale(factor, rc.mscaleAllDim);
    } else {
      attn = yarnGetMscale(factor);
    }
    const double base = rc.theta;
    auto corrDim = [&](double rot) {
      return (double(rotDim) * std::log(double(origMax) / (rot * 2 * M_PI))) / (2 * std::log(base));
    };
    double low = corrDim(rc.betaFast), high = corrDim(rc.betaSlow);
    if (rc.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, double(rotDim - 1));
    if (low == high) high += 0.001;
    t.invFreq.resize(size_t(half));
    for (int64_t j = 0; j < half; j++) {
      const float posFreq = std::pow(float(base), float(2 * j) / float(rotDim));
      const float extra = 1.0f / posFreq;
      const float inter = 1.0f / (float(factor) * posFreq);
      const float ramp = std::clamp((float(j) - float(low)) / float(high - low), 0.0f, 1.0f);
      const float extraFactor = 1.0f - ramp;
      t.invFreq[size_t(j)] = inter * (1 - extraFactor) + extra * extraFactor;
    }
    t.attentionScale = float(attn);
  } else if (rc.type == "longrope") {
    const int64_t origMax = rc.originalMaxPositions > 0 ? rc.originalMaxPositions : maxPositions;
    const bool useLong = seqLen > origMax;
    const auto& ext = useLong ? rc.longFactor : rc.shortFactor;
    check(int64_t(ext.size()) == half, "rope longrope: {} factors given, expected {} (rotary dim / 2)",
          ext.size(), half);
    t.invFreq.resize(size_t(half));
    for (int64_t j = 0; j < half; j++) {
      const float posFreq = std::pow(float(rc.theta), float(2 * j) / float(rotDim));
      t.invFreq[size_t(j)] = 1.0f / (float(ext[size_t(j)]) * posFreq);
    }
    // phimoe's rotary embedding: long_mscale / short_mscale (by the same test) override the attention factor.
    double attn;
    const auto& ms = useLong ? rc.longMscale : rc.shortMscale;
    if (ms) {
      attn = *ms;
    } else if (rc.attentionFactor) {
      attn = *rc.attentionFactor;
    } else {
      const double factor = rc.factor;  // max_position_embeddings / original unless the file gives one
      attn = factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(factor) / std::log(double(origMax)));
    }
    t.attentionScale = float(attn);
  } else {
    fail("unsupported rope_type '{}' (supported: default, linear, llama3, yarn, longrope)", rc.type);
  }
  return t;
}

}  // namespace doppler

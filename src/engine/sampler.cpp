#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "backend/backend.h"
#include "core/error.h"

namespace doppler {

void validateSamplerConfig(const SamplerConfig& c) {
  check(std::isfinite(c.temperature) && c.temperature >= 0, "--temp must be >= 0 (got {})", c.temperature);
  check(c.topK >= 0, "--top-k must be >= 0 (got {})", c.topK);
  check(c.topP > 0 && c.topP <= 1, "--top-p must be in (0, 1] (got {})", c.topP);
  check(c.minP >= 0 && c.minP < 1, "--min-p must be in [0, 1) (got {})", c.minP);
  check(c.repetitionPenalty > 0 && std::isfinite(c.repetitionPenalty), "--repeat-penalty must be > 0 (got {})",
        c.repetitionPenalty);
  check(c.repeatLastN >= 0, "--repeat-last-n must be >= 0 (got {})", c.repeatLastN);
}

Sampler::Sampler(const SamplerConfig& cfg) : cfg_(cfg), rng_(cfg.seed) { validateSamplerConfig(cfg); }

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

DeviceSampling Sampler::nextDeviceSampling() {
  DeviceSampling s;
  s.temperature = cfg_.temperature;
  s.topK = int(cfg_.topK);
  s.topP = cfg_.topP;
  s.minP = cfg_.minP;
  s.u = uniform();
  return s;
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> context) {
  const int64_t V = int64_t(logits.size());
  check(V > 0, "sampler: empty logits");
  if (cfg_.repetitionPenalty != 1.0f) {
    size_t start = cfg_.repeatLastN > 0 && context.size() > size_t(cfg_.repeatLastN)
                       ? context.size() - size_t(cfg_.repeatLastN) : 0;
    std::unordered_set<int32_t> seen(context.begin() + long(start), context.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= V) continue;
      float& l = logits[size_t(t)];
      l = l < 0 ? l * cfg_.repetitionPenalty : l / cfg_.repetitionPenalty;
    }
  }
  if (cfg_.temperature <= 0) {  // greedy: first maximum
    return firstMaxIndex(logits.data(), V);
  }
  cand_.clear();
  cand_.reserve(size_t(V));
  for (int64_t i = 0; i < V; i++) cand_.emplace_back(logits[size_t(i)] / cfg_.temperature, int32_t(i));
  auto byLogit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (cfg_.topK > 0 && size_t(cfg_.topK) < keep) {
    keep = size_t(cfg_.topK);
    std::partial_sort(cand_.begin(), cand_.begin() + long(keep), cand_.end(), byLogit);
    cand_.resize(keep);
  } else {
    std::sort(cand_.begin(), cand_.end(), byLogit);
  }
  // softmax over the survivors (sorted descending)
  const float m = cand_[0].first;
  std::vector<double> p(cand_.size());
  double sum = 0;
  for (size_t i = 0; i < cand_.size(); i++) sum += (p[i] = std::exp(double(cand_[i].first - m)));
  for (auto& v : p) v /= sum;
  if (cfg_.topP < 1.0f) {  // smallest prefix with mass >= top_p (at least one token)
    double cum = 0;
    size_t n = 0;
    while (n < p.size()) {
      cum += p[n++];
      if (cum >= cfg_.topP) break;
    }
    p.resize(n);
  }
  if (cfg_.minP > 0) {  // drop tokens with p < min_p * p_max
    const double thr = cfg_.minP * p[0];
    size_t n = 1;
    while (n < p.size() && p[n] >= thr) n++;
    p.resize(n);
  }
  double total = 0;
  for (double v : p) total += v;
  double r = uniform() * total;
  for (size_t i = 0; i < p.size(); i++) {
    r -= p[i];
    if (r < 0) return cand_[i].second;
  }
  return cand_[p.size() - 1].second;
}

}  // namespace doppler

// Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty; seeded (same seed, same text).
// Processing order follows transformers' generate(): repetition penalty, temperature, top-k, top-p, min-p.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "backend/backend.h"

namespace doppler {

struct SamplerConfig {
  float temperature = 0.0f;        // <= 0: greedy (argmax)
  int64_t topK = 0;                // 0: off
  float topP = 1.0f;               // 1: off
  float minP = 0.0f;               // 0: off
  float repetitionPenalty = 1.0f;  // 1: off; > 1 discourages tokens already in the context
  int64_t repeatLastN = 0;         // 0: the whole context is penalised
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerConfig& cfg);
  // Picks the next token from logits [vocab] (modified in place) given the context so far.
  int32_t sample(std::span<float> logits, std::span<const int32_t> context);
  const SamplerConfig& config() const { return cfg_; }
  // True when sample() is the argmax of the raw logits (greedy, no repetition penalty), so that the backend may
  // pick the token where the logits are (Model::forwardGreedy).
  bool greedy() const { return cfg_.temperature <= 0 && cfg_.repetitionPenalty == 1.0f; }
  // True when a backend that samples with top-k up to maxTopK can do what sample() does (temperature > 0, top-k on
  // and <= maxTopK, no repetition penalty). nextDeviceSampling() then gives a token's parameters and the next draw of
  // this sampler's random sequence (one per token, as sample() takes it), so the text is the same seed's.
  bool onDevice(int maxTopK) const {
    return cfg_.temperature > 0 && cfg_.repetitionPenalty == 1.0f && cfg_.topK >= 1 && cfg_.topK <= maxTopK;
  }
  DeviceSampling nextDeviceSampling();

 private:
  double uniform();  // [0, 1), identical across platforms for a seed
  SamplerConfig cfg_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
};

// Validates sampler options (ranges) with errors naming the flag.
void validateSamplerConfig(const SamplerConfig& cfg);

}  // namespace doppler

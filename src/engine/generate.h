// The prefill/decode loop.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/sampler.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace doppler {

struct GenerateStats {
  int64_t promptTokens = 0, generatedTokens = 0;
  double prefillSeconds = 0, decodeSeconds = 0;
  bool stoppedByEos = false;
  double prefillTokensPerSecond() const { return prefillSeconds > 0 ? double(promptTokens) / prefillSeconds : 0; }
  // Decode speed counts the forward passes after the first sampled token.
  double decodeTokensPerSecond() const {
    return decodeSeconds > 0 && generatedTokens > 1 ? double(generatedTokens - 1) / decodeSeconds : 0;
  }
};

// Prefills `prompt`, then samples up to maxNew tokens, calling onToken for each (return false to stop).
// Stops at any id in `stopIds`. The context (prompt + generated) must fit kv.capacity().
GenerateStats generate(Model& model, KVCache& kv, std::span<const int32_t> prompt, int64_t maxNew, Sampler& sampler,
                       std::span<const int32_t> stopIds, const std::function<bool(int32_t)>& onToken);

}  // namespace doppler

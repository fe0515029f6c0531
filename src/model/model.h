// A model: config + weights (through a WeightProvider) + a forward pass on a Backend.
// createModel picks the architecture's implementation (one file per architecture: llama.cpp,
// mixtral.cpp, qwen3_moe.cpp, ...), all built from the shared blocks in decoder.h.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "format/hf_config.h"
#include "kv/kv_cache.h"
#include "loader/weights.h"

namespace doppler {

class Model {
 public:
  virtual ~Model() = default;
  virtual const ModelConfig& config() const = 0;
  // K/V geometry per layer (what the KV cache must hold).
  virtual std::vector<KVLayerShape> kvShapes() const = 0;
  // Runs tokens ids[0..n) at positions [pos0, pos0 + n), appending their K/V to `kv`.
  // logits: [allLogits ? n : 1, vocab] (host memory), the last token's row when !allLogits.
  virtual void forward(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits,
                       float* logits) = 0;
  // forward() for greedy decoding: returns the argmax of the last token's logits (firstMaxIndex), picked where the
  // logits are (Backend::argmax: on a GPU only the token id crosses to the host). Default: through forward().
  virtual int32_t forwardGreedy(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv) {
    std::vector<float> logits(static_cast<size_t>(config().vocabSize));
    forward(ids, n, pos0, kv, false, logits.data());
    return firstMaxIndex(logits.data(), int64_t(logits.size()));
  }
  // Greedy decoding from a known token: feeds `tok` at position pos, then each picked token at the next position, for
  // up to `steps` steps and no position past kv.capacity(); onToken gets each picked token in order and returns
  // false to stop. Returns how many tokens onToken got. On a backend that keeps picks on the device
  // (Backend::devicePicks) the decoder runs one step ahead: step i + 1 is issued, and writes its K/V at pos + i + 1,
  // before step i's token has reached the host, so the GPU never waits for the host between steps; after a stop
  // the cache holds that one extra position (a later write there replaces it). Default: forwardGreedy step by step.
  virtual int64_t decodeGreedy(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                               const std::function<bool(int32_t)>& onToken) {
    int64_t i = 0;
    for (; i < steps && pos + i < kv.capacity(); i++) {
      tok = forwardGreedy(&tok, 1, pos + i, kv);
      if (!onToken(tok)) return i + 1;
    }
    return i;
  }
  // decodeGreedy with sampling instead of the greedy pick, on the device: `sampling` gives each step's parameters and
  // its uniform draw, called once per step in step order (engine/sampler.h draws them). Only where
  // deviceSamplingTopK() covers the top-k (Error otherwise).
  virtual int64_t decodeSampled(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                                const std::function<bool(int32_t)>& onToken,
                                const std::function<DeviceSampling()>& sampling) {
    fail("this model's backend cannot sample on the device");
  }
  // The largest top-k decodeSampled can sample with (0: none).
  virtual int deviceSamplingTopK() const { return 0; }
  // Hybrid execution (GPU backends with paged experts): a backend that computes on host memory with the host CPU,
  // for the experts the weight provider gives to the host (WeightProvider::splitExperts). nullptr: none.
  virtual void setHostBackend(Backend* host) {}
};

// Throws Error for an architecture the engine cannot run yet, naming it.
std::unique_ptr<Model> createModel(const ModelConfig& cfg, WeightProvider& weights, Backend& backend);

}  // namespace doppler

#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace doppler {

namespace {
// Sampling (not greedy) on the device pays only from this vocabulary size on: its kernel took 105-191 us against
// 23 us (4096 tokens), 116 us (32768) and 565 us (151936) for copying the logits and sampling on the host
// (cuda_ops_bench on the H200, top-k 40).
constexpr int64_t kDeviceSamplingMinVocab = 32768;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

GenerateStats generate(Model& model, KVCache& kv, std::span<const int32_t> prompt, int64_t maxNew, Sampler& sampler,
                       std::span<const int32_t> stopIds, const std::function<bool(int32_t)>& onToken) {
  GenerateStats st;
  check(!prompt.empty(), "the prompt is empty (it tokenized to no tokens)");
  const int64_t P = int64_t(prompt.size());
  check(P < kv.capacity(), "the prompt has {} tokens but the context holds {} (use a shorter prompt or a larger --ctx)",
        P, kv.capacity());
  const int64_t V = model.config().vocabSize;
  std::vector<float> logits;
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  // Runs ids at pos0 and picks the next token: greedy sampling on the backend (only the id crosses from a GPU),
  // any other sampling on the host from the last token's logits.
  const bool onBackend = sampler.greedy();
  auto next = [&](const int32_t* ids, int64_t n, int64_t pos0) -> int32_t {
    if (onBackend) return model.forwardGreedy(ids, n, pos0, kv);
    logits.resize(size_t(V));
    model.forward(ids, n, pos0, kv, /*allLogits=*/false, logits.data());
    return sampler.sample(logits, context);
  };

  double t0 = now();
  int32_t tok = next(prompt.data(), P, 0);
  st.prefillSeconds = now() - t0;
  st.promptTokens = P;

  double t1 = now();
  // Takes a picked token: false when generation ends with it (a stop id, the caller, maxNew, a full context).
  auto accept = [&](int32_t t) {
    context.push_back(t);
    st.generatedTokens++;
    if (std::find(stopIds.begin(), stopIds.end(), t) != stopIds.end()) {
      st.stoppedByEos = true;
      return false;
    }
    return onToken(t) && st.generatedTokens < maxNew && int64_t(context.size()) < kv.capacity();
  };
  if (maxNew > 0 && accept(tok)) {
    // Pipelined on a GPU: the token stays on the device and the next step is issued before it reaches the host.
    const int64_t pos = int64_t(context.size()) - 1;
    if (onBackend) {
      model.decodeGreedy(tok, pos, maxNew - 1, kv, accept);
    } else if (V >= kDeviceSamplingMinVocab && sampler.onDevice(model.deviceSamplingTopK())) {
      model.decodeSampled(tok, pos, maxNew - 1, kv, accept, [&] { return sampler.nextDeviceSampling(); });
    } else {
      while (true) {
        tok = next(&tok, 1, int64_t(context.size()) - 1);
        if (!accept(tok)) break;
      }
    }
  }
  st.decodeSeconds = now() - t1;
  return st;
}

}  // namespace doppler

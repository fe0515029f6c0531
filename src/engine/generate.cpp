#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace doppler {

namespace {
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
    if (onBackend) {  // pipelined on a GPU: the next step is issued before this token reaches the host
      model.decodeGreedy(tok, int64_t(context.size()) - 1, maxNew - 1, kv, accept);
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

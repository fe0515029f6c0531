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
  for (int64_t i = 0; i < maxNew; i++) {
    context.push_back(tok);
    st.generatedTokens++;
    if (std::find(stopIds.begin(), stopIds.end(), tok) != stopIds.end()) {
      st.stoppedByEos = true;
      break;
    }
    if (!onToken(tok)) break;
    if (i + 1 == maxNew || int64_t(context.size()) >= kv.capacity()) break;
    tok = next(&tok, 1, int64_t(context.size()) - 1);
  }
  st.decodeSeconds = now() - t1;
  return st;
}

}  // namespace doppler

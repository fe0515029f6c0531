// Parity against a reference computed by transformers (the fixtures' reference.safetensors layout):
//   prompt_ids [P] i32, ids [N] i32 (prompt + greedy continuation), logits [N, vocab] f32 (KV-cached decode),
//   long_ids [T] i32, long_logits [T, vocab] f32 (one full forward).
// Prefill on prompt_ids, then KV-cached decode one token at a time along ids; and one prefill over long_ids.
// Error per row: ‖a − b‖ / ‖b‖; the worst row of each pass is reported.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/model.h"

namespace doppler {

struct EvalPass {
  int64_t rows = 0;
  double worstError = 0;
  int64_t worstRow = -1;
  int64_t argmaxAgree = 0;  // rows whose argmax equals the reference's
};

struct EvalReport {
  EvalPass decode;  // prompt prefill + decode along ids
  EvalPass longCtx; // prefill over long_ids (rows == 0 when the reference has none)
};

// makeCache(capacity) builds a fresh KV cache for each pass (so tiered caches are exercised the same way).
EvalReport runEval(Model& model, const std::string& referencePath,
                   const std::function<std::unique_ptr<KVCache>(int64_t)>& makeCache);

double relativeError(const float* a, const float* b, int64_t n);

}  // namespace doppler

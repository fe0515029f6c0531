// One parity test case (a fixture architecture converted with a layout) and its gtest name ("llama_row"), shared
// by the CPU (engine_test, archs_test) and GPU (cuda_parity_test) parity suites.
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "convert/convert.h"
#include "core/tensor.h"
#include "engine/engine.h"
#include "engine/eval.h"
#include "kv/kv_cache.h"
#include "loader/placement.h"
#include "test_util.h"

namespace doppler::test {

struct ParityCase {
  std::string arch;
  Layout layout;
};

inline std::string parityCaseName(const ::testing::TestParamInfo<ParityCase>& i) {
  return i.param.arch + (i.param.layout == Layout::Row ? "_row" : "_column");
}

// The case's fixture converted with its layout into dir/m.rdrr; returns that path.
inline std::string convertParityCase(const ParityCase& pc, const std::string& dir) {
  ConvertOptions opts;
  opts.layout = pc.layout;
  opts.sync = false;
  convertHfToRdrr(dataPath("hf/" + pc.arch), dir + "/m.rdrr", opts);
  return dir + "/m.rdrr";
}

// `doppler eval` of the engine against the fixture's transformers reference (a fresh KV cache per pass).
inline EvalReport evalParityCase(Engine& engine, const ParityCase& pc) {
  return runEval(engine.model(), dataPath("hf/" + pc.arch + "/reference.safetensors"),
                 [&](int64_t cap) { return engine.newKVCache(cap); });
}

// The tight-tier parity runs: about 2 routed experts per layer in the device tier (a dense model: its streaming
// minimum), half of the experts (dense: the resident part) in host RAM, the rest read from disk on use, and a
// device KV budget of 32 tokens (f32) so that the KV cache spills to host RAM.
inline EngineOptions tightTierOptions(const std::string& model, EngineOptions eo) {
  auto rdrr = RdrrModel::open(model);
  const TierPlan p = planTiers(*rdrr, uint64_t(1) << 50, uint64_t(1) << 50, false);
  const bool moe = p.expertCount > 0;
  eo.vram = moe ? p.residentBytes + 2 * uint64_t(p.numLayers) * p.maxExpertBytes : p.deviceMinimumStreamed;
  eo.ram = moe ? p.expertTotalBytes / 2 : p.residentBytes;
  EngineOptions plain;
  plain.quiet = true;
  auto probe = Engine::open(model, plain);
  eo.kvVram = uint64_t(32 * kvBytesPerToken(probe->model().kvShapes(), KVDType::F32, 16));
  return eo;
}

// The parity bound every suite holds: both passes within 1e-4 of transformers, the decode pass with at least
// `minDecodeRows` rows and the argmax of every row, the long pass 160 rows.
inline void expectParity(const EvalReport& r, int64_t minDecodeRows) {
  EXPECT_GT(r.decode.rows, minDecodeRows);
  EXPECT_EQ(r.longCtx.rows, 160);
  EXPECT_LT(r.decode.worstError, 1e-4) << "row " << r.decode.worstRow;
  EXPECT_LT(r.longCtx.worstError, 1e-4) << "row " << r.longCtx.worstRow;
  EXPECT_EQ(r.decode.argmaxAgree, r.decode.rows);
}

// Greedy decoding through Model::forwardGreedy (the pick made by the backend) follows the argmax of the logits that
// forward() returns for the same steps: a 5-token prefill, then `steps` decode steps fed back their own pick. Then
// Model::decodeGreedy (on a GPU pipelined, the token kept on the device) gives the same tokens, stops when onToken
// says so, and stops at the cache's capacity.
inline void expectGreedyMatchesLogits(Engine& engine, int64_t steps) {
  Model& m = engine.model();
  const int64_t V = m.config().vocabSize;
  auto kvPick = engine.newKVCache(steps + 8), kvLogits = engine.newKVCache(steps + 8);
  std::vector<float> logits(static_cast<size_t>(V));
  const int32_t prompt[5] = {1, 2, 3, int32_t(V / 2), int32_t(V - 1)};
  const int32_t first = m.forwardGreedy(prompt, 5, 0, *kvPick);
  int32_t tok = first;
  m.forward(prompt, 5, 0, *kvLogits, false, logits.data());
  ASSERT_EQ(tok, firstMaxIndex(logits.data(), V)) << "prefill";
  std::vector<int32_t> picks;
  for (int64_t i = 0; i < steps; i++) {
    const int32_t in = tok;
    tok = m.forwardGreedy(&in, 1, 5 + i, *kvPick);
    m.forward(&in, 1, 5 + i, *kvLogits, false, logits.data());
    ASSERT_EQ(tok, firstMaxIndex(logits.data(), V)) << "decode step " << i;
    picks.push_back(tok);
  }
  // decodeGreedy over the same steps, on a cache that saw the same prefill
  std::vector<int32_t> got;
  auto kv = engine.newKVCache(steps + 8);
  ASSERT_EQ(m.forwardGreedy(prompt, 5, 0, *kv), first);
  EXPECT_EQ(m.decodeGreedy(first, 5, steps, *kv, [&](int32_t t) { return got.push_back(t), true; }), steps);
  EXPECT_EQ(got, picks);
  // a stop after 3 tokens (the step issued ahead is dropped), then the context's end: 5 + 3 positions remain
  got.clear();
  auto kvStop = engine.newKVCache(5 + 3);
  m.forwardGreedy(prompt, 5, 0, *kvStop);
  EXPECT_EQ(m.decodeGreedy(first, 5, steps, *kvStop, [&](int32_t t) { return got.push_back(t), got.size() < 2; }), 2);
  EXPECT_EQ(got, std::vector<int32_t>(picks.begin(), picks.begin() + 2));
  got.clear();
  EXPECT_EQ(m.decodeGreedy(first, 5, steps, *kvStop, [&](int32_t t) { return got.push_back(t), true; }), 3);
  EXPECT_EQ(got, std::vector<int32_t>(picks.begin(), picks.begin() + 3));
}

}  // namespace doppler::test

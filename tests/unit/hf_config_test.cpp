// config.json reader: the six fixture configs (transformers v5 keys), Hub-style v4 configs of the real models,
// and errors (unsupported architecture, missing / malformed keys).
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "format/hf_config.h"

using namespace doppler;

namespace {

const std::string kData = DOPPLER_TEST_DATA;

ModelConfig fixture(const std::string& arch) { return readHfConfig(kData + "/hf/" + arch + "/config.json"); }
ModelConfig hub(const std::string& name) { return readHfConfig(kData + "/configs/" + name + ".json"); }

std::vector<bool> bools(std::initializer_list<int> v) {
  std::vector<bool> out;
  for (int x : v) out.push_back(x != 0);
  return out;
}

int countTrue(const std::vector<bool>& v) { return int(std::count(v.begin(), v.end(), true)); }

// parseHfConfig on a small object; expects an Error containing every fragment.
void expectConfigError(const nlohmann::json& j, std::initializer_list<std::string> fragments) {
  try {
    parseHfConfig(j, "cfg/config.json");
    ADD_FAILURE() << "no error for " << j.dump();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("cfg/config.json"), std::string::npos) << m;
    for (const auto& f : fragments) EXPECT_NE(m.find(f), std::string::npos) << "'" << f << "' not in: " << m;
  }
}

// A minimal valid llama config to derive error cases from.
nlohmann::json tinyLlama() {
  return {{"model_type", "llama"},         {"vocab_size", 100},        {"hidden_size", 32},
          {"num_hidden_layers", 2},        {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"intermediate_size", 64},       {"rope_theta", 10000.0}};
}

}  // namespace

// ---------------------------------------------------------------- fixture configs (v5 keys)

TEST(HfConfig, FixtureLlama) {
  ModelConfig c = fixture("llama");
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.modelType, "llama");
  EXPECT_EQ(c.vocabSize, 1024);
  EXPECT_EQ(c.hiddenSize, 64);
  EXPECT_EQ(c.numLayers, 2);
  EXPECT_EQ(c.numHeads, 4);
  EXPECT_EQ(c.numKvHeads, 2);
  EXPECT_EQ(c.headDim, 16);
  EXPECT_EQ(c.intermediateSize, 128);
  EXPECT_EQ(c.maxPositionEmbeddings, 4096);
  EXPECT_DOUBLE_EQ(c.normEps, 1e-5);
  EXPECT_EQ(c.norm, NormType::RMSNorm);
  EXPECT_FALSE(c.tieWordEmbeddings);
  EXPECT_FALSE(c.attentionBias);
  EXPECT_FALSE(c.qkNorm);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.lowFreqFactor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.highFreqFactor, 4.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 64);
  EXPECT_EQ(c.bosTokenIds, (std::vector<int64_t>{1}));
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{2}));
  EXPECT_EQ(c.numExperts, 0);
  EXPECT_EQ(c.layerIsMoe, bools({0, 0}));
  EXPECT_EQ(c.slidingWindow, 0);
  EXPECT_TRUE(c.layerIsSliding.empty());
  EXPECT_EQ(c.raw["model_type"], "llama");
}

TEST(HfConfig, FixtureMixtral) {
  ModelConfig c = fixture("mixtral");
  EXPECT_EQ(c.arch, Arch::Mixtral);
  EXPECT_EQ(c.numLayers, 3);
  EXPECT_EQ(c.headDim, 16);
  EXPECT_EQ(c.numExperts, 8);
  EXPECT_EQ(c.topK, 2);
  EXPECT_EQ(c.moeIntermediateSize, 128);
  EXPECT_EQ(c.intermediateSize, 128);
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_EQ(c.routing, RoutingType::SoftmaxTopK);
  EXPECT_EQ(c.layerIsMoe, bools({1, 1, 1}));
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.slidingWindow, 0);  // sliding_window: null
  EXPECT_DOUBLE_EQ(c.normEps, 1e-5);
  EXPECT_EQ(c.bosTokenIds, (std::vector<int64_t>{1}));
}

TEST(HfConfig, FixtureQwen3Moe) {
  ModelConfig c = fixture("qwen3_moe");
  EXPECT_EQ(c.arch, Arch::Qwen3Moe);
  EXPECT_TRUE(c.qkNorm);
  EXPECT_EQ(c.numExperts, 16);  // v5 key num_local_experts
  EXPECT_EQ(c.topK, 4);
  EXPECT_EQ(c.moeIntermediateSize, 48);
  EXPECT_EQ(c.intermediateSize, 128);
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_TRUE(c.tieWordEmbeddings);
  EXPECT_EQ(c.layerIsMoe, bools({1, 1, 1}));
  EXPECT_DOUBLE_EQ(c.normEps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_TRUE(c.bosTokenIds.empty());  // null
  EXPECT_TRUE(c.eosTokenIds.empty());
  EXPECT_EQ(c.slidingWindow, 0);  // use_sliding_window: false
}

TEST(HfConfig, FixtureGptOss) {
  ModelConfig c = fixture("gpt_oss");
  EXPECT_EQ(c.arch, Arch::GptOss);
  EXPECT_EQ(c.numLayers, 4);
  EXPECT_EQ(c.numKvHeads, 2);
  EXPECT_EQ(c.headDim, 16);
  EXPECT_EQ(c.numExperts, 8);
  EXPECT_EQ(c.topK, 2);
  EXPECT_EQ(c.moeIntermediateSize, 64);
  EXPECT_TRUE(c.attentionBias);
  EXPECT_TRUE(c.attentionSinks);
  EXPECT_EQ(c.slidingWindow, 12);
  EXPECT_EQ(c.layerIsSliding, bools({1, 0, 1, 0}));
  EXPECT_DOUBLE_EQ(c.swigluLimit, 7.0);
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_EQ(c.routing, RoutingType::SoftmaxTopK);
  EXPECT_EQ(c.layerIsMoe, bools({1, 1, 1, 1}));
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.theta, 150000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.betaFast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.betaSlow, 1.0);
  EXPECT_FALSE(c.rope.truncate);
  EXPECT_EQ(c.rope.originalMaxPositions, 128);
  EXPECT_FALSE(c.rope.attentionFactor.has_value());
  EXPECT_TRUE(c.eosTokenIds.empty());
}

TEST(HfConfig, FixturePhimoe) {
  ModelConfig c = fixture("phimoe");
  EXPECT_EQ(c.arch, Arch::PhiMoe);
  EXPECT_EQ(c.norm, NormType::LayerNorm);
  EXPECT_DOUBLE_EQ(c.normEps, 1e-5);
  EXPECT_EQ(c.headDim, 16);  // no head_dim: hidden / heads
  EXPECT_TRUE(c.attentionBias);
  EXPECT_TRUE(c.lmHeadBias);
  EXPECT_EQ(c.routing, RoutingType::SparseMixer);
  EXPECT_DOUBLE_EQ(c.routerJitter, 0.0);
  EXPECT_EQ(c.numExperts, 16);
  EXPECT_EQ(c.topK, 2);
  EXPECT_EQ(c.moeIntermediateSize, 96);
  EXPECT_EQ(c.layerIsMoe, bools({1, 1}));
  EXPECT_EQ(c.rope.type, "longrope");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 64);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4096.0 / 64);  // no factor: max_position_embeddings / original
  ASSERT_EQ(c.rope.shortFactor.size(), 8u);
  ASSERT_EQ(c.rope.longFactor.size(), 8u);
  EXPECT_DOUBLE_EQ(c.rope.shortFactor[1], 1.05);
  EXPECT_DOUBLE_EQ(c.rope.longFactor[7], 3.1);
  EXPECT_DOUBLE_EQ(*c.rope.shortMscale, 1.1);
  EXPECT_DOUBLE_EQ(*c.rope.longMscale, 1.2);
}

TEST(HfConfig, FixtureDeepseekV3) {
  ModelConfig c = fixture("deepseek_v3");
  EXPECT_EQ(c.arch, Arch::DeepseekV3);
  EXPECT_EQ(c.numLayers, 3);
  EXPECT_EQ(c.numHeads, 4);
  EXPECT_EQ(c.numKvHeads, 4);
  EXPECT_EQ(c.qLoraRank, 48);
  EXPECT_EQ(c.kvLoraRank, 32);
  EXPECT_EQ(c.qkNopeHeadDim, 16);
  EXPECT_EQ(c.qkRopeHeadDim, 8);
  EXPECT_EQ(c.vHeadDim, 16);
  EXPECT_EQ(c.headDim, 24);  // nope + rope (the file's head_dim 8 is transformers' rope dim)
  EXPECT_EQ(c.numExperts, 16);
  EXPECT_EQ(c.numSharedExperts, 1);
  EXPECT_EQ(c.topK, 4);
  EXPECT_EQ(c.moeIntermediateSize, 32);
  EXPECT_EQ(c.intermediateSize, 128);
  EXPECT_EQ(c.nGroup, 4);
  EXPECT_EQ(c.topkGroup, 2);
  EXPECT_DOUBLE_EQ(c.routedScalingFactor, 2.5);
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_EQ(c.routing, RoutingType::SigmoidGroupTopK);
  EXPECT_EQ(c.layerIsMoe, bools({0, 1, 1}));  // first_k_dense_replace = 1
  EXPECT_TRUE(c.ropeInterleave);
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscaleAllDim, 1.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 128);
  EXPECT_TRUE(c.rope.truncate);
  EXPECT_EQ(c.bosTokenIds, (std::vector<int64_t>{0}));
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{1}));
}

// ---------------------------------------------------------------- Hub configs (v4 keys)

TEST(HfConfigHub, Llama31_8B) {
  ModelConfig c = hub("llama-3.1-8b");
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.vocabSize, 128256);
  EXPECT_EQ(c.hiddenSize, 4096);
  EXPECT_EQ(c.numLayers, 32);
  EXPECT_EQ(c.numHeads, 32);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.intermediateSize, 14336);
  EXPECT_EQ(c.maxPositionEmbeddings, 131072);
  EXPECT_EQ(c.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 8192);
  EXPECT_EQ(c.bosTokenIds, (std::vector<int64_t>{128000}));
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{128001}));
  EXPECT_EQ(countTrue(c.layerIsMoe), 0);
}

TEST(HfConfigHub, Mixtral8x7B) {
  ModelConfig c = hub("mixtral-8x7b-v0.1");
  EXPECT_EQ(c.arch, Arch::Mixtral);
  EXPECT_EQ(c.vocabSize, 32000);
  EXPECT_EQ(c.headDim, 128);  // 4096 / 32
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.numExperts, 8);
  EXPECT_EQ(c.topK, 2);
  EXPECT_EQ(c.moeIntermediateSize, 14336);
  EXPECT_EQ(c.rope.type, "default");
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.maxPositionEmbeddings, 32768);
  EXPECT_EQ(countTrue(c.layerIsMoe), 32);
  EXPECT_EQ(c.slidingWindow, 0);
}

TEST(HfConfigHub, Qwen3_30B_A3B) {
  ModelConfig c = hub("qwen3-30b-a3b");
  EXPECT_EQ(c.arch, Arch::Qwen3Moe);
  EXPECT_EQ(c.numExperts, 128);  // v4 key num_experts
  EXPECT_EQ(c.topK, 8);
  EXPECT_EQ(c.moeIntermediateSize, 768);
  EXPECT_EQ(c.headDim, 128);  // explicit, != 2048 / 32
  EXPECT_EQ(c.numKvHeads, 4);
  EXPECT_TRUE(c.normTopkProb);
  EXPECT_TRUE(c.qkNorm);
  EXPECT_FALSE(c.tieWordEmbeddings);
  EXPECT_EQ(c.rope.type, "default");  // rope_scaling: null
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(countTrue(c.layerIsMoe), 48);
  EXPECT_EQ(c.bosTokenIds, (std::vector<int64_t>{151643}));
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{151645}));
  EXPECT_EQ(c.slidingWindow, 0);
}

TEST(HfConfigHub, GptOss20B) {
  ModelConfig c = hub("gpt-oss-20b");
  EXPECT_EQ(c.arch, Arch::GptOss);
  EXPECT_EQ(c.vocabSize, 201088);
  EXPECT_EQ(c.hiddenSize, 2880);
  EXPECT_EQ(c.numLayers, 24);
  EXPECT_EQ(c.numHeads, 64);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.headDim, 64);
  EXPECT_EQ(c.numExperts, 32);
  EXPECT_EQ(c.topK, 4);
  EXPECT_EQ(c.moeIntermediateSize, 2880);
  EXPECT_EQ(c.slidingWindow, 128);
  ASSERT_EQ(c.layerIsSliding.size(), 24u);
  EXPECT_TRUE(c.layerIsSliding[0]);
  EXPECT_FALSE(c.layerIsSliding[1]);
  EXPECT_TRUE(c.layerIsSliding[22]);
  EXPECT_FALSE(c.layerIsSliding[23]);
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.theta, 150000.0);  // integer 150000 in the file
  EXPECT_EQ(c.rope.originalMaxPositions, 4096);
  EXPECT_FALSE(c.rope.truncate);
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{200002}));
  EXPECT_TRUE(c.bosTokenIds.empty());
}

TEST(HfConfigHub, Phi35MoE) {
  ModelConfig c = hub("phi-3.5-moe-instruct");
  EXPECT_EQ(c.arch, Arch::PhiMoe);
  EXPECT_EQ(c.modelType, "phimoe");
  EXPECT_EQ(c.vocabSize, 32064);
  EXPECT_EQ(c.headDim, 128);
  EXPECT_EQ(c.numKvHeads, 8);
  EXPECT_EQ(c.numExperts, 16);
  EXPECT_EQ(c.topK, 2);
  EXPECT_EQ(c.moeIntermediateSize, 6400);
  EXPECT_EQ(c.norm, NormType::LayerNorm);
  EXPECT_TRUE(c.attentionBias);
  EXPECT_TRUE(c.lmHeadBias);
  EXPECT_DOUBLE_EQ(c.routerJitter, 0.01);
  EXPECT_EQ(c.rope.type, "longrope");  // v4 key "type"
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 4096);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);  // 131072 / 4096
  ASSERT_EQ(c.rope.shortFactor.size(), 64u);
  EXPECT_DOUBLE_EQ(c.rope.shortFactor[2], 1.054);
  EXPECT_DOUBLE_EQ(c.rope.longFactor[63], 61.2626);
  EXPECT_DOUBLE_EQ(*c.rope.longMscale, 1.243163121016122);
  EXPECT_EQ(c.slidingWindow, 0);  // ignored for phimoe, as in transformers
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{32000}));
}

TEST(HfConfigHub, KimiK2) {
  ModelConfig c = hub("kimi-k2-instruct");
  EXPECT_EQ(c.arch, Arch::DeepseekV3);
  EXPECT_EQ(c.modelType, "kimi_k2");
  EXPECT_EQ(c.vocabSize, 163840);
  EXPECT_EQ(c.numLayers, 61);
  EXPECT_EQ(c.numHeads, 64);
  EXPECT_EQ(c.numExperts, 384);
  EXPECT_EQ(c.numSharedExperts, 1);
  EXPECT_EQ(c.topK, 8);
  EXPECT_EQ(c.moeIntermediateSize, 2048);
  EXPECT_EQ(c.qLoraRank, 1536);
  EXPECT_EQ(c.kvLoraRank, 512);
  EXPECT_EQ(c.headDim, 192);
  EXPECT_EQ(c.vHeadDim, 128);
  EXPECT_EQ(c.nGroup, 1);
  EXPECT_EQ(c.topkGroup, 1);
  EXPECT_DOUBLE_EQ(c.routedScalingFactor, 2.827);
  EXPECT_TRUE(c.ropeInterleave);  // not in a v4 file: default true
  ASSERT_EQ(c.layerIsMoe.size(), 61u);
  EXPECT_FALSE(c.layerIsMoe[0]);
  EXPECT_EQ(countTrue(c.layerIsMoe), 60);
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.theta, 50000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.betaFast, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscaleAllDim, 1.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 4096);
  EXPECT_EQ(c.bosTokenIds, (std::vector<int64_t>{163584}));
}

// ---------------------------------------------------------------- variants

TEST(HfConfig, ArchitectureFromClassNameWhenNoModelType) {
  auto j = tinyLlama();
  j.erase("model_type");
  j["architectures"] = {"PhiMoEForCausalLM"};
  j["num_local_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  ModelConfig c = parseHfConfig(j, "x");
  EXPECT_EQ(c.arch, Arch::PhiMoe);
  EXPECT_EQ(c.modelType, "phimoe");
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.routerJitter, 0.01);  // transformers default
  EXPECT_FALSE(c.attentionBias);           // PhimoeConfig default
  j["architectures"] = {"PhimoeForCausalLM"};
  EXPECT_EQ(parseHfConfig(j, "x").arch, Arch::PhiMoe);
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  EXPECT_THROW(parseHfConfig(j, "x"), Error);  // DeepSeek keys missing
}

TEST(HfConfig, Qwen3SparseStepAndMlpOnlyLayers) {
  auto j = tinyLlama();
  j["model_type"] = "qwen3_moe";
  j["num_hidden_layers"] = 6;
  j["num_experts"] = 8;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 16;
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  ModelConfig c = parseHfConfig(j, "x");
  // MoE where (l + 1) % 2 == 0 and l not in {3}
  EXPECT_EQ(c.layerIsMoe, bools({0, 1, 0, 0, 0, 1}));
  EXPECT_FALSE(c.normTopkProb);  // Qwen3MoeConfig default
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
}

TEST(HfConfig, GptOssV4ExpertsPerTokenAndDefaultLayerTypes) {
  auto j = tinyLlama();
  j["model_type"] = "gpt_oss";
  j["num_hidden_layers"] = 3;
  j["num_local_experts"] = 4;
  j["experts_per_token"] = 3;
  j.erase("rope_theta");
  ModelConfig c = parseHfConfig(j, "x");
  EXPECT_EQ(c.topK, 3);
  EXPECT_EQ(c.layerIsSliding, bools({1, 0, 1}));
  EXPECT_EQ(c.slidingWindow, 128);
  EXPECT_DOUBLE_EQ(c.swigluLimit, 7.0);
  EXPECT_TRUE(c.attentionBias);
  EXPECT_DOUBLE_EQ(c.rope.theta, 150000.0);
  EXPECT_EQ(c.rope.type, "default");
}

TEST(HfConfig, YarnDefaultsAndRopeParametersPrecedence) {
  auto j = tinyLlama();
  j["max_position_embeddings"] = 8192;
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}};
  ModelConfig c = parseHfConfig(j, "x");
  EXPECT_EQ(c.rope.type, "yarn");
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);
  EXPECT_EQ(c.rope.originalMaxPositions, 8192);  // falls back to max_position_embeddings
  EXPECT_TRUE(c.rope.truncate);
  EXPECT_DOUBLE_EQ(c.rope.betaFast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 0.0);
  // v5 rope_parameters wins over v4 keys; its rope_theta wins over the top-level one
  j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 777.0}};
  c = parseHfConfig(j, "x");
  EXPECT_EQ(c.rope.type, "linear");
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 777.0);
}

TEST(HfConfig, TokenIdsIntListOrNull) {
  auto j = tinyLlama();
  j["eos_token_id"] = {128001, 128008, 128009};
  j["bos_token_id"] = nullptr;
  ModelConfig c = parseHfConfig(j, "x");
  EXPECT_EQ(c.eosTokenIds, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_TRUE(c.bosTokenIds.empty());
  j["eos_token_id"] = "2";
  expectConfigError(j, {"'eos_token_id'", "must be an integer"});
}

// ---------------------------------------------------------------- errors

TEST(HfConfigErrors, UnsupportedArchitectureListsSupported) {
  auto j = tinyLlama();
  j["model_type"] = "mistral";
  j["architectures"] = {"MistralForCausalLM"};
  expectConfigError(j, {"unsupported architecture 'mistral'",
                        "(supported: llama, mixtral, qwen3_moe, gpt_oss, phimoe, deepseek_v3)"});
  j.erase("model_type");
  expectConfigError(j, {"unsupported architecture 'MistralForCausalLM'", "supported: llama"});
  j.erase("architectures");
  expectConfigError(j, {"no 'model_type' or 'architectures'"});
  EXPECT_EQ(supportedArchList(), "llama, mixtral, qwen3_moe, gpt_oss, phimoe, deepseek_v3");
  EXPECT_EQ(parseArchName("gpt_oss"), Arch::GptOss);
  EXPECT_EQ(archName(Arch::DeepseekV3), "deepseek_v3");
  EXPECT_FALSE(parseArchName("kimi_k2").has_value());
}

TEST(HfConfigErrors, MissingRequiredKey) {
  for (const char* key : {"hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size"}) {
    auto j = tinyLlama();
    j.erase(key);
    expectConfigError(j, {"missing required key", std::string("'") + key + "'"});
  }
  auto moe = tinyLlama();
  moe["model_type"] = "mixtral";
  moe["num_experts_per_tok"] = 2;
  expectConfigError(moe, {"missing required key 'num_local_experts'"});
}

TEST(HfConfigErrors, BadValues) {
  auto j = tinyLlama();
  j["hidden_size"] = -32;
  expectConfigError(j, {"'hidden_size' must be positive", "-32"});
  j = tinyLlama();
  j["num_key_value_heads"] = 3;
  expectConfigError(j, {"num_attention_heads 4", "num_key_value_heads 3"});
  j = tinyLlama();
  j["vocab_size"] = "lots";
  expectConfigError(j, {"'vocab_size' must be an integer", "\"lots\""});
  j = tinyLlama();
  j["tie_word_embeddings"] = 1;
  expectConfigError(j, {"'tie_word_embeddings' must be true or false"});
  j = tinyLlama();
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expectConfigError(j, {"unsupported rope type 'dynamic'"});
  j = tinyLlama();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}};
  expectConfigError(j, {"missing required key 'rope_scaling.original_max_position_embeddings'"});
  j = tinyLlama();
  j["model_type"] = "mixtral";
  j["num_local_experts"] = 4;
  j["num_experts_per_tok"] = 5;
  expectConfigError(j, {"num_experts_per_tok 5", "number of experts 4"});
  j = tinyLlama();
  j["model_type"] = "gpt_oss";
  j["num_local_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  j["layer_types"] = {"sliding_attention"};
  expectConfigError(j, {"'layer_types' has 1 entries", "num_hidden_layers = 2"});
}

TEST(HfConfigErrors, ReadHfConfigNamesTheFile) {
  try {
    readHfConfig(kData + "/configs/does-not-exist.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does-not-exist.json"), std::string::npos) << e.what();
  }
}

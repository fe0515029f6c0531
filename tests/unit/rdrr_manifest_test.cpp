// parseManifest: a valid manifest round-trips; every hostile mutation is rejected with one line naming the
// manifest and the field or tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "format/rdrr_manifest.h"

namespace doppler {
namespace {

using nlohmann::json;

const std::string kHashA(64, 'a');
const std::string kHashB(64, 'b');

json tensor(int shard, uint64_t offset, std::vector<int64_t> shape, const char* dtype, const char* role,
            int layer = -1, int expert = -1) {
  uint64_t n = dtype == std::string("f32") ? 4 : 2;
  for (auto d : shape) n *= uint64_t(d);
  return json{{"shard", shard},       {"offset", offset}, {"size", n},         {"shape", shape},
              {"dtype", dtype},       {"layout", "row"},  {"originalShape", shape}, {"sliceDim", -1},
              {"sliceIdx", 0},        {"sliceCount", 1},  {"role", role},      {"layer", layer},
              {"expert", expert}};
}

// A small but complete manifest: 2 shards, dense + 2 experts of one layer, a TP-sliced matrix, a fused one.
json validManifest() {
  json m;
  m["formatVersion"] = 1;
  m["modelId"] = "tiny";
  m["architecture"] = "mixtral";
  m["config"] = json{{"model_type", "mixtral"}, {"architectures", {"MixtralForCausalLM"}}, {"vocab_size", 16},
                     {"hidden_size", 8}, {"intermediate_size", 4}, {"num_hidden_layers", 1},
                     {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"num_local_experts", 2},
                     {"num_experts_per_tok", 1}, {"rms_norm_eps", 1e-5}, {"max_position_embeddings", 32}};
  m["hashAlgorithm"] = "sha256";
  m["tokenizerFiles"] = json::array({json{{"filename", "tokenizer.json"}, {"size", 10}, {"hash", kHashA}}});
  m["defaultWeightLayout"] = "row";
  m["moe"] = json{{"numExperts", 2}, {"topK", 1}, {"expertBytes", 64}};
  json t;
  t["embed.weight"] = tensor(0, 0, {16, 8}, "bf16", "embedding");                      // [0, 256)
  t["layers.0.attn_norm.weight"] = tensor(0, 256, {8}, "bf16", "norm", 0);             // [256, 272)
  t["layers.0.attn.qkv.weight"] = tensor(0, 320, {16, 8}, "bf16", "attention", 0);     // [320, 576)
  json s0 = tensor(0, 576, {8, 4}, "bf16", "attention", 0);                            // [576, 640)
  s0["originalShape"] = {8, 8};
  s0["sliceDim"] = 1;
  s0["sliceCount"] = 2;
  json s1 = s0;
  s1["offset"] = 640;                                                                  // [640, 704)
  s1["sliceIdx"] = 1;
  t["layers.0.attn.o.weight#0"] = s0;
  t["layers.0.attn.o.weight#1"] = s1;
  t["layers.0.router.weight"] = tensor(0, 704, {2, 8}, "f32", "router", 0);            // [704, 768)
  t["layers.0.experts.0.gate.weight"] = tensor(1, 0, {4, 8}, "bf16", "expert", 0, 0);  // [0, 64)
  t["layers.0.experts.1.gate.weight"] = tensor(1, 64, {4, 8}, "bf16", "expert", 0, 1); // [64, 128)
  t["output_norm.weight"] = tensor(1, 128, {8}, "bf16", "norm");                       // [128, 144)
  m["tensors"] = t;
  m["shards"] = json::array({json{{"index", 0}, {"filename", "shard-00000.bin"}, {"size", 768}, {"hash", kHashA}},
                             json{{"index", 1}, {"filename", "shard-00001.bin"}, {"size", 144}, {"hash", kHashB}}});
  m["groups"] = json{
      {"embedding", {"embed.weight"}},
      {"layer.0.dense",
       {"layers.0.attn_norm.weight", "layers.0.attn.qkv.weight", "layers.0.attn.o.weight#0",
        "layers.0.attn.o.weight#1", "layers.0.router.weight"}},
      {"layer.0.expert.0", {"layers.0.experts.0.gate.weight"}},
      {"layer.0.expert.1", {"layers.0.experts.1.gate.weight"}},
      {"final", {"output_norm.weight"}}};
  m["fused"] = json{{"layers.0.attn.qkv.weight",
                     {{"dim", 0},
                      {"parts", json::array({json{{"name", "layers.0.attn.q.weight"}, {"start", 0}, {"count", 8}},
                                             json{{"name", "layers.0.attn.k.weight"}, {"start", 8}, {"count", 4}},
                                             json{{"name", "layers.0.attn.v.weight"}, {"start", 12}, {"count", 4}}})}}}};
  return m;
}

// Expects parseManifest to fail with a one-line message that contains every needle.
void expectRejected(const json& m, std::initializer_list<std::string> needles) {
  try {
    parseManifest(m.dump(), "/models/x.rdrr/manifest.json");
    ADD_FAILURE() << "accepted: " << m.dump();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.rfind("/models/x.rdrr/manifest.json: ", 0), 0u) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
  }
}

void mutate(std::function<void(json&)> f, std::initializer_list<std::string> needles) {
  json m = validManifest();
  f(m);
  expectRejected(m, needles);
}

TEST(RdrrManifest, ValidParsesWithAllFields) {
  Manifest m = parseManifest(validManifest().dump(), "m.json");
  EXPECT_EQ(m.formatVersion, 1);
  EXPECT_EQ(m.architecture, "mixtral");
  EXPECT_EQ(m.shards.size(), 2u);
  EXPECT_EQ(m.tensors.size(), 9u);
  const RdrrTensor& s1 = m.tensors.at("layers.0.attn.o.weight#1");
  EXPECT_EQ(s1.shard, 0);
  EXPECT_EQ(s1.offset, 640u);
  EXPECT_EQ(s1.size, 64u);
  EXPECT_EQ(s1.shape, (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(s1.originalShape, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(s1.sliceDim, 1);
  EXPECT_EQ(s1.sliceIdx, 1);
  EXPECT_EQ(s1.sliceCount, 2);
  EXPECT_EQ(s1.logicalName(), "layers.0.attn.o.weight");
  EXPECT_EQ(m.tensors.at("layers.0.router.weight").dtype, DType::F32);
  EXPECT_EQ(m.tensors.at("layers.0.experts.1.gate.weight").expert, 1);
  EXPECT_EQ(m.tensors.at("layers.0.experts.1.gate.weight").role, TensorRole::Expert);
  ASSERT_TRUE(m.moe.has_value());
  EXPECT_EQ(m.moe->expertBytes, 64u);
  EXPECT_EQ(m.fused.at("layers.0.attn.qkv.weight").parts.at(2).name, "layers.0.attn.v.weight");
  EXPECT_EQ(m.tokenizerFiles.at(0).filename, "tokenizer.json");
  EXPECT_EQ(m.config.at("hidden_size"), 8);
}

TEST(RdrrManifest, RoundTripsThroughManifestToJson) {
  Manifest a = parseManifest(validManifest().dump(), "m.json");
  std::string text = manifestToJson(a);
  Manifest b = parseManifest(text, "m2.json");
  EXPECT_EQ(manifestToJson(b), text);
  EXPECT_EQ(b.tensors.size(), a.tensors.size());
  EXPECT_EQ(b.groups, a.groups);
  EXPECT_EQ(b.config, a.config);
  // One tensor per line, in storage order (shard 0 offset 0 first).
  auto embed = text.find("\"embed.weight\"");
  auto norm = text.find("\"output_norm.weight\"");
  EXPECT_LT(embed, norm);
}

TEST(RdrrManifest, NoMoeAndNoFusedAreOptional) {
  json m = validManifest();
  m.erase("fused");
  m["tensors"].erase("layers.0.attn.qkv.weight");
  auto& dense = m["groups"]["layer.0.dense"];
  dense.erase(dense.begin() + 1);
  EXPECT_NO_THROW(parseManifest(m.dump(), "m.json"));
}

TEST(RdrrManifest, RejectsInvalidJsonAndWrongTopLevel) {
  try {
    parseManifest("{\"formatVersion\": 1,", "bad.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json: invalid JSON"), std::string::npos) << e.what();
  }
  expectRejected(json::array(), {"must be a JSON object"});
  mutate([](json& m) { m.erase("tensors"); }, {"'tensors' is missing"});
  mutate([](json& m) { m["tensors"] = json::array(); }, {"'tensors' must be an object"});
  mutate([](json& m) { m["shards"] = "x"; }, {"'shards' must be a list"});
  mutate([](json& m) { m["config"] = 3; }, {"'config' must be an object"});
}

TEST(RdrrManifest, RejectsBadHeaderFields) {
  mutate([](json& m) { m["formatVersion"] = 2; }, {"formatVersion", "2"});
  mutate([](json& m) { m["formatVersion"] = "1"; }, {"formatVersion", "must be an integer"});
  mutate([](json& m) { m["hashAlgorithm"] = "md5"; }, {"hashAlgorithm", "md5"});
  mutate([](json& m) { m["architecture"] = "gpt2"; }, {"architecture", "gpt2", "not supported"});
  mutate([](json& m) { m["defaultWeightLayout"] = "diagonal"; }, {"defaultWeightLayout", "diagonal"});
  mutate([](json& m) { m["moe"]["topK"] = 3; }, {"moe.topK", "3"});
  mutate([](json& m) { m["moe"]["numExperts"] = -2; }, {"numExperts"});
  mutate([](json& m) { m["moe"]["expertBytes"] = 65; }, {"layer.0.expert.0", "64 bytes", "expertBytes is 65"});
}

TEST(RdrrManifest, RejectsBadNumbers) {
  mutate([](json& m) { m["tensors"]["embed.weight"]["offset"] = -1; }, {"'embed.weight'", "offset", "non-negative"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["offset"] = 1.5; }, {"'embed.weight'", "offset"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["offset"] = "0"; }, {"'embed.weight'", "offset"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["size"] = 1e30; }, {"'embed.weight'", "size"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["shape"] = {16, -8}; }, {"'embed.weight'", "shape"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["shape"] = {16, 8.5}; }, {"'embed.weight'", "shape"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["shard"] = -1; }, {"'embed.weight'", "shard"});
  mutate([](json& m) { m["shards"][0]["size"] = -768; }, {"shards[0]", "size"});
}

TEST(RdrrManifest, RejectsOverflows) {
  // Shape whose byte count overflows 64 bits.
  mutate([](json& m) { m["tensors"]["embed.weight"]["shape"] = {uint64_t(1) << 40, uint64_t(1) << 40}; },
         {"'embed.weight'", "overflows"});
  // offset + size wraps around.
  mutate(
      [](json& m) {
        m["shards"][0]["size"] = ~uint64_t(0);
        m["tensors"]["embed.weight"]["offset"] = ~uint64_t(0) - 100;
      },
      {"'embed.weight'", "overflows"});
}

TEST(RdrrManifest, RejectsSizeNotMatchingShapeAndDtype) {
  mutate([](json& m) { m["tensors"]["embed.weight"]["size"] = 255; }, {"'embed.weight'", "255", "needs 256"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["dtype"] = "f32"; },
         {"'embed.weight'", "f32", "needs 512"});
}

TEST(RdrrManifest, RejectsUnknownDtypeLayoutRole) {
  mutate([](json& m) { m["tensors"]["embed.weight"]["dtype"] = "q4_k"; }, {"'embed.weight'", "unknown dtype", "q4_k"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["layout"] = "tiled"; }, {"'embed.weight'", "layout", "tiled"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["role"] = "magic"; }, {"'embed.weight'", "unknown role"});
  mutate([](json& m) { m["tensors"]["layers.0.attn_norm.weight"]["layout"] = "column"; },
         {"'layers.0.attn_norm.weight'", "2-D"});
}

TEST(RdrrManifest, RejectsTensorPastShardEnd) {
  mutate([](json& m) { m["tensors"]["output_norm.weight"]["offset"] = 136; },
         {"'output_norm.weight'", "past the end of shard 1", "shard-00001.bin", "144 bytes"});
  mutate([](json& m) { m["shards"][1]["size"] = 100; }, {"past the end of shard 1"});
}

TEST(RdrrManifest, RejectsShardIndexOutOfRangeAndMisnumbered) {
  mutate([](json& m) { m["tensors"]["output_norm.weight"]["shard"] = 2; }, {"'output_norm.weight'", "'shard' 2", "2 shards"});
  mutate([](json& m) { m["shards"][1]["index"] = 5; }, {"shards[1]", "'index' is 5"});
}

TEST(RdrrManifest, RejectsOverlappingRanges) {
  mutate([](json& m) { m["tensors"]["layers.0.attn_norm.weight"]["offset"] = 250; },
         {"overlap", "'embed.weight'", "'layers.0.attn_norm.weight'", "shard 0"});
  mutate([](json& m) { m["tensors"]["layers.0.experts.1.gate.weight"]["offset"] = 0; }, {"overlap"});
}

TEST(RdrrManifest, RejectsPathTraversalAndBadFileNames) {
  for (const char* bad : {"../x", "/abs/shard.bin", "a/b.bin", ".hidden", "", "..", "shard 0.bin"})
    mutate([&](json& m) { m["shards"][0]["filename"] = bad; }, {"shards[0]", "unsafe file name"});
  mutate([](json& m) { m["tokenizerFiles"][0]["filename"] = "../../etc/passwd"; },
         {"tokenizerFiles[0]", "unsafe file name"});
  mutate([](json& m) { m["shards"][1]["filename"] = "shard-00000.bin"; }, {"shards[1]", "used twice"});
  mutate([](json& m) { m["shards"][0]["filename"] = "manifest.json"; }, {"shards[0]"});
}

TEST(RdrrManifest, RejectsBadHashes) {
  mutate([](json& m) { m["shards"][0]["hash"] = "abc"; }, {"shards[0]", "hash"});
  mutate([](json& m) { m["shards"][0]["hash"] = std::string(64, 'A'); }, {"shards[0]", "lowercase hex"});
  mutate([](json& m) { m["tokenizerFiles"][0]["hash"] = 7; }, {"tokenizerFiles[0]", "hash"});
}

TEST(RdrrManifest, RejectsInconsistentSlices) {
  mutate([](json& m) { m["tensors"]["layers.0.attn.o.weight#1"]["sliceIdx"] = 2; }, {"sliceIdx"});
  mutate([](json& m) { m["tensors"]["layers.0.attn.o.weight#1"]["originalShape"] = {8, 9}; },
         {"'layers.0.attn.o.weight#1'", "originalShape"});
  mutate([](json& m) { m["tensors"]["layers.0.attn.o.weight#1"]["sliceDim"] = 0; }, {"sliceDim"});
  mutate([](json& m) { m["tensors"]["layers.0.attn.o.weight#0"]["sliceCount"] = 1; }, {"sliceCount"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["originalShape"] = {16, 9}; },
         {"'embed.weight'", "originalShape", "unsliced"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["sliceIdx"] = 1; }, {"'embed.weight'", "sliceIdx"});
  mutate(
      [](json& m) {  // a slice missing
        m["tensors"].erase("layers.0.attn.o.weight#1");
        auto& d = m["groups"]["layer.0.dense"];
        d.erase(std::find(d.begin(), d.end(), "layers.0.attn.o.weight#1"));
      },
      {"'layers.0.attn.o.weight'", "1 slices", "sliceCount' says 2"});
  mutate(
      [](json& m) {  // slice named for the wrong index
        m["tensors"]["layers.0.attn.o.weight#1"]["sliceIdx"] = 0;
      },
      {"#0"});
  mutate([](json& m) { m["tensors"]["layers.0.attn.o.weight#1"]["dtype"] = "f16"; }, {"disagree"});
}

TEST(RdrrManifest, RejectsBadGroups) {
  mutate([](json& m) { m["groups"]["final"].push_back("nope.weight"); }, {"group 'final'", "unknown tensor", "nope.weight"});
  mutate([](json& m) { m["groups"]["embedding"].push_back("layers.0.router.weight"); },
         {"'layers.0.router.weight'", "two groups"});
  mutate([](json& m) { m["groups"].erase("final"); }, {"'output_norm.weight'", "no group"});
  mutate([](json& m) { m["groups"]["layers.0"] = m["groups"]["final"]; m["groups"].erase("final"); },
         {"'layers.0'", "unknown group name"});
  mutate([](json& m) { m["groups"]["layer.0.expert.0"] = {"layers.0.experts.1.gate.weight"};
                       m["groups"]["layer.0.expert.1"] = {"layers.0.experts.0.gate.weight"}; },
         {"group 'layer.0.expert.", "expert"});
  mutate([](json& m) { m["groups"]["head"] = json::array(); }, {"group 'head' is empty"});
  mutate([](json& m) {  // a group spanning two shards
           m["groups"].erase("final");
           m["groups"]["embedding"].push_back("output_norm.weight");
         },
         {"group 'embedding' spans shards 0 and 1"});
  mutate([](json& m) { m["groups"]["final"] = "output_norm.weight"; }, {"group 'final'", "list"});
}

TEST(RdrrManifest, RejectsBadExpertFields) {
  mutate([](json& m) { m["tensors"]["layers.0.experts.1.gate.weight"]["expert"] = 2; },
         {"'layers.0.experts.1.gate.weight'", "moe.numExperts"});
  mutate([](json& m) { m["tensors"]["embed.weight"]["expert"] = 0; }, {"'embed.weight'", "expert"});
  mutate([](json& m) { m["tensors"]["layers.0.experts.1.gate.weight"]["layer"] = -5; }, {"layer"});
}

TEST(RdrrManifest, RejectsBadFusion) {
  mutate([](json& m) { m["fused"]["layers.0.attn.qkv.weight"]["parts"][1]["start"] = 9; }, {"fused", "tiling"});
  mutate([](json& m) { m["fused"]["layers.0.attn.qkv.weight"]["parts"][2]["count"] = 3; }, {"fused", "cover 15 rows of 16"});
  mutate([](json& m) { m["fused"]["layers.0.attn.qkv.weight"]["parts"][0]["name"] = "embed.weight"; },
         {"fused", "also stored"});
  mutate([](json& m) { m["fused"]["nothing.weight"] = m["fused"]["layers.0.attn.qkv.weight"]; },
         {"fused 'nothing.weight'", "no stored tensor"});
  mutate([](json& m) { m["fused"]["layers.0.attn.qkv.weight"]["dim"] = 1; }, {"'dim' must be 0"});
}

TEST(RdrrManifest, HostileNamesAreEscapedInOneLine) {
  mutate([](json& m) { m["groups"]["final"].push_back("evil\nname\x01"); }, {"evil\\x0aname\\x01"});
  mutate([](json& m) { m["tensors"]["bad name"] = m["tensors"]["embed.weight"]; }, {"'bad name'", "printable"});
}

TEST(RdrrManifest, SafeFileNames) {
  EXPECT_TRUE(isSafeFileName("shard-00000.bin"));
  EXPECT_TRUE(isSafeFileName("tokenizer_config.json"));
  EXPECT_FALSE(isSafeFileName("../x"));
  EXPECT_FALSE(isSafeFileName("/abs"));
  EXPECT_FALSE(isSafeFileName(".."));
  EXPECT_FALSE(isSafeFileName(""));
  EXPECT_FALSE(isSafeFileName(std::string(300, 'a')));
}

}  // namespace
}  // namespace doppler

namespace doppler {
namespace {

// The fuzzer's seeds (fuzz/corpus/fuzz_manifest/) stay valid manifests, so mutations start from real files.
TEST(RdrrManifest, FuzzSeedsAreValid) {
  namespace fs = std::filesystem;
  std::string dir = std::string(DOPPLER_SOURCE_DIR) + "/fuzz/corpus/fuzz_manifest";
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    SCOPED_TRACE(e.path().string());
    std::ifstream f(e.path());
    std::stringstream ss;
    ss << f.rdbuf();
    Manifest m = parseManifest(ss.str(), e.path().string());
    EXPECT_FALSE(m.tensors.empty());
    n++;
  }
  EXPECT_GE(n, 3);
}

}  // namespace
}  // namespace doppler

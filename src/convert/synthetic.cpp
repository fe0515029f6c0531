#include "convert/synthetic.h"

#include <cstdio>
#include <filesystem>
#include <map>

#include "core/dtype.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "format/hf_config.h"

namespace doppler {

namespace {
using Json = nlohmann::json;

Json presetJson(const std::string& p) {
  if (p == "llama3-8b")
    return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 4096},
            {"intermediate_size", 14336}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
            {"head_dim", 128}, {"vocab_size", 128256}, {"max_position_embeddings", 131072},
            {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false},
            {"rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0},
                                 {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                 {"original_max_position_embeddings", 8192}}}};
  if (p == "mixtral-8x7b")
    return {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"}, {"hidden_size", 4096},
            {"intermediate_size", 14336}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
            {"head_dim", 128}, {"vocab_size", 32000}, {"max_position_embeddings", 32768},
            {"rms_norm_eps", 1e-5}, {"num_local_experts", 8}, {"num_experts_per_tok", 2},
            {"tie_word_embeddings", false}, {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}}};
  if (p == "qwen3-30b-a3b" || p == "qwen3-235b-a22b") {
    const bool big = p == "qwen3-235b-a22b";
    return {{"architectures", {"Qwen3MoeForCausalLM"}}, {"model_type", "qwen3_moe"},
            {"hidden_size", big ? 4096 : 2048}, {"intermediate_size", big ? 12288 : 6144},
            {"moe_intermediate_size", big ? 1536 : 768}, {"num_attention_heads", big ? 64 : 32},
            {"num_key_value_heads", 4}, {"head_dim", 128}, {"vocab_size", 151936},
            {"max_position_embeddings", 40960}, {"rms_norm_eps", 1e-6}, {"num_local_experts", 128},
            {"num_experts_per_tok", 8}, {"norm_topk_prob", true}, {"decoder_sparse_step", 1},
            {"mlp_only_layers", Json::array()}, {"tie_word_embeddings", false},
            {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}}};
  }
  fail("unknown synthetic model '{}' (presets: llama3-8b, mixtral-8x7b, qwen3-30b-a3b, qwen3-235b-a22b)", p);
}

struct Entry {
  std::string name;
  std::vector<int64_t> shape;
  bool ones = false;  // norm weights: 1.0
};

std::vector<Entry> tensorList(const ModelConfig& c) {
  std::vector<Entry> t;
  const int64_t H = c.hiddenSize, D = c.headDim;
  t.push_back({"model.embed_tokens.weight", {c.vocabSize, H}});
  for (int64_t l = 0; l < c.numLayers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {H}, true});
    t.push_back({p + "post_attention_layernorm.weight", {H}, true});
    t.push_back({p + "self_attn.q_proj.weight", {c.numHeads * D, H}});
    t.push_back({p + "self_attn.k_proj.weight", {c.numKvHeads * D, H}});
    t.push_back({p + "self_attn.v_proj.weight", {c.numKvHeads * D, H}});
    t.push_back({p + "self_attn.o_proj.weight", {H, c.numHeads * D}});
    if (c.qkNorm) {
      t.push_back({p + "self_attn.q_norm.weight", {D}, true});
      t.push_back({p + "self_attn.k_norm.weight", {D}, true});
    }
    const bool moe = c.numExperts > 0 && (c.layerIsMoe.empty() || c.layerIsMoe[size_t(l)]);
    if (!moe) {
      t.push_back({p + "mlp.gate_proj.weight", {c.intermediateSize, H}});
      t.push_back({p + "mlp.up_proj.weight", {c.intermediateSize, H}});
      t.push_back({p + "mlp.down_proj.weight", {H, c.intermediateSize}});
      continue;
    }
    const bool mixtral = c.arch == Arch::Mixtral;
    const std::string moeP = p + (mixtral ? "block_sparse_moe." : "mlp.");
    t.push_back({moeP + "gate.weight", {c.numExperts, H}});
    const int64_t I = c.moeIntermediateSize;
    for (int64_t e = 0; e < c.numExperts; e++) {
      const std::string ep = moeP + "experts." + std::to_string(e) + ".";
      t.push_back({ep + (mixtral ? "w1.weight" : "gate_proj.weight"), {I, H}});
      t.push_back({ep + (mixtral ? "w3.weight" : "up_proj.weight"), {I, H}});
      t.push_back({ep + (mixtral ? "w2.weight" : "down_proj.weight"), {H, I}});
    }
  }
  t.push_back({"model.norm.weight", {H}, true});
  if (!c.tieWordEmbeddings) t.push_back({"lm_head.weight", {c.vocabSize, H}});
  return t;
}
}  // namespace

std::vector<std::string> syntheticPresets() { return {"llama3-8b", "mixtral-8x7b", "qwen3-30b-a3b", "qwen3-235b-a22b"}; }

Json syntheticConfig(const std::string& preset, int layers, int64_t vocabOverride) {
  check(layers > 0, "synthetic model: layers must be positive (got {})", layers);
  Json j = presetJson(preset);
  j["num_hidden_layers"] = layers;
  if (vocabOverride > 0) j["vocab_size"] = vocabOverride;
  j["dtype"] = "bfloat16";
  j["bos_token_id"] = 1;
  j["eos_token_id"] = 2;
  return j;
}

void parseSyntheticSpec(const std::string& spec, std::string& preset, int& layers) {
  auto colon = spec.find(':');
  preset = spec.substr(0, colon);
  layers = 2;
  if (colon != std::string::npos) {
    try {
      size_t used = 0;
      layers = std::stoi(spec.substr(colon + 1), &used);
      check(used == spec.size() - colon - 1, "x");
    } catch (const std::exception&) {
      fail("synthetic model '{}': expected PRESET[:LAYERS], e.g. qwen3-30b-a3b:2", spec);
    }
  }
  presetJson(preset);  // validates the name
}

uint64_t writeSyntheticCheckpoint(const std::string& dir, const Json& config, uint64_t seed, float scale) {
  std::filesystem::create_directories(dir);
  const ModelConfig cfg = parseHfConfig(config, dir + "/config.json");
  writeFile(joinPath(dir, "config.json"), config.dump(2));
  const auto tensors = tensorList(cfg);
  Json header = Json::object();
  uint64_t off = 0;
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= uint64_t(d);
    header[t.name] = {{"dtype", "BF16"}, {"shape", t.shape}, {"data_offsets", {off, off + 2 * n}}};
    off += 2 * n;
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h += ' ';
  const std::string path = joinPath(dir, "model.safetensors");
  const std::string tmp = path + ".tmp";
  removeAll(tmp);  // a leftover of an interrupted run
  FileWriter w(tmp);
  uint64_t hl = h.size();
  w.write(&hl, 8);
  w.write(h.data(), h.size());
  std::vector<uint16_t> buf(size_t(1) << 21);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  const uint16_t one = f32ToBf16(1.0f);
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= uint64_t(d);
    while (n > 0) {
      size_t m = size_t(std::min<uint64_t>(n, buf.size()));
      for (size_t i = 0; i < m; i++) {
        if (t.ones) {
          buf[i] = one;
          continue;
        }
        s ^= s << 13;  // xorshift64
        s ^= s >> 7;
        s ^= s << 17;
        float u = float(s >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        buf[i] = f32ToBf16((2 * u - 1) * scale);
      }
      w.write(buf.data(), m * 2);
      n -= m;
    }
  }
  w.close();
  std::filesystem::rename(tmp, path);
  return 8 + h.size() + off;
}

}  // namespace doppler

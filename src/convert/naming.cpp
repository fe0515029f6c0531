#include "convert/naming.h"

#include <charconv>
#include <map>
#include <vector>

#include "core/error.h"

namespace doppler {

namespace {

enum : unsigned { LL = 1, MX = 2, QW = 4, GO = 8, PH = 16, DS = 32, ALL = 63 };

unsigned archBit(Arch a) {
  switch (a) {
    case Arch::Llama: return LL;
    case Arch::Mixtral: return MX;
    case Arch::Qwen3Moe: return QW;
    case Arch::GptOss: return GO;
    case Arch::PhiMoe: return PH;
    case Arch::DeepseekV3: return DS;
  }
  return 0;
}

struct Rule {
  const char* canonical;  // suffix after "layers.L."; "{E}" = expert index; "" = skip; "!gpt_oss" = fused
  TensorRole role;
  unsigned archs;
};

// Keys: the Hugging Face name after "model.layers.L.", with an expert index replaced by "*".
const std::map<std::string, Rule>& layerRules() {
  using R = TensorRole;
  static const std::map<std::string, Rule> rules = {
      {"input_layernorm.weight", {"attn_norm.weight", R::Norm, ALL}},
      {"input_layernorm.bias", {"attn_norm.bias", R::Norm, ALL}},
      {"post_attention_layernorm.weight", {"ffn_norm.weight", R::Norm, ALL}},
      {"post_attention_layernorm.bias", {"ffn_norm.bias", R::Norm, ALL}},
      // Standard attention.
      {"self_attn.q_proj.weight", {"attn.q.weight", R::Attention, ALL}},  // deepseek without q LoRA too
      {"self_attn.q_proj.bias", {"attn.q.bias", R::Attention, ALL & ~DS}},
      {"self_attn.k_proj.weight", {"attn.k.weight", R::Attention, ALL & ~DS}},
      {"self_attn.k_proj.bias", {"attn.k.bias", R::Attention, ALL & ~DS}},
      {"self_attn.v_proj.weight", {"attn.v.weight", R::Attention, ALL & ~DS}},
      {"self_attn.v_proj.bias", {"attn.v.bias", R::Attention, ALL & ~DS}},
      {"self_attn.o_proj.weight", {"attn.o.weight", R::Attention, ALL}},
      {"self_attn.o_proj.bias", {"attn.o.bias", R::Attention, ALL & ~DS}},
      {"self_attn.q_norm.weight", {"attn.q_norm.weight", R::Norm, QW}},
      {"self_attn.k_norm.weight", {"attn.k_norm.weight", R::Norm, QW}},
      {"self_attn.sinks", {"attn.sinks", R::Attention, GO}},
      {"self_attn.rotary_emb.inv_freq", {"", R::Attention, ALL}},
      // DeepSeek multi-head latent attention.
      {"self_attn.q_a_proj.weight", {"attn.q_a.weight", R::Attention, DS}},
      {"self_attn.q_a_layernorm.weight", {"attn.q_a_norm.weight", R::Norm, DS}},
      {"self_attn.q_b_proj.weight", {"attn.q_b.weight", R::Attention, DS}},
      {"self_attn.kv_a_proj_with_mqa.weight", {"attn.kv_a.weight", R::Attention, DS}},
      {"self_attn.kv_a_layernorm.weight", {"attn.kv_a_norm.weight", R::Norm, DS}},
      {"self_attn.kv_b_proj.weight", {"attn.kv_b.weight", R::Attention, DS}},
      // Dense FFN (llama; deepseek's first_k_dense layers; qwen3 mlp_only_layers).
      {"mlp.gate_proj.weight", {"ffn.gate.weight", R::Ffn, LL | QW | DS}},
      {"mlp.up_proj.weight", {"ffn.up.weight", R::Ffn, LL | QW | DS}},
      {"mlp.down_proj.weight", {"ffn.down.weight", R::Ffn, LL | QW | DS}},
      {"mlp.gate_proj.bias", {"ffn.gate.bias", R::Ffn, LL}},
      {"mlp.up_proj.bias", {"ffn.up.bias", R::Ffn, LL}},
      {"mlp.down_proj.bias", {"ffn.down.bias", R::Ffn, LL}},
      // Routers.
      {"block_sparse_moe.gate.weight", {"router.weight", R::Router, MX | PH}},
      {"mlp.gate.weight", {"router.weight", R::Router, QW | DS}},
      {"mlp.router.weight", {"router.weight", R::Router, GO}},
      {"mlp.router.bias", {"router.bias", R::Router, GO}},
      {"mlp.gate.e_score_correction_bias", {"router.score_bias", R::Router, DS}},
      // Routed experts.
      {"block_sparse_moe.experts.*.w1.weight", {"experts.{E}.gate.weight", R::Expert, MX | PH}},
      {"block_sparse_moe.experts.*.w3.weight", {"experts.{E}.up.weight", R::Expert, MX | PH}},
      {"block_sparse_moe.experts.*.w2.weight", {"experts.{E}.down.weight", R::Expert, MX | PH}},
      {"mlp.experts.*.gate_proj.weight", {"experts.{E}.gate.weight", R::Expert, QW | DS}},
      {"mlp.experts.*.up_proj.weight", {"experts.{E}.up.weight", R::Expert, QW | DS}},
      {"mlp.experts.*.down_proj.weight", {"experts.{E}.down.weight", R::Expert, QW | DS}},
      {"mlp.experts.gate_up_proj", {"!gpt_oss", R::Expert, GO}},
      {"mlp.experts.gate_up_proj_bias", {"!gpt_oss", R::Expert, GO}},
      {"mlp.experts.down_proj", {"!gpt_oss", R::Expert, GO}},
      {"mlp.experts.down_proj_bias", {"!gpt_oss", R::Expert, GO}},
      {"mlp.experts.gate_up_proj_blocks", {"!gpt_oss", R::Expert, GO}},  // MXFP4 form (the released checkpoints)
      {"mlp.experts.gate_up_proj_scales", {"!gpt_oss", R::Expert, GO}},
      {"mlp.experts.down_proj_blocks", {"!gpt_oss", R::Expert, GO}},
      {"mlp.experts.down_proj_scales", {"!gpt_oss", R::Expert, GO}},
      // Shared experts (deepseek).
      {"mlp.shared_experts.gate_proj.weight", {"shared.gate.weight", R::SharedExpert, DS}},
      {"mlp.shared_experts.up_proj.weight", {"shared.up.weight", R::SharedExpert, DS}},
      {"mlp.shared_experts.down_proj.weight", {"shared.down.weight", R::SharedExpert, DS}},
  };
  return rules;
}

std::optional<int64_t> parseIndex(std::string_view s) {
  if (s.empty() || s.size() > 9 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  int64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

HfNameMapping mapHfName(const std::string& hf, const ModelConfig& cfg, const std::string& what) {
  HfNameMapping m;
  auto unknown = [&]() -> HfNameMapping {
    fail("{}: tensor '{}' is not a known {} weight", what, hf, archName(cfg.arch));
  };
  if (hf == "model.embed_tokens.weight") {
    m.name = "embed.weight";
    m.role = TensorRole::Embedding;
    return m;
  }
  if (hf == "model.norm.weight" || hf == "model.norm.bias") {
    m.name = hf == "model.norm.weight" ? "output_norm.weight" : "output_norm.bias";
    m.role = TensorRole::Norm;
    return m;
  }
  if (hf == "lm_head.weight" || hf == "lm_head.bias") {
    m.role = TensorRole::Head;
    m.name = hf;
    if (hf == "lm_head.weight" && cfg.tieWordEmbeddings) {
      m.kind = HfNameMapping::Skip;
      m.note = "lm_head.weight dropped: tie_word_embeddings is true (the model uses embed.weight)";
    }
    return m;
  }
  if (hf == "model.rotary_emb.inv_freq") {
    m.kind = HfNameMapping::Skip;
    m.note = "rotary inv_freq buffers skipped (recomputed from the config)";
    return m;
  }
  static const std::string kLayers = "model.layers.";
  if (hf.rfind(kLayers, 0) != 0) return unknown();
  size_t dot = hf.find('.', kLayers.size());
  if (dot == std::string::npos) return unknown();
  auto layer = parseIndex(std::string_view(hf).substr(kLayers.size(), dot - kLayers.size()));
  if (!layer) return unknown();
  if (*layer >= cfg.numLayers) {
    m.kind = HfNameMapping::Skip;
    m.layer = int(*layer);
    m.note = fmt::format("layers >= num_hidden_layers ({}) skipped (e.g. multi-token-prediction layers)",
                         cfg.numLayers);
    return m;
  }
  std::string rest = hf.substr(dot + 1);
  // Replace an expert index ("experts.<E>.") with '*'.
  int expert = -1;
  std::string key = rest;
  if (auto p = rest.find("experts."); p != std::string::npos) {
    size_t b = p + 8, e = rest.find('.', b);
    if (e != std::string::npos) {
      if (auto idx = parseIndex(std::string_view(rest).substr(b, e - b))) {
        expert = int(*idx);
        key = rest.substr(0, b) + "*" + rest.substr(e);
      }
    }
  }
  const auto& rules = layerRules();
  auto it = rules.find(key);
  if (it == rules.end() || !(it->second.archs & archBit(cfg.arch))) return unknown();
  const Rule& r = it->second;
  m.layer = int(*layer);
  m.role = r.role;
  std::string canon = r.canonical;
  if (canon.empty()) {
    m.kind = HfNameMapping::Skip;
    m.note = "rotary inv_freq buffers skipped (recomputed from the config)";
    return m;
  }
  if (canon == "!gpt_oss") {
    m.kind = HfNameMapping::GptOssExperts;
    m.field = key.substr(std::string("mlp.experts.").size());
    return m;
  }
  if (expert >= 0) {
    check(cfg.numExperts > 0 && expert < cfg.numExperts, "{}: tensor '{}': expert {} >= num_experts {}", what, hf,
          expert, cfg.numExperts);
    m.expert = expert;
    canon.replace(canon.find("{E}"), 3, std::to_string(expert));
  }
  m.name = fmt::format("layers.{}.{}", *layer, canon);
  return m;
}

int canonicalOrder(const std::string& name) {
  static const std::vector<std::string> order = {
      "attn_norm.weight", "attn_norm.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.q.weight", "attn.q.bias",
      "attn.q_a.weight", "attn.q_a_norm.weight", "attn.q_b.weight", "attn.kv_a.weight", "attn.kv_a_norm.weight",
      "attn.kv_b.weight", "attn.k.weight", "attn.k.bias", "attn.v.weight", "attn.v.bias", "attn.q_norm.weight",
      "attn.k_norm.weight", "attn.o.weight", "attn.o.bias", "attn.sinks", "ffn_norm.weight", "ffn_norm.bias",
      "router.weight", "router.bias", "router.score_bias", "ffn.gate_up.weight", "ffn.gate_up.bias",
      "ffn.gate.weight", "ffn.gate.bias", "ffn.up.weight", "ffn.up.bias", "ffn.down.weight", "ffn.down.bias",
      "shared.gate_up.weight", "shared.gate.weight", "shared.up.weight", "shared.down.weight", "gate_up.weight",
      "gate_up.bias", "gate.weight", "gate.bias", "up.weight", "up.bias", "down.weight", "down.bias"};
  // Match the longest listed suffix (expert names end in "gate.weight" etc.).
  std::string base = name.substr(0, name.find('#'));
  int best = int(order.size()), bestLen = -1;
  for (size_t i = 0; i < order.size(); i++) {
    const std::string& s = order[i];
    if (base.size() >= s.size() && base.compare(base.size() - s.size(), s.size(), s) == 0 &&
        (base.size() == s.size() || base[base.size() - s.size() - 1] == '.') && int(s.size()) > bestLen) {
      best = int(i);
      bestLen = int(s.size());
    }
  }
  return best;
}

}  // namespace doppler

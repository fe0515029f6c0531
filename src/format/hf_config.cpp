#include "format/hf_config.h"

#include <cmath>
#include <set>

#include "core/error.h"
#include "core/json_util.h"

namespace doppler {

namespace {

constexpr Arch kAllArchs[] = {Arch::Llama, Arch::Mixtral, Arch::Qwen3Moe, Arch::GptOss, Arch::PhiMoe, Arch::DeepseekV3};

std::optional<Arch> archFromModelType(std::string_view s) {
  if (s == "kimi_k2") return Arch::DeepseekV3;  // Kimi K2: DeepSeek-V3 architecture under its own model_type
  return parseArchName(s);
}

std::optional<Arch> archFromClassName(std::string_view s) {
  if (s == "LlamaForCausalLM") return Arch::Llama;
  if (s == "MixtralForCausalLM") return Arch::Mixtral;
  if (s == "Qwen3MoeForCausalLM") return Arch::Qwen3Moe;
  if (s == "GptOssForCausalLM") return Arch::GptOss;
  if (s == "PhimoeForCausalLM" || s == "PhiMoEForCausalLM") return Arch::PhiMoe;
  if (s == "DeepseekV3ForCausalLM") return Arch::DeepseekV3;
  return std::nullopt;
}

// A short rendering of a JSON value for error messages.
std::string brief(const Json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Typed access to the keys of one JSON object of a config file. Absent keys and JSON null read as "not given".
// `prefix` names the enclosing object in errors ("rope_parameters.").
struct Obj {
  const Json& j;
  const std::string& path;
  std::string prefix;

  std::string name(const char* key) const { return prefix + key; }
  const Json* get(const char* key) const {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }

  std::optional<int64_t> optInt(const char* key) const {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      check(u <= uint64_t(INT64_MAX), "{}: '{}' is too large ({})", path, name(key), u);
      return int64_t(u);
    }
    if (v->is_number_integer()) return v->get<int64_t>();
    if (v->is_number_float()) {  // 4096.0 is accepted as 4096
      double d = v->get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
    }
    fail("{}: '{}' must be an integer, got {}", path, name(key), brief(*v));
  }
  int64_t reqInt(const char* key) const {
    auto v = optInt(key);
    if (!v) fail("{}: missing required key '{}'", path, name(key));
    return *v;
  }
  int64_t positive(const char* key, int64_t v) const {
    check(v > 0, "{}: '{}' must be positive, got {}", path, name(key), v);
    return v;
  }
  int64_t nonNegative(const char* key, int64_t v) const {
    check(v >= 0, "{}: '{}' must not be negative, got {}", path, name(key), v);
    return v;
  }
  int64_t reqPos(const char* key) const { return positive(key, reqInt(key)); }
  int64_t optPos(const char* key, int64_t def) const {
    auto v = optInt(key);
    return v ? positive(key, *v) : def;
  }
  int64_t optNonNeg(const char* key, int64_t def) const {
    auto v = optInt(key);
    return v ? nonNegative(key, *v) : def;
  }

  std::optional<double> optNum(const char* key) const {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    check(v->is_number(), "{}: '{}' must be a number, got {}", path, name(key), brief(*v));
    double d = v->get<double>();
    check(std::isfinite(d), "{}: '{}' must be finite, got {}", path, name(key), brief(*v));
    return d;
  }
  double num(const char* key, double def) const { return optNum(key).value_or(def); }
  double posNum(const char* key, double def) const {
    double d = num(key, def);
    check(d > 0, "{}: '{}' must be positive, got {}", path, name(key), d);
    return d;
  }
  double reqPosNum(const char* key) const {
    if (!has(key)) fail("{}: missing required key '{}'", path, name(key));
    return posNum(key, 0);
  }

  std::optional<bool> optBool(const char* key) const {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    check(v->is_boolean(), "{}: '{}' must be true or false, got {}", path, name(key), brief(*v));
    return v->get<bool>();
  }
  bool boolean(const char* key, bool def) const { return optBool(key).value_or(def); }

  std::optional<std::string> optStr(const char* key) const {
    const Json* v = get(key);
    if (!v) return std::nullopt;
    check(v->is_string(), "{}: '{}' must be a string, got {}", path, name(key), brief(*v));
    return v->get<std::string>();
  }

  std::vector<double> numList(const char* key) const {
    const Json* v = get(key);
    if (!v) fail("{}: missing required key '{}'", path, name(key));
    check(v->is_array(), "{}: '{}' must be a list of numbers, got {}", path, name(key), brief(*v));
    std::vector<double> out;
    for (const auto& e : *v) {
      check(e.is_number(), "{}: '{}' must be a list of numbers, found {}", path, name(key), brief(e));
      out.push_back(e.get<double>());
    }
    return out;
  }

  std::vector<int64_t> intList(const char* key) const {
    const Json* v = get(key);
    if (!v) return {};
    check(v->is_array(), "{}: '{}' must be a list of integers, got {}", path, name(key), brief(*v));
    std::vector<int64_t> out;
    for (const auto& e : *v) {
      check(e.is_number_integer(), "{}: '{}' must be a list of integers, found {}", path, name(key), brief(e));
      out.push_back(e.get<int64_t>());
    }
    return out;
  }

  // bos_token_id / eos_token_id: an int, a list of ints, or null.
  std::vector<int64_t> tokenIds(const char* key) const {
    const Json* v = get(key);
    if (!v) return {};
    std::vector<int64_t> out = v->is_array() ? intList(key) : std::vector<int64_t>{reqInt(key)};
    for (int64_t id : out) check(id >= 0, "{}: '{}' holds a negative token id {}", path, name(key), id);
    return out;
  }
};

double defaultTheta(Arch a) {
  switch (a) {
    case Arch::Mixtral:
    case Arch::PhiMoe:
      return 1e6;
    case Arch::GptOss:
      return 150000.0;
    default:
      return 10000.0;
  }
}

int64_t defaultMaxPositions(Arch a) {
  switch (a) {
    case Arch::Llama: return 2048;
    case Arch::Mixtral: return 4096 * 32;
    case Arch::Qwen3Moe: return 32768;
    case Arch::GptOss: return 131072;
    case Arch::PhiMoe: return 4096 * 32;
    case Arch::DeepseekV3: return 4096;
  }
  return 0;
}

double defaultNormEps(Arch a) {
  switch (a) {
    case Arch::Mixtral:
    case Arch::GptOss:
    case Arch::PhiMoe:
      return 1e-5;
    default:
      return 1e-6;
  }
}

// RoPE: v5 `rope_parameters` (with rope_theta inside) or v4 `rope_theta` + `rope_scaling`.
// `rotaryDim` is the number of rotated channels per head (longrope factor lists hold rotaryDim / 2 entries).
RopeConfig parseRope(const Obj& top, Arch arch, int64_t maxPositions, int64_t rotaryDim) {
  static const Json kEmpty = Json::object();
  const Json* dict = top.get("rope_parameters");
  const char* dictName = "rope_parameters";
  if (!dict) {
    dict = top.get("rope_scaling");
    dictName = "rope_scaling";
  }
  if (dict)
    check(dict->is_object(), "{}: '{}' must be an object, got {}", top.path, dictName, brief(*dict));
  Obj d{dict ? *dict : kEmpty, top.path, std::string(dictName) + "."};
  for (const auto& [k, v] : d.j.items())
    check(!v.is_object(), "{}: per-layer-type '{}' ({} is an object) is not supported", top.path, dictName, k);

  RopeConfig r;
  r.type = d.optStr("rope_type").value_or(d.optStr("type").value_or("default"));
  static const std::set<std::string> kTypes = {"default", "linear", "llama3", "yarn", "longrope"};
  check(kTypes.count(r.type) != 0,
        "{}: unsupported rope type '{}' in '{}' (supported: default, linear, llama3, yarn, longrope)", top.path, r.type,
        dictName);
  r.theta = d.has("rope_theta") ? d.posNum("rope_theta", 0) : top.posNum("rope_theta", defaultTheta(arch));
  if (auto prf = d.optNum("partial_rotary_factor").value_or(top.num("partial_rotary_factor", 1.0)); prf != 1.0)
    fail("{}: partial_rotary_factor {} is not supported (only 1.0)", top.path, prf);

  // original_max_position_embeddings: in the rope dict, else top level (phimoe), else max_position_embeddings.
  auto originalMax = [&]() -> int64_t {
    if (d.has("original_max_position_embeddings")) return d.reqPos("original_max_position_embeddings");
    return top.optPos("original_max_position_embeddings", maxPositions);
  };

  if (r.type == "linear") {
    r.factor = d.reqPosNum("factor");
  } else if (r.type == "llama3") {
    r.factor = d.reqPosNum("factor");
    r.lowFreqFactor = d.reqPosNum("low_freq_factor");
    r.highFreqFactor = d.reqPosNum("high_freq_factor");
    check(r.highFreqFactor > r.lowFreqFactor, "{}: '{}high_freq_factor' {} must exceed 'low_freq_factor' {}",
          top.path, d.prefix, r.highFreqFactor, r.lowFreqFactor);
    r.originalMaxPositions = d.reqPos("original_max_position_embeddings");
  } else if (r.type == "yarn") {
    r.originalMaxPositions = originalMax();
    r.factor = d.has("factor") ? d.posNum("factor", 0) : double(maxPositions) / double(r.originalMaxPositions);
    r.betaFast = d.posNum("beta_fast", 32.0);
    r.betaSlow = d.posNum("beta_slow", 1.0);
    r.mscale = d.num("mscale", 0.0);
    r.mscaleAllDim = d.num("mscale_all_dim", 0.0);
    r.attentionFactor = d.optNum("attention_factor");
    r.truncate = d.boolean("truncate", true);
  } else if (r.type == "longrope") {
    r.originalMaxPositions = originalMax();
    r.factor = d.has("factor") ? d.posNum("factor", 0) : double(maxPositions) / double(r.originalMaxPositions);
    r.shortFactor = d.numList("short_factor");
    r.longFactor = d.numList("long_factor");
    for (const auto* l : {&r.shortFactor, &r.longFactor})
      check(int64_t(l->size()) * 2 == rotaryDim, "{}: '{}{}' has {} entries, expected head_dim / 2 = {}", top.path,
            d.prefix, l == &r.shortFactor ? "short_factor" : "long_factor", l->size(), rotaryDim / 2);
    r.shortMscale = d.optNum("short_mscale");
    r.longMscale = d.optNum("long_mscale");
    r.attentionFactor = d.optNum("attention_factor");
  }
  return r;
}

// Per-layer sliding flags from `layer_types` ("sliding_attention" | "full_attention").
std::vector<bool> parseLayerTypes(const Obj& o, int64_t numLayers) {
  const Json* v = o.get("layer_types");
  check(v->is_array(), "{}: 'layer_types' must be a list of strings, got {}", o.path, brief(*v));
  check(int64_t(v->size()) == numLayers, "{}: 'layer_types' has {} entries, expected num_hidden_layers = {}", o.path,
        v->size(), numLayers);
  std::vector<bool> out;
  for (const auto& e : *v) {
    bool ok = e.is_string() && (e == "sliding_attention" || e == "full_attention");
    check(ok, "{}: 'layer_types' entries must be \"sliding_attention\" or \"full_attention\", found {}", o.path,
          brief(e));
    out.push_back(e == "sliding_attention");
  }
  return out;
}

}  // namespace

std::string_view archName(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Mixtral: return "mixtral";
    case Arch::Qwen3Moe: return "qwen3_moe";
    case Arch::GptOss: return "gpt_oss";
    case Arch::PhiMoe: return "phimoe";
    case Arch::DeepseekV3: return "deepseek_v3";
  }
  return "?";
}

std::optional<Arch> parseArchName(std::string_view s) {
  for (Arch a : kAllArchs)
    if (archName(a) == s) return a;
  return std::nullopt;
}

std::string supportedArchList() {
  std::string s;
  for (Arch a : kAllArchs) {
    if (!s.empty()) s += ", ";
    s += archName(a);
  }
  return s;
}

ModelConfig parseHfConfig(const nlohmann::json& j, const std::string& path) {
  check(j.is_object(), "{}: config must be a JSON object, got {}", path, j.type_name());
  Obj o{j, path, ""};
  ModelConfig c;
  c.raw = j;

  // ---- architecture: model_type, else architectures[0]
  auto modelType = o.optStr("model_type");
  std::string archClass;
  if (const Json* a = o.get("architectures")) {
    check(a->is_array(), "{}: 'architectures' must be a list of strings, got {}", path, brief(*a));
    if (!a->empty()) {
      check((*a)[0].is_string(), "{}: 'architectures' must be a list of strings, got {}", path, brief(*a));
      archClass = (*a)[0].get<std::string>();
    }
  }
  std::optional<Arch> arch;
  if (modelType) arch = archFromModelType(*modelType);
  if (!arch && !archClass.empty()) arch = archFromClassName(archClass);
  if (!arch) {
    if (!modelType && archClass.empty())
      fail("{}: no 'model_type' or 'architectures' (supported: {})", path, supportedArchList());
    fail("{}: unsupported architecture '{}' (supported: {})", path, modelType ? *modelType : archClass,
         supportedArchList());
  }
  c.arch = *arch;
  c.modelType = modelType ? *modelType : std::string(archName(c.arch));

  // ---- common dimensions
  c.vocabSize = o.reqPos("vocab_size");
  c.hiddenSize = o.reqPos("hidden_size");
  c.numLayers = o.reqPos("num_hidden_layers");
  c.numHeads = o.reqPos("num_attention_heads");
  c.numKvHeads = o.optPos("num_key_value_heads", c.numHeads);
  check(c.numHeads % c.numKvHeads == 0,
        "{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", path, c.numHeads, c.numKvHeads);
  c.intermediateSize = o.reqPos("intermediate_size");
  c.maxPositionEmbeddings = o.optPos("max_position_embeddings", defaultMaxPositions(c.arch));
  if (c.arch == Arch::DeepseekV3) {
    // MLA: q/k heads are [nope | rope]; the config's own head_dim (transformers: = qk_rope_head_dim) is ignored.
    c.qkNopeHeadDim = o.reqPos("qk_nope_head_dim");
    c.qkRopeHeadDim = o.reqPos("qk_rope_head_dim");
    c.vHeadDim = o.reqPos("v_head_dim");
    c.headDim = c.qkNopeHeadDim + c.qkRopeHeadDim;
  } else if (o.has("head_dim")) {
    c.headDim = o.reqPos("head_dim");
  } else {
    check(c.hiddenSize % c.numHeads == 0,
          "{}: no 'head_dim' and hidden_size {} is not a multiple of num_attention_heads {}", path, c.hiddenSize,
          c.numHeads);
    c.headDim = c.hiddenSize / c.numHeads;
  }
  c.normEps = o.posNum("rms_norm_eps", defaultNormEps(c.arch));
  c.tieWordEmbeddings = o.boolean("tie_word_embeddings", false);
  c.attentionBias = o.boolean("attention_bias", c.arch == Arch::GptOss);
  c.bosTokenIds = o.tokenIds("bos_token_id");
  c.eosTokenIds = o.tokenIds("eos_token_id");
  if (auto act = o.optStr("hidden_act"))
    check(*act == "silu", "{}: hidden_act '{}' is not supported (only silu)", path, *act);
  check(!o.boolean("mlp_bias", false), "{}: mlp_bias = true is not supported", path);

  c.rope = parseRope(o, c.arch, c.maxPositionEmbeddings, c.arch == Arch::DeepseekV3 ? c.qkRopeHeadDim : c.headDim);
  c.layerIsMoe.assign(size_t(c.numLayers), false);

  auto moeCommon = [&](const char* expertsKey) {
    c.numExperts = o.reqPos(expertsKey);
    c.topK = o.reqPos("num_experts_per_tok");
  };

  switch (c.arch) {
    case Arch::Llama:
      break;

    case Arch::Mixtral:
      moeCommon("num_local_experts");
      c.moeIntermediateSize = c.intermediateSize;
      c.normTopkProb = true;
      c.routing = RoutingType::SoftmaxTopK;
      c.layerIsMoe.assign(size_t(c.numLayers), true);
      if (auto w = o.optInt("sliding_window")) {
        c.slidingWindow = o.positive("sliding_window", *w);
        c.layerIsSliding.assign(size_t(c.numLayers), true);
      }
      break;

    case Arch::Qwen3Moe: {
      c.qkNorm = true;
      moeCommon(o.has("num_experts") ? "num_experts" : "num_local_experts");  // v4 : v5
      c.moeIntermediateSize = o.reqPos("moe_intermediate_size");
      c.normTopkProb = o.boolean("norm_topk_prob", false);
      c.routing = RoutingType::SoftmaxTopK;
      int64_t step = o.optPos("decoder_sparse_step", 1);
      std::vector<int64_t> mlpOnly = o.intList("mlp_only_layers");
      for (int64_t l : mlpOnly)
        check(l >= 0 && l < c.numLayers, "{}: 'mlp_only_layers' entry {} is not a layer index (0..{})", path, l,
              c.numLayers - 1);
      for (int64_t l = 0; l < c.numLayers; l++) {
        bool dense = std::find(mlpOnly.begin(), mlpOnly.end(), l) != mlpOnly.end();
        c.layerIsMoe[size_t(l)] = !dense && c.numExperts > 0 && (l + 1) % step == 0;
      }
      if (o.boolean("use_sliding_window", false) && o.has("sliding_window")) {
        c.slidingWindow = o.reqPos("sliding_window");
        int64_t from = o.optNonNeg("max_window_layers", 0);
        c.layerIsSliding.assign(size_t(c.numLayers), false);
        for (int64_t l = from; l < c.numLayers; l++) c.layerIsSliding[size_t(l)] = true;
      }
      break;
    }

    case Arch::GptOss:
      c.numExperts = o.reqPos("num_local_experts");
      c.topK = o.has("num_experts_per_tok") ? o.reqPos("num_experts_per_tok")
               : o.has("experts_per_token")  ? o.reqPos("experts_per_token")
                                             : o.reqPos("num_experts_per_tok");
      c.moeIntermediateSize = c.intermediateSize;
      c.normTopkProb = true;
      c.routing = RoutingType::SoftmaxTopK;
      c.layerIsMoe.assign(size_t(c.numLayers), true);
      c.attentionSinks = true;
      c.swigluLimit = o.posNum("swiglu_limit", 7.0);
      if (auto a = o.optNum("swiglu_alpha"))
        check(*a == 1.702, "{}: swiglu_alpha {} is not supported (only 1.702)", path, *a);
      c.slidingWindow = o.optPos("sliding_window", 128);
      if (o.has("layer_types")) {
        c.layerIsSliding = parseLayerTypes(o, c.numLayers);
      } else {
        c.layerIsSliding.assign(size_t(c.numLayers), false);
        for (int64_t l = 0; l < c.numLayers; l += 2) c.layerIsSliding[size_t(l)] = true;
      }
      break;

    case Arch::PhiMoe:
      moeCommon("num_local_experts");
      check(c.topK == 2, "{}: phimoe's sparsemixer routing selects exactly 2 experts, num_experts_per_tok is {}", path,
            c.topK);
      c.moeIntermediateSize = c.intermediateSize;
      c.norm = NormType::LayerNorm;  // eps from rms_norm_eps
      c.lmHeadBias = o.boolean("lm_head_bias", false);
      c.routing = RoutingType::SparseMixer;
      c.normTopkProb = false;  // sparsemixer weights are not renormalised
      c.routerJitter = o.num("router_jitter_noise", 0.01);
      check(c.routerJitter >= 0, "{}: 'router_jitter_noise' must not be negative, got {}", path, c.routerJitter);
      c.layerIsMoe.assign(size_t(c.numLayers), true);
      // transformers' PhimoeAttention (= LlamaAttention) applies no sliding window: sliding_window is ignored.
      break;

    case Arch::DeepseekV3: {
      moeCommon("n_routed_experts");
      c.numSharedExperts = o.optNonNeg("n_shared_experts", 1);
      c.moeIntermediateSize = o.reqPos("moe_intermediate_size");
      c.normTopkProb = o.boolean("norm_topk_prob", true);
      c.routing = RoutingType::SigmoidGroupTopK;
      c.routedScalingFactor = o.posNum("routed_scaling_factor", 2.5);
      c.nGroup = o.optPos("n_group", 8);
      c.topkGroup = o.optPos("topk_group", 4);
      check(c.numExperts % c.nGroup == 0, "{}: n_routed_experts {} is not a multiple of n_group {}", path,
            c.numExperts, c.nGroup);
      check(c.topkGroup <= c.nGroup, "{}: topk_group {} exceeds n_group {}", path, c.topkGroup, c.nGroup);
      check(c.topK <= c.numExperts / c.nGroup * c.topkGroup,
            "{}: num_experts_per_tok {} exceeds the {} experts of topk_group {} groups", path, c.topK,
            c.numExperts / c.nGroup * c.topkGroup, c.topkGroup);
      if (auto s = o.optStr("scoring_func"))
        check(*s == "sigmoid", "{}: scoring_func '{}' is not supported (only sigmoid)", path, *s);
      if (auto s = o.optStr("topk_method"))
        check(*s == "noaux_tc", "{}: topk_method '{}' is not supported (only noaux_tc)", path, *s);
      if (!j.contains("q_lora_rank")) fail("{}: missing required key 'q_lora_rank' (null for none)", path);
      c.qLoraRank = o.optNonNeg("q_lora_rank", 0);
      c.kvLoraRank = o.reqPos("kv_lora_rank");
      c.ropeInterleave = o.boolean("rope_interleave", true);
      int64_t firstDense = o.optNonNeg("first_k_dense_replace", 3);
      int64_t freq = o.optPos("moe_layer_freq", 1);
      for (int64_t l = 0; l < c.numLayers; l++) c.layerIsMoe[size_t(l)] = l >= firstDense && l % freq == 0;
      break;
    }
  }

  // layer_types, where given, decides which layers slide (gpt_oss handled above).
  if (c.arch != Arch::GptOss && o.has("layer_types")) {
    c.layerIsSliding = parseLayerTypes(o, c.numLayers);
    if (c.slidingWindow == 0 && o.has("sliding_window")) c.slidingWindow = o.reqPos("sliding_window");
  }
  bool anySliding = std::find(c.layerIsSliding.begin(), c.layerIsSliding.end(), true) != c.layerIsSliding.end();
  if (!anySliding) {
    c.layerIsSliding.clear();
    c.slidingWindow = 0;
  } else {
    check(c.slidingWindow > 0, "{}: layer_types has sliding layers but no 'sliding_window'", path);
  }

  if (c.numExperts > 0)
    check(c.topK <= c.numExperts, "{}: num_experts_per_tok {} exceeds the number of experts {}", path, c.topK,
          c.numExperts);
  return c;
}

ModelConfig readHfConfig(const std::string& path) { return parseHfConfig(readJsonFile(path), path); }

}  // namespace doppler

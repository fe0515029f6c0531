// Typed model configuration read from a Hugging Face config.json (transformers v4 and v5 key styles).
// One struct with feature fields for every supported architecture (no per-model subclasses): model code
// reads the fields it needs. The RDRR manifest stores the original config.json object; this struct is
// re-derived from it with parseHfConfig.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace doppler {

enum class Arch { Llama, Mixtral, Qwen3Moe, GptOss, PhiMoe, DeepseekV3 };
std::string_view archName(Arch a);  // "llama", "mixtral", "qwen3_moe", "gpt_oss", "phimoe", "deepseek_v3"
std::optional<Arch> parseArchName(std::string_view s);
std::string supportedArchList();  // "llama, mixtral, qwen3_moe, gpt_oss, phimoe, deepseek_v3"

// Rotary position embedding parameters (v4: rope_theta + rope_scaling; v5: rope_parameters).
struct RopeConfig {
  std::string type = "default";  // default | linear | llama3 | yarn | longrope
  double theta = 10000.0;
  double factor = 1.0;           // linear / llama3 / yarn / longrope
  // llama3
  double lowFreqFactor = 1.0, highFreqFactor = 4.0;
  int64_t originalMaxPositions = 0;  // llama3 / yarn / longrope
  // yarn
  double betaFast = 32.0, betaSlow = 1.0;
  double mscale = 0.0, mscaleAllDim = 0.0;  // deepseek yarn variants (0 = unset)
  std::optional<double> attentionFactor;    // explicit attention_factor, if given
  bool truncate = true;                     // yarn: round the correction range (gpt_oss sets false)
  // longrope
  std::vector<double> shortFactor, longFactor;
  std::optional<double> shortMscale, longMscale;
};

enum class NormType { RMSNorm, LayerNorm };

// How router logits become expert weights.
enum class RoutingType {
  SoftmaxTopK,      // softmax over all experts, take top-k, renormalise if normTopkProb (mixtral, qwen3_moe);
                    // gpt_oss (top-k of logits, softmax over those) is the same function with normTopkProb = true
  SparseMixer,      // phimoe's sparsemixer top-2 (inference path)
  SigmoidGroupTopK  // deepseek_v3: sigmoid scores + correction bias, group-limited top-k, routed scaling
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string modelType;  // config.json "model_type" as written (e.g. "kimi_k2" for an Arch::DeepseekV3 model)

  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t numLayers = 0;
  int64_t numHeads = 0;
  int64_t numKvHeads = 0;
  int64_t headDim = 0;            // head_dim, or hidden_size / num_attention_heads
  int64_t intermediateSize = 0;   // dense FFN width
  int64_t maxPositionEmbeddings = 0;
  double normEps = 1e-6;          // rms_norm_eps (or layer_norm_eps)
  NormType norm = NormType::RMSNorm;
  bool tieWordEmbeddings = false;
  bool attentionBias = false;     // q/k/v (and o for gpt_oss/phimoe) biases
  bool lmHeadBias = false;        // phimoe
  bool qkNorm = false;            // qwen3_moe: RMSNorm on q and k per head
  RopeConfig rope;
  std::vector<int64_t> bosTokenIds, eosTokenIds;  // may be empty

  // Attention variants
  int64_t slidingWindow = 0;               // 0 = none
  std::vector<bool> layerIsSliding;        // per layer (gpt_oss layer_types); empty = no sliding layers
  bool attentionSinks = false;             // gpt_oss

  // MoE (numExperts == 0: dense model)
  int64_t numExperts = 0;
  int64_t topK = 0;
  int64_t moeIntermediateSize = 0;         // per routed expert (== intermediateSize for mixtral/phimoe/gpt_oss)
  bool normTopkProb = true;
  RoutingType routing = RoutingType::SoftmaxTopK;
  std::vector<bool> layerIsMoe;            // per layer: qwen3 decoder_sparse_step/mlp_only_layers, deepseek first_k_dense_replace
  double routerJitter = 0.0;               // phimoe (jitter eps for sparsemixer)
  // gpt_oss
  double swigluLimit = 0.0;                // 0 = plain SwiGLU
  // deepseek_v3
  int64_t numSharedExperts = 0;
  int64_t qLoraRank = 0;                   // 0 = no q LoRA (q_proj directly)
  int64_t kvLoraRank = 0;
  int64_t qkNopeHeadDim = 0, qkRopeHeadDim = 0, vHeadDim = 0;
  int64_t nGroup = 1, topkGroup = 1;
  double routedScalingFactor = 1.0;
  bool ropeInterleave = false;

  nlohmann::json raw;  // the config.json object as read
};

// Parses a config.json object. `path` is only used in error messages.
// Unknown model_type / architectures -> Error listing the supported ones.
// Conventions: layerIsMoe always has numLayers entries (all false for dense models); layerIsSliding is empty
// or has numLayers entries (slidingWindow > 0 iff some layer slides); deepseek_v3 headDim = qk_nope + qk_rope
// (the file's head_dim is ignored); modelType falls back to archName(arch) when the file has no model_type.
// Keys that fix tensor shapes are required; behavioural keys default as in transformers' config classes.
ModelConfig parseHfConfig(const nlohmann::json& j, const std::string& path);
ModelConfig readHfConfig(const std::string& path);  // reads and parses the file

}  // namespace doppler

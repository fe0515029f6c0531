// Qwen3-MoE: RMSNorm on q and k per head before rope (cfg.qkNorm), MoE layers (softmax top-k, renormalised
// when norm_topk_prob) with optional dense layers (mlp_only_layers / decoder_sparse_step), tied embeddings
// on small models.
#include "model/architectures.h"
#include "core/error.h"
#include "model/decoder.h"

namespace doppler {

namespace {
class Qwen3MoeModel final : public DecoderModel {
 public:
  Qwen3MoeModel(const ModelConfig& cfg, WeightProvider& w, Backend& b) : DecoderModel(cfg, w, b) {
    check(cfg_.qkNorm, "qwen3_moe: config must enable q/k norm");
    loadCommon();
    for (int l = 0; l < int(cfg_.numLayers); l++)
      loadStandardLayer(l, cfg_.numExperts > 0 && (cfg_.layerIsMoe.empty() || cfg_.layerIsMoe[size_t(l)]));
  }
};
}  // namespace

std::unique_ptr<Model> makeQwen3Moe(const ModelConfig& c, WeightProvider& w, Backend& b) {
  return std::make_unique<Qwen3MoeModel>(c, w, b);
}

}  // namespace doppler

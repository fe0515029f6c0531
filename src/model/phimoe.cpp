// Phi-3.5-MoE (phimoe): Mixtral's layout with LayerNorm (weight and bias, eps = rms_norm_eps) instead of RMSNorm,
// q/k/v/o biases, an lm_head bias, sparsemixer top-2 routing (RoutingType::SparseMixer, inference path) and
// longrope. Rope as transformers v5 (5.17, the fixtures' reference) computes it for phimoe: each forward scales
// cos/sin by long_mscale when max(position) + 1 > original_max_position_embeddings and by short_mscale otherwise,
// while the frequencies stay those of short_factor (measured on the fixture: its 160-token prefill, past
// original_max_position_embeddings = 64, matches short_factor + long_mscale to 5e-7 and is off by 0.5 with
// long_factor). A prefill therefore uses one scale for all its tokens; decoding from a short prompt switches
// scale at the threshold, and keys already cached keep the rope they were written with (as in transformers).
#include "core/error.h"
#include "model/architectures.h"
#include "model/decoder.h"

namespace doppler {

namespace {
class PhimoeModel final : public DecoderModel {
 public:
  PhimoeModel(const ModelConfig& cfg, WeightProvider& w, Backend& b) : DecoderModel(cfg, w, b) {
    check(cfg_.numExperts > 0 && cfg_.topK == 2, "phimoe: config needs num_local_experts and 2 experts per token");
    check(cfg_.norm == NormType::LayerNorm && cfg_.routing == RoutingType::SparseMixer,
          "phimoe: config must give LayerNorm and sparsemixer routing");
    loadCommon();
    for (int l = 0; l < int(cfg_.numLayers); l++) loadStandardLayer(l, /*moe=*/true);
  }

  void forward(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits, float* logits) override {
    if (cfg_.rope.type == "longrope") {
      const int64_t origMax = cfg_.rope.originalMaxPositions > 0 ? cfg_.rope.originalMaxPositions
                                                                 : cfg_.maxPositionEmbeddings;
      const bool longCtx = pos0 + n > origMax;  // max(position_ids) + 1 > original_max_position_embeddings
      const auto& ms = longCtx ? cfg_.rope.longMscale : cfg_.rope.shortMscale;
      rope_ = computeRope(cfg_.rope, cfg_.headDim, cfg_.maxPositionEmbeddings, /*seqLen: short factors*/ 0);
      if (ms) rope_.attentionScale = float(*ms);
    }
    DecoderModel::forward(ids, n, pos0, kv, allLogits, logits);
  }
};
}  // namespace

std::unique_ptr<Model> makePhimoe(const ModelConfig& c, WeightProvider& w, Backend& b) {
  return std::make_unique<PhimoeModel>(c, w, b);
}

}  // namespace doppler

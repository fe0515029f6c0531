// Mixtral: Llama attention + a sparse MoE FFN in every layer (softmax over the router logits, top-2,
// renormalised: RoutingType::SoftmaxTopK with normTopkProb).
#include "model/architectures.h"
#include "core/error.h"
#include "model/decoder.h"

namespace doppler {

namespace {
class MixtralModel final : public DecoderModel {
 public:
  MixtralModel(const ModelConfig& cfg, WeightProvider& w, Backend& b) : DecoderModel(cfg, w, b) {
    check(cfg_.numExperts > 0 && cfg_.topK > 0, "mixtral: config needs num_local_experts and num_experts_per_tok");
    loadCommon();
    for (int l = 0; l < int(cfg_.numLayers); l++) loadStandardLayer(l, /*moe=*/true);
  }
};
}  // namespace

std::unique_ptr<Model> makeMixtral(const ModelConfig& c, WeightProvider& w, Backend& b) {
  return std::make_unique<MixtralModel>(c, w, b);
}

}  // namespace doppler

// Llama 3.x (dense): RMSNorm, GQA attention with llama3 rope scaling, SwiGLU FFN in every layer.
#include "model/architectures.h"
#include "core/error.h"
#include "model/decoder.h"

namespace doppler {

namespace {
class LlamaModel final : public DecoderModel {
 public:
  LlamaModel(const ModelConfig& cfg, WeightProvider& w, Backend& b) : DecoderModel(cfg, w, b) {
    check(cfg_.numExperts == 0, "llama: config has {} experts; a llama model is dense", cfg_.numExperts);
    loadCommon();
    for (int l = 0; l < int(cfg_.numLayers); l++) loadStandardLayer(l, /*moe=*/false);
  }
};
}  // namespace

std::unique_ptr<Model> makeLlama(const ModelConfig& c, WeightProvider& w, Backend& b) {
  return std::make_unique<LlamaModel>(c, w, b);
}

}  // namespace doppler

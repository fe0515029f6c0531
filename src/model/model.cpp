#include "model/model.h"

#include "core/error.h"
#include "model/architectures.h"

namespace doppler {

std::unique_ptr<Model> createModel(const ModelConfig& cfg, WeightProvider& weights, Backend& backend) {
  switch (cfg.arch) {
    case Arch::Llama: return makeLlama(cfg, weights, backend);
    case Arch::Mixtral: return makeMixtral(cfg, weights, backend);
    case Arch::Qwen3Moe: return makeQwen3Moe(cfg, weights, backend);
    case Arch::GptOss: return makeGptOss(cfg, weights, backend);
    case Arch::PhiMoe: return makePhimoe(cfg, weights, backend);
    case Arch::DeepseekV3: return makeDeepseekV3(cfg, weights, backend);
  }
  fail("architecture {} is not supported by the engine", archName(cfg.arch));
}

}  // namespace doppler

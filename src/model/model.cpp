#include "model/model.h"

#include "core/error.h"
#include "model/architectures.h"

namespace doppler {

std::unique_ptr<Model> createModel(const ModelConfig& cfg, WeightProvider& weights, Backend& backend) {
  switch (cfg.arch) {
    case Arch::Llama: return makeLlama(cfg, weights, backend);
    case Arch::Mixtral: return makeMixtral(cfg, weights, backend);
    case Arch::Qwen3Moe: return makeQwen3Moe(cfg, weights, backend);
    default:
      fail("architecture {} converts and verifies, but the engine cannot run it yet (runs: llama, mixtral, qwen3_moe)",
           archName(cfg.arch));
  }
}

}  // namespace doppler

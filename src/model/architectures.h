// One factory per architecture file. createModel (model.cpp) is the only place that switches on Arch.
#pragma once
#include "model/model.h"

namespace doppler {

std::unique_ptr<Model> makeLlama(const ModelConfig&, WeightProvider&, Backend&);     // llama.cpp
std::unique_ptr<Model> makeMixtral(const ModelConfig&, WeightProvider&, Backend&);   // mixtral.cpp
std::unique_ptr<Model> makeQwen3Moe(const ModelConfig&, WeightProvider&, Backend&);  // qwen3_moe.cpp

}  // namespace doppler

// One factory per architecture file. createModel (model.cpp) is the only place that switches on Arch.
#pragma once
#include "model/model.h"

namespace doppler {

std::unique_ptr<Model> makeLlama(const ModelConfig&, WeightProvider&, Backend&);     // llama.cpp
std::unique_ptr<Model> makeMixtral(const ModelConfig&, WeightProvider&, Backend&);   // mixtral.cpp
std::unique_ptr<Model> makeQwen3Moe(const ModelConfig&, WeightProvider&, Backend&);  // qwen3_moe.cpp
std::unique_ptr<Model> makeGptOss(const ModelConfig&, WeightProvider&, Backend&);     // gpt_oss.cpp
std::unique_ptr<Model> makePhimoe(const ModelConfig&, WeightProvider&, Backend&);     // phimoe.cpp
std::unique_ptr<Model> makeDeepseekV3(const ModelConfig&, WeightProvider&, Backend&); // deepseek_v3.cpp (Kimi K2)

}  // namespace doppler

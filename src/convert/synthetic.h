// Synthetic Hugging Face checkpoints with real model dimensions and random bf16 weights, for benchmarks and
// large-model tests (config.json + model.safetensors written streaming; no tokenizer).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace doppler {

// Presets with the real dimensions of: "llama3-8b", "mixtral-8x7b", "qwen3-30b-a3b", "qwen3-235b-a22b".
// Spec syntax: PRESET[:LAYERS] (default 2 layers), e.g. "qwen3-30b-a3b:4".
std::vector<std::string> syntheticPresets();
// The config.json object of a preset with `layers` layers (vocabOverride > 0 replaces the vocabulary size).
nlohmann::json syntheticConfig(const std::string& preset, int layers, int64_t vocabOverride = 0);

// Writes config.json and model.safetensors (bf16, uniform random in [-scale, scale], deterministic for a
// seed) into dir (created). Returns the bytes of model.safetensors.
uint64_t writeSyntheticCheckpoint(const std::string& dir, const nlohmann::json& config, uint64_t seed = 1,
                                  float scale = 0.05f);

// Parses "PRESET[:LAYERS]"; Error listing the presets on anything else.
void parseSyntheticSpec(const std::string& spec, std::string& preset, int& layers);

}  // namespace doppler

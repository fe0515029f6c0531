// Hugging Face checkpoint -> RDRR model directory: lays the conversion plan out into shards (groups never
// split; a group larger than the shard size gets a shard of its own), writes the shards through a pipeline
// that hashes (SHA-256) and writes on a background thread while the next bytes are produced, copies the
// tokenizer files, writes manifest.json, and publishes the directory atomically (temp dir + fsync + rename).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "convert/plan.h"
#include "core/progress.h"
#include "format/rdrr_manifest.h"

namespace doppler {

inline constexpr uint64_t kRdrrTensorAlign = 64;  // every logical tensor starts at a multiple of 64 bytes

struct ConvertResult {
  Manifest manifest;
  std::vector<std::string> notes;
  uint64_t tensorBytes = 0;  // bytes of tensor data written
  double seconds = 0;
};

// Files copied beside the shards when the source has them.
const std::vector<std::string>& tokenizerFileNames();

// Assigns shard and offset to every planned tensor and fills plan.manifest's tensor ranges; returns the
// shard sizes in bytes.
std::vector<uint64_t> layoutShards(ConversionPlan& plan, uint64_t shardSize);

// The whole conversion. srcDir: a Hugging Face directory (config.json + model.safetensors or
// model.safetensors.index.json). outDir must not exist unless opts.force. progress may be null.
ConvertResult convertHfToRdrr(const std::string& srcDir, const std::string& outDir, const ConvertOptions& opts,
                              ProgressBar* progress = nullptr);

}  // namespace doppler

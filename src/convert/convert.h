// The converter's public entry point (Hugging Face checkpoint directory -> RDRR model directory).
// See convert/plan.h for the options and the transforms, convert/writer.h for the shard layout and writing.
#pragma once
#include <string>

#include "convert/plan.h"
#include "convert/writer.h"
#include "core/progress.h"

namespace doppler {

// Same as convertHfToRdrr: converts srcDir into outDir atomically. progress may be null.
inline ConvertResult convertCheckpoint(const std::string& srcDir, const std::string& outDir,
                                       const ConvertOptions& opts, ProgressBar* progress) {
  return convertHfToRdrr(srcDir, outDir, opts, progress);
}

}  // namespace doppler

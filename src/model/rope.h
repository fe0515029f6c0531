// Rotary embedding frequencies for every rope_type the supported models use, computed as transformers does
// (f32 arithmetic where transformers uses f32), so logits match it to ~1e-6.
#pragma once
#include <cstdint>
#include <vector>

#include "format/hf_config.h"

namespace doppler {

struct RopeTable {
  std::vector<float> invFreq;  // [rotDim / 2]
  float attentionScale = 1.0f;  // multiplies cos/sin (yarn, longrope)
  int64_t rotDim = 0;
};

// rotDim: the number of rotated dims per head. maxPositions: config.max_position_embeddings.
// seqLen: total sequence length (only longrope depends on it: long factors past original_max_position_embeddings).
RopeTable computeRope(const RopeConfig& rc, int64_t rotDim, int64_t maxPositions, int64_t seqLen = 0);

// The yarn mscale helper transformers uses (0.1 * mscale * ln(scale) + 1, or 1 when scale <= 1).
double yarnGetMscale(double scale, double mscale = 1.0);

}  // namespace doppler

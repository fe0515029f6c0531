// Router logits -> (expert, weight) pairs for one token, for every RoutingType (format/hf_config.h).
#pragma once
#include <cstdint>

#include "format/hf_config.h"

namespace doppler {

// logits: [numExperts] router logits (f32, host). scoreBias: [numExperts] or nullptr (deepseek's
// e_score_correction_bias). Writes cfg.topK expert indices and their weights.
void routeTopK(const ModelConfig& cfg, const float* logits, const float* scoreBias, int64_t* idx, float* weight);

}  // namespace doppler

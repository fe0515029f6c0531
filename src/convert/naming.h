// Hugging Face tensor names -> canonical RDRR names (the table in docs/rdrr.md), per architecture.
#pragma once
#include <string>

#include "format/hf_config.h"
#include "format/rdrr_manifest.h"

namespace doppler {

struct HfNameMapping {
  enum Kind {
    Map,           // stored under `name`
    Skip,          // not used by the model (note says why): rotary buffers, MTP layers, tied lm_head
    GptOssExperts  // gpt_oss fused expert tensor of `layer`; `field` is gate_up_proj | gate_up_proj_bias |
                   // down_proj | down_proj_bias, or the MXFP4 form's gate_up_proj_blocks | gate_up_proj_scales |
                   // down_proj_blocks | down_proj_scales (the planner splits it per expert)
  } kind = Map;
  std::string name;  // canonical name (Map)
  TensorRole role = TensorRole::Attention;
  int layer = -1, expert = -1;
  std::string field;  // GptOssExperts
  std::string note;   // Skip
};

// Throws Error "<what>: tensor '<hf>' is not a known <arch> weight" for names the architecture does not have.
HfNameMapping mapHfName(const std::string& hfName, const ModelConfig& cfg, const std::string& what);

// Sort key that puts a layer's tensors in a readable order (norm, attention, router, FFN; gate, up, down).
int canonicalOrder(const std::string& canonicalName);

}  // namespace doppler

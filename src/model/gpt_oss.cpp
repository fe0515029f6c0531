// gpt-oss: pre-norm RMSNorm blocks; attention with q/k/v/o biases, a learned sink logit per head, and layers
// alternating between a sliding window (layer_types) and full attention; yarn rope (truncate = false); a MoE FFN
// in every layer: router with bias, softmax over the top-k router logits (= SoftmaxTopK renormalised), experts
// with gate/up/down biases and the clamped SwiGLU (gate <= limit, |up| <= limit, gate * sigmoid(1.702 gate) *
// (up + 1)). The checkpoint's fused gate_up_proj (interleaved columns) and its MXFP4 form (*_blocks/*_scales)
// are split per expert by the converter; MXFP4 experts stay MXFP4 and are dequantised inside the matmul kernel.
#include "core/error.h"
#include "model/architectures.h"
#include "model/decoder.h"

namespace doppler {

namespace {
class GptOssModel final : public DecoderModel {
 public:
  GptOssModel(const ModelConfig& cfg, WeightProvider& w, Backend& b) : DecoderModel(cfg, w, b) {
    check(cfg_.numExperts > 0 && cfg_.topK > 0, "gpt_oss: config needs num_local_experts and num_experts_per_tok");
    check(cfg_.attentionSinks && cfg_.swigluLimit > 0, "gpt_oss: config must enable attention sinks and swiglu_limit");
    check(cfg_.routing == RoutingType::SoftmaxTopK && cfg_.normTopkProb,
          "gpt_oss: routing must be a softmax over the top-k logits");
    loadCommon();
    for (int l = 0; l < int(cfg_.numLayers); l++) {
      loadStandardLayer(l, /*moe=*/true);
      check(layers_[size_t(l)].experts.expertBias,
            "gpt_oss: layer {}: experts have no biases (expected layers.{}.experts.E.{{gate,up,down}}.bias)", l, l);
      check(layers_[size_t(l)].attn.sinks.ptr() != nullptr, "gpt_oss: layer {}: no attention sinks", l);
    }
  }
};
}  // namespace

std::unique_ptr<Model> makeGptOss(const ModelConfig& c, WeightProvider& w, Backend& b) {
  return std::make_unique<GptOssModel>(c, w, b);
}

}  // namespace doppler

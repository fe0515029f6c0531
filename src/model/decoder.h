// Shared blocks of decoder-only transformers. An architecture file subclasses DecoderModel, loads its
// layer weights with the load* helpers and composes layer() from the blocks (attention, dense FFN, MoE FFN).
#pragma once
#include <string>
#include <vector>

#include "model/model.h"
#include "model/rope.h"
#include "model/routing.h"

namespace doppler {

// Small f32 parameters (norm weights, biases, sinks) copied into the device tier at load.
struct ParamVec {
  DeviceArray data;
  const float* ptr() const { return data ? data.data() : nullptr; }
};

struct AttentionWeights {
  WeightView q, k, v, o;          // q [H*D, hidden], k/v [KVH*D, hidden], o [hidden, H*VD]
  ParamVec qBias, kBias, vBias, oBias;  // optional
  ParamVec qNorm, kNorm;          // [D] optional (qwen3)
  ParamVec sinks;                 // [H] optional (gpt_oss)
};

struct FfnWeights {               // SwiGLU: down(act(gate(x)) * up(x))
  WeightView gate, up, down;      // gate/up [I, hidden], down [hidden, I]
};

struct MoeWeights {
  WeightView router;              // [E, hidden]
  ParamVec routerBias;            // [E] optional (gpt_oss)
  ParamVec scoreBias;             // [E] optional (deepseek e_score_correction_bias)
  std::vector<std::string> gateName, upName, downName;  // per expert, fetched through the provider per use
  std::vector<std::string> gateBiasName, upBiasName, downBiasName;  // per expert, optional (gpt_oss)
  bool expertBias = false;        // the experts have gate/up/down biases (fetched with the expert per use)
};

struct LayerWeights {
  ParamVec attnNorm, attnNormBias;  // [hidden]
  ParamVec ffnNorm, ffnNormBias;    // [hidden]
  AttentionWeights attn;
  bool moe = false;
  FfnWeights ffn;                   // dense layers
  MoeWeights experts;               // MoE layers
  bool sliding = false;
};

// Per-forward activations, sized for n tokens.
struct Activations {
  int64_t n = 0;
  std::vector<int64_t> positions;  // [n]
  DeviceArray x;    // [n, hidden] residual stream
  DeviceArray h;    // [n, hidden] normed input of a block
  DeviceArray out;  // [n, hidden] block output
  bool pending = false;  // out is a block's output not yet added to x (normInput() adds it)
};

class DecoderModel : public Model {
 public:
  DecoderModel(const ModelConfig& cfg, WeightProvider& weights, Backend& backend);
  const ModelConfig& config() const override { return cfg_; }
  std::vector<KVLayerShape> kvShapes() const override;
  void forward(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits, float* logits) override;
  int32_t forwardGreedy(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv) override;
  int64_t decodeGreedy(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                       const std::function<bool(int32_t)>& onToken) override;
  int64_t decodeSampled(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                        const std::function<bool(int32_t)>& onToken,
                        const std::function<DeviceSampling()>& sampling) override;
  int deviceSamplingTopK() const override { return backend_.devicePicks() ? backend_.deviceSamplingTopK() : 0; }
  void setHostBackend(Backend* host) override { host_ = host; }
  ~DecoderModel() override;

 private:
  // A decode step whose token stays on the device (decodeGreedy, decodeSampled): the input id is read from device
  // memory `in` (nullptr: the host ids), the pick (or with `sampling` the sampled token) goes to device memory `out`
  // and starts for the host in pick slot `slot`.
  struct DevicePick {
    const int32_t* in = nullptr;
    int32_t* out = nullptr;
    int slot = 0;
    const DeviceSampling* sampling = nullptr;
  };
  // The pipelined loop of decodeGreedy / decodeSampled (sampling empty: greedy).
  int64_t decodeOnDevice(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                         const std::function<bool(int32_t)>& onToken, const std::function<DeviceSampling()>& sampling);
  void run(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits, float* logits, int32_t* greedy,
           const DevicePick* pick = nullptr);
  int32_t* picks_ = nullptr;  // decodeOnDevice's two device token slots (backend device memory)

 protected:
  // One layer: reads the residual stream (a.x, plus a.out when a.pending) and leaves it in a.x, or as a.x + a.out
  // with a.pending set (the next normInput() adds it). The default is the pre-norm block x += attn(norm(x));
  // x += ffn(norm(x)) with ffn = MoE or dense per layer; architectures that differ override it.
  virtual void layer(int l, Activations& a, KVCache& kv);
  // Loads what the default layer() uses for layer l: norms, attention and a MoE or dense (layers.l.ffn) FFN.
  void loadStandardLayer(int l, bool moe);

  // ---- loading helpers (every load checks dtype and shape against the config) ----
  WeightView loadMatrix(const std::string& name, int64_t rows, int64_t cols);
  ParamVec loadParams(const std::string& name, int64_t size, bool optional = false);
  ParamVec paramsOf(const WeightView& w, const std::string& name, int64_t size);  // f32 copy of a float vector
  void loadNorms(int l, LayerWeights& w);                    // attn_norm / ffn_norm (+ biases for LayerNorm)
  void loadAttention(int l, AttentionWeights& w);            // q/k/v/o (+ biases, q/k norm, sinks per config)
  void loadDenseFfn(const std::string& prefix, int64_t inter, FfnWeights& w);  // prefix.{gate,up,down}.weight
  void loadMoe(int l, MoeWeights& w);                        // router (+bias) and the expert names
  void loadCommon();                                          // embed, output norm, lm_head

  // ---- blocks ----
  void norm(const float* x, int64_t n, const ParamVec& w, const ParamVec& b, float* y);  // RMSNorm or LayerNorm
  // a.x += attention(a.h) for layer l (GQA/MHA with rope, optional qk-norm, sliding window, sinks).
  void attentionBlock(int l, const AttentionWeights& w, Activations& a, KVCache& kv);
  // out = down(act(gate(h)) * up(h)) for n rows
  void denseFfn(const FfnWeights& w, const float* h, int64_t n, float* out, const float* gateBias = nullptr,
                const float* upBias = nullptr, const float* downBias = nullptr);
  // Σ_k weight_k · expert_k(a.h) with the config's routing, added to a.x (decode with every expert resident) or left
  // in a.out with a.pending set. Experts are acquired one at a time through
  // WeightProvider::acquireExpert (paging-aware: pinned while they compute).
  void moeBlock(int l, const MoeWeights& w, Activations& a);
  // Prefetch hint: layer l+1's router applied to a.h (layer l's normed post-attention state) -> its likely experts.
  void predictNextExperts(int l, const Activations& a);
  // Decode MoE split between the device and the host CPU (host_): a.out += the experts of `split` on both, the
  // host's computed from host RAM while the device runs its ready experts and the loader copies the rest.
  // weights[e]: routing weight of expert e.
  void hybridExperts(int l, Activations& a, ExpertSplit& split, const std::vector<float>& weights);
  void routeOnHost(const MoeWeights& w, const float* logitsDev, int64_t n, std::vector<int64_t>& idx,
                   std::vector<float>& wt);
  // Layer streaming (tiered weights, docs/tiers.md): before layer l runs, points its matrices (views that
  // tensor() gave with data == nullptr) at the device copies `lease` pins. The default binds the standard
  // fields (attention q/k/v/o, dense FFN gate/up/down, router); an architecture keeping matrices elsewhere
  // overrides it, calls the base and binds its own with lease.bind(view, name).
  virtual void bindLayer(int l, const LayerLease& lease);
  // h = norm(x) for the next block, after adding the previous block's output when a.pending (x += out; for RMSNorm
  // in the same op, addRmsNorm).
  void normInput(Activations& a, const ParamVec& w, const ParamVec& b);
  // x += y
  void residual(Activations& a) { backend_.axpy(1.0f, a.out.data(), a.n * cfg_.hiddenSize, a.x.data()); }

  // Decode with routing on the device (every expert resident): per layer, all experts' views, pinned for good.
  std::vector<std::vector<ExpertCall>> residentExperts_;
  std::vector<ExpertLease> residentPins_;

  ModelConfig cfg_;
  WeightProvider& weights_;
  Backend& backend_;
  Backend* host_ = nullptr;  // hybrid execution (setHostBackend)
  WeightView embed_, lmHead_;
  ParamVec outNorm_, outNormBias_, lmHeadBias_;
  std::vector<LayerWeights> layers_;
  RopeTable rope_;
};

}  // namespace doppler

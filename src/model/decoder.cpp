#include "model/decoder.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/trace.h"

namespace doppler {

DecoderModel::DecoderModel(const ModelConfig& cfg, WeightProvider& weights, Backend& backend)
    : cfg_(cfg), weights_(weights), backend_(backend) {
  rope_ = computeRope(cfg_.rope, cfg_.headDim, cfg_.maxPositionEmbeddings);
}

std::vector<KVLayerShape> DecoderModel::kvShapes() const {
  return std::vector<KVLayerShape>(size_t(cfg_.numLayers), KVLayerShape{cfg_.numKvHeads, cfg_.headDim, cfg_.headDim});
}

// ---------------------------------------------------------------- loading

WeightView DecoderModel::loadMatrix(const std::string& name, int64_t rows, int64_t cols) {
  WeightView w = weights_.tensor(name);
  check(w.shape.size() == 2 && w.shape[0] == rows && w.shape[1] == cols,
        "tensor {}: shape {}, expected [{}, {}] from the config", name, shapeString(w.shape), rows, cols);
  check(w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16,
        "tensor {}: dtype {} not supported for matrices (f32, f16, bf16)", name, dtypeName(w.dtype));
  return w;
}

ParamVec DecoderModel::loadParams(const std::string& name, int64_t size, bool optional) {
  if (optional && !weights_.has(name)) return ParamVec{};
  return paramsOf(weights_.tensor(name), name, size);
}

ParamVec DecoderModel::paramsOf(const WeightView& w, const std::string& name, int64_t size) {
  ParamVec p;
  check(w.data != nullptr, "tensor {}: no data", name);
  check(w.numel() == size, "tensor {}: {} elements (shape {}), expected {}", name, w.numel(), shapeString(w.shape),
        size);
  check(isFloat(w.dtype), "tensor {}: dtype {} is not a float type", name, dtypeName(w.dtype));
  std::vector<float> host(static_cast<size_t>(size));
  const void* src = w.data;
  std::vector<uint8_t> raw;
  if (!backend_.hostVisible()) {  // the view is GPU memory: read it back first
    raw.resize(w.bytes());
    backend_.copy(raw.data(), Tier::Host, w.data, Tier::Device, raw.size());
    src = raw.data();
  }
  toF32(src, w.dtype, host.data(), size_t(size));
  p.data = DeviceArray(backend_, size_t(size));
  backend_.copy(p.data.data(), Tier::Device, host.data(), Tier::Host, host.size() * sizeof(float));
  return p;
}

void DecoderModel::loadCommon() {
  embed_ = weights_.tensor("embed.weight");
  check(embed_.shape.size() == 2 && embed_.shape[0] == cfg_.vocabSize && embed_.shape[1] == cfg_.hiddenSize,
        "tensor embed.weight: shape {}, expected [{}, {}]", shapeString(embed_.shape), cfg_.vocabSize,
        cfg_.hiddenSize);
  outNorm_ = loadParams("output_norm.weight", cfg_.hiddenSize);
  if (cfg_.norm == NormType::LayerNorm) outNormBias_ = loadParams("output_norm.bias", cfg_.hiddenSize, true);
  if (cfg_.tieWordEmbeddings && !weights_.has("lm_head.weight")) {
    lmHead_ = embed_;
  } else {
    lmHead_ = loadMatrix("lm_head.weight", cfg_.vocabSize, cfg_.hiddenSize);
  }
  if (cfg_.lmHeadBias) lmHeadBias_ = loadParams("lm_head.bias", cfg_.vocabSize);
}

void DecoderModel::loadNorms(int l, LayerWeights& w) {
  const std::string p = fmt::format("layers.{}.", l);
  const bool ln = cfg_.norm == NormType::LayerNorm;
  w.attnNorm = loadParams(p + "attn_norm.weight", cfg_.hiddenSize);
  w.ffnNorm = loadParams(p + "ffn_norm.weight", cfg_.hiddenSize);
  if (ln) {
    w.attnNormBias = loadParams(p + "attn_norm.bias", cfg_.hiddenSize, true);
    w.ffnNormBias = loadParams(p + "ffn_norm.bias", cfg_.hiddenSize, true);
  }
}

void DecoderModel::loadAttention(int l, AttentionWeights& w) {
  const std::string p = fmt::format("layers.{}.attn.", l);
  const int64_t H = cfg_.numHeads, KVH = cfg_.numKvHeads, D = cfg_.headDim, hid = cfg_.hiddenSize;
  w.q = loadMatrix(p + "q.weight", H * D, hid);
  w.k = loadMatrix(p + "k.weight", KVH * D, hid);
  w.v = loadMatrix(p + "v.weight", KVH * D, hid);
  w.o = loadMatrix(p + "o.weight", hid, H * D);
  if (cfg_.attentionBias) {
    w.qBias = loadParams(p + "q.bias", H * D, true);
    w.kBias = loadParams(p + "k.bias", KVH * D, true);
    w.vBias = loadParams(p + "v.bias", KVH * D, true);
    w.oBias = loadParams(p + "o.bias", hid, true);
  }
  if (cfg_.qkNorm) {
    w.qNorm = loadParams(p + "q_norm.weight", D);
    w.kNorm = loadParams(p + "k_norm.weight", D);
  }
  if (cfg_.attentionSinks) w.sinks = loadParams(p + "sinks", H);
}

void DecoderModel::loadDenseFfn(const std::string& prefix, int64_t inter, FfnWeights& w) {
  w.gate = loadMatrix(prefix + ".gate.weight", inter, cfg_.hiddenSize);
  w.up = loadMatrix(prefix + ".up.weight", inter, cfg_.hiddenSize);
  w.down = loadMatrix(prefix + ".down.weight", cfg_.hiddenSize, inter);
}

void DecoderModel::loadMoe(int l, MoeWeights& w) {
  const std::string p = fmt::format("layers.{}.", l);
  w.router = loadMatrix(p + "router.weight", cfg_.numExperts, cfg_.hiddenSize);
  w.routerBias = loadParams(p + "router.bias", cfg_.numExperts, true);
  w.scoreBias = loadParams(p + "router.score_bias", cfg_.numExperts, true);
  for (int64_t e = 0; e < cfg_.numExperts; e++) {
    const std::string ep = fmt::format("{}experts.{}.", p, e);
    w.gateName.push_back(ep + "gate.weight");
    w.upName.push_back(ep + "up.weight");
    w.downName.push_back(ep + "down.weight");
    w.gateBiasName.push_back(ep + "gate.bias");
    w.upBiasName.push_back(ep + "up.bias");
    w.downBiasName.push_back(ep + "down.bias");
    check(weights_.has(w.gateName.back()) && weights_.has(w.upName.back()) && weights_.has(w.downName.back()),
          "layer {}: expert {} is missing (expected {}{{gate,up,down}}.weight)", l, e, ep);
    const bool bias = weights_.has(w.gateBiasName.back());
    if (e == 0) w.expertBias = bias;
    check(bias == w.expertBias, "layer {}: expert {} {} biases while expert 0 {}", l, e, bias ? "has" : "lacks",
          w.expertBias ? "has them" : "does not");
  }
}

// ---------------------------------------------------------------- blocks

void DecoderModel::norm(const float* x, int64_t n, const ParamVec& w, const ParamVec& b, float* y) {
  if (cfg_.norm == NormType::LayerNorm)
    backend_.layerNorm(x, n, cfg_.hiddenSize, w.ptr(), b.ptr(), float(cfg_.normEps), y);
  else
    backend_.rmsNorm(x, n, cfg_.hiddenSize, w.ptr(), float(cfg_.normEps), y);
}

void DecoderModel::normInput(Activations& a, const ParamVec& w, const ParamVec& b) {
  if (!a.pending) {
    norm(a.x.data(), a.n, w, b, a.h.data());
  } else if (cfg_.norm == NormType::LayerNorm) {
    residual(a);
    norm(a.x.data(), a.n, w, b, a.h.data());
  } else {
    backend_.addRmsNorm(a.x.data(), a.out.data(), a.n, cfg_.hiddenSize, w.ptr(), float(cfg_.normEps), a.h.data());
  }
  a.pending = false;
}

void DecoderModel::attentionBlock(int l, const AttentionWeights& w, Activations& a, KVCache& kv) {
  const int64_t n = a.n, H = cfg_.numHeads, KVH = cfg_.numKvHeads, D = cfg_.headDim;
  DeviceArray q(backend_, size_t(n * H * D));    // [n, H, D]
  DeviceArray o(backend_, size_t(n * H * D));    // [n, H, D]
  // k, v [n, KVH, D]: projected straight into the cache's rows where it allows, else staged and copied.
  float* k = nullptr;
  float* v = nullptr;
  DeviceArray kStage, vStage;
  const bool inPlace = kv.writeInPlace(l, a.positions[0], n, &k, &v);
  if (!inPlace) {
    kStage = DeviceArray(backend_, size_t(n * KVH * D));
    vStage = DeviceArray(backend_, size_t(n * KVH * D));
    k = kStage.data();
    v = vStage.data();
  }
  const Backend::MatmulOut qkv[3] = {{w.q, w.qBias.ptr(), q.data()}, {w.k, w.kBias.ptr(), k}, {w.v, w.vBias.ptr(), v}};
  backend_.matmulMany(a.h.data(), n, qkv, 3);
  RopeParams rp{rope_.invFreq.data(), rope_.rotDim, rope_.attentionScale, cfg_.ropeInterleave};
  backend_.qkNormRope(q.data(), k, n, H, KVH, D, w.qNorm.ptr(), w.kNorm.ptr(), float(cfg_.normEps),
                      a.positions.data(), rp);
  if (!inPlace) kv.write(l, a.positions[0], n, k, v);
  std::vector<KVChunk> chunks;
  kv.chunks(l, a.positions[0] + n, chunks);
  AttentionParams ap;
  ap.numHeads = H;
  ap.numKvHeads = KVH;
  ap.headDim = D;
  ap.vDim = D;
  ap.scale = 1.0f / std::sqrt(float(D));
  ap.window = layers_[size_t(l)].sliding ? cfg_.slidingWindow : 0;
  ap.sinks = w.sinks.ptr();
  backend_.attention(q.data(), n, a.positions.data(), chunks.data(), int64_t(chunks.size()), ap, o.data());
  backend_.matmulAdd(o.data(), n, w.o, w.oBias.ptr(), a.x.data());  // x += o · Woᵀ
}

void DecoderModel::denseFfn(const FfnWeights& w, const float* h, int64_t n, float* out, const float* gateBias,
                            const float* upBias, const float* downBias) {
  const int64_t inter = w.gate.rows();
  DeviceArray g(backend_, size_t(n * inter)), u(backend_, size_t(n * inter));  // [n, I]
  const Backend::MatmulOut gu[2] = {{w.gate, gateBias, g.data()}, {w.up, upBias, u.data()}};
  backend_.matmulMany(h, n, gu, 2);  // one launch per token on a GPU (decode), one split of h for cuBLAS (prefill)
  backend_.swiglu(g.data(), u.data(), n * inter, float(cfg_.swigluLimit), 1.702f, g.data());
  backend_.matmul(g.data(), n, w.down, downBias, out);
}

void DecoderModel::moeBlock(int l, const MoeWeights& w, Activations& a) {
  const int64_t n = a.n, E = cfg_.numExperts, K = cfg_.topK, hid = cfg_.hiddenSize;
  // Router logits on the device, routing decisions on the host.
  DeviceArray logitsDev(backend_, size_t(n * E));  // [n, E]
  backend_.matmul(a.h.data(), n, w.router, w.routerBias.ptr(), logitsDev.data());
  a.pending = true;  // a.out holds the experts' sum unless the device-routed path adds it to x
  if (n == 1 && cfg_.routing == RoutingType::SoftmaxTopK && !w.expertBias && !w.scoreBias.ptr() &&
      weights_.expertsResident()) {
    // Decode with every expert resident: route on the device, nothing waits for the GPU.
    if (residentExperts_.size() < size_t(cfg_.numLayers)) residentExperts_.resize(size_t(cfg_.numLayers));
    auto& table = residentExperts_[size_t(l)];
    if (table.empty()) {
      for (int64_t e = 0; e < E; e++) {
        residentPins_.push_back(weights_.acquireExpert(l, int(e)));
        const ExpertLease& x = residentPins_.back();
        table.push_back(ExpertCall{x.gate, x.up, x.down, 0.0f});
      }
    }
    if (backend_.moeRoutedOnDevice(a.h.data(), logitsDev.data(), table.data(), E, K, cfg_.normTopkProb,
                                   float(cfg_.swigluLimit), 1.702f, a.x.data())) {
      a.pending = false;  // added to the residual stream
      return;
    }
  }
  std::vector<int64_t> idx;  // [n, K]
  std::vector<float> wt;     // [n, K]
  routeOnHost(w, logitsDev.data(), n, idx, wt);

  // Group tokens by expert so each expert's weights are read once per forward: expert e takes tokens rows[i] with
  // routing weights w[i] (the arrays gatherRows / scatterAddRows take).
  struct Routed {
    std::vector<int64_t> rows;
    std::vector<float> w;
  };
  std::vector<Routed> byExpert(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; t++)
    for (int64_t j = 0; j < K; j++) {
      Routed& r = byExpert[size_t(idx[size_t(t * K + j)])];
      r.rows.push_back(t);
      r.w.push_back(wt[size_t(t * K + j)]);
    }

  // The experts this step runs, in order: the tier manager loads them in this order while earlier ones compute
  // (and, with paging, predicts the next layer's experts so that their loads overlap this layer's compute).
  std::vector<int64_t> used;
  for (int64_t e = 0; e < E; e++)
    if (!byExpert[size_t(e)].rows.empty()) used.push_back(e);
  if (n == 1 && !w.expertBias && host_) {  // decode beside a host CPU: the provider may give it some experts
    ExpertSplit split = weights_.splitExperts(l, used);
    if (weights_.wantsExpertPredictions()) predictNextExperts(l, a);
    std::vector<float> weight(static_cast<size_t>(E), 0.0f);
    for (int64_t e : used) weight[size_t(e)] = byExpert[size_t(e)].w[0];
    hybridExperts(l, a, split, weight);
    return;
  }
  weights_.prefetchExperts(l, used, PrefetchHint::Needed);
  if (weights_.wantsExpertPredictions()) predictNextExperts(l, a);

  backend_.fill(a.out.data(), n * hid, 0.0f);
  if (n == 1 && !w.expertBias) {  // decode: every selected expert in one grouped call (pinned together)
    std::vector<ExpertLease> leases;
    std::vector<ExpertCall> calls;
    for (int64_t e : used) {
      leases.push_back(weights_.acquireExpert(l, int(e)));
      calls.push_back(ExpertCall{leases.back().gate, leases.back().up, leases.back().down, byExpert[size_t(e)].w[0]});
    }
    backend_.moeExperts(a.h.data(), calls.data(), int64_t(calls.size()), float(cfg_.swigluLimit), 1.702f,
                        a.out.data());
    return;
  }
  DeviceArray xe(backend_, size_t(n * hid)), ye(backend_, size_t(n * hid));  // [ne, hidden]
  for (int64_t e : used) {
    const Routed& r = byExpert[size_t(e)];
    const int64_t ne = int64_t(r.rows.size());
    backend_.gatherRows(a.h.data(), r.rows.data(), ne, hid, xe.data());  // xe[i] = h[token i]
    ExpertLease ex = weights_.acquireExpert(l, int(e));  // pinned in the device tier until the end of this iteration
    FfnWeights fw;
    fw.gate = ex.gate;
    fw.up = ex.up;
    fw.down = ex.down;
    ParamVec gb, ub, db;  // [I], [I], [hidden] expert biases (gpt_oss), f32
    if (w.expertBias) {
      gb = paramsOf(ex.gateBias, w.gateBiasName[size_t(e)], fw.gate.rows());
      ub = paramsOf(ex.upBias, w.upBiasName[size_t(e)], fw.up.rows());
      db = paramsOf(ex.downBias, w.downBiasName[size_t(e)], hid);
    }
    denseFfn(fw, xe.data(), ne, ye.data(), gb.ptr(), ub.ptr(), db.ptr());
    backend_.scatterAddRows(ye.data(), r.rows.data(), r.w.data(), ne, hid, a.out.data());  // out[token i] += w ye[i]
  }
}

void DecoderModel::hybridExperts(int l, Activations& a, ExpertSplit& split, const std::vector<float>& weight) {
  const int64_t hid = cfg_.hiddenSize;
  const float limit = float(cfg_.swigluLimit), alpha = 1.702f;
  backend_.fill(a.out.data(), hid, 0.0f);
  // Device experts already in device memory (pinned by the split): issued first, they run while the host computes.
  auto runOnDevice = [&](size_t from, size_t to) {
    if (from >= to) return;
    std::vector<ExpertLease> leases;
    std::vector<ExpertCall> calls;
    for (size_t i = from; i < to; i++) {
      const int64_t e = split.device[i];
      const ExpertLease& x = i < split.readyLeases.size() ? split.readyLeases[i]
                                                          : leases.emplace_back(weights_.acquireExpert(l, int(e)));
      calls.push_back(ExpertCall{x.gate, x.up, x.down, weight[size_t(e)]});
    }
    backend_.moeExperts(a.h.data(), calls.data(), int64_t(calls.size()), limit, alpha, a.out.data());
  };
  if (split.host.empty() && split.joint.empty()) {
    runOnDevice(0, split.device.size());
    return;
  }
  // The token's hidden state to the host (the device is idle: routing just waited for it).
  std::vector<float> xh(static_cast<size_t>(hid)), yh(static_cast<size_t>(hid), 0.0f);  // [hidden]
  backend_.copy(xh.data(), Tier::Host, a.h.data(), Tier::Device, xh.size() * sizeof(float));
  runOnDevice(0, split.deviceReady);
  split.readyLeases.clear();  // issued: their blocks may take this layer's loads (copies wait for issued work)
  std::vector<ExpertCall> calls;
  uint64_t bytes = 0;
  for (size_t i = 0; i < split.host.size(); i++) {
    const ExpertLease& x = split.hostLeases[i];
    calls.push_back(ExpertCall{x.gate, x.up, x.down, weight[size_t(split.host[i])]});
    bytes += x.gate.bytes() + x.up.bytes() + x.down.bytes();
  }
  // Joint experts: act = silu(gate x) * (up x) here, [sum of their I] back to back, while their down matrices cross.
  std::vector<int64_t> actAt;  // offset of each joint expert's act
  int64_t actLen = 0;
  for (const JointExpert& j : split.joint) {
    actAt.push_back(actLen);
    actLen += j.host.gate.rows();
  }
  std::vector<float> act(static_cast<size_t>(actLen));
  const auto t0 = std::chrono::steady_clock::now();
  {
    trace::Scope span("experts on the CPU", "hybrid");
    span.arg("experts", double(calls.size()));
    span.arg("joint", double(split.joint.size()));
    if (!calls.empty()) host_->moeExperts(xh.data(), calls.data(), int64_t(calls.size()), limit, alpha, yh.data());
    std::vector<float> g, u;  // [I]
    for (size_t i = 0; i < split.joint.size(); i++) {
      const ExpertLease& x = split.joint[i].host;
      const int64_t I = x.gate.rows();
      g.resize(size_t(I));
      u.resize(size_t(I));
      const Backend::MatmulOut outs[2] = {{x.gate, nullptr, g.data()}, {x.up, nullptr, u.data()}};
      host_->matmulMany(xh.data(), 1, outs, 2);
      host_->swiglu(g.data(), u.data(), I, limit, alpha, act.data() + actAt[i]);
      bytes += x.gate.bytes() + x.up.bytes();
    }
  }
  weights_.reportHostCompute(calls.size(), bytes,
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  split.hostLeases.clear();  // unpinned from host RAM
  if (!calls.empty()) {
    DeviceArray yd(backend_, size_t(hid));
    backend_.copy(yd.data(), Tier::Device, yh.data(), Tier::Host, yh.size() * sizeof(float));
    backend_.axpy(1.0f, yd.data(), hid, a.out.data());
  }
  if (!split.joint.empty()) {  // down on the device, as its copy arrives
    DeviceArray actd(backend_, size_t(actLen)), yd(backend_, size_t(hid));
    backend_.copy(actd.data(), Tier::Device, act.data(), Tier::Host, act.size() * sizeof(float));
    for (size_t i = 0; i < split.joint.size(); i++) {
      const WeightView down = split.joint[i].down();  // waits for its copy
      backend_.matmul(actd.data() + actAt[i], 1, down, nullptr, yd.data());
      backend_.axpy(weight[size_t(split.joint[i].expert)], yd.data(), hid, a.out.data());
    }
    split.joint.clear();  // down's device copies go back (later copies into them wait for this work)
  }
  // The copied experts last: their copies ran while the host computed.
  runOnDevice(split.deviceReady, split.device.size());
}

// Router logits (device) -> per-token top-k expert ids and weights on the host: idx, wt [n, K].
void DecoderModel::routeOnHost(const MoeWeights& w, const float* logitsDev, int64_t n, std::vector<int64_t>& idx,
                               std::vector<float>& wt) {
  const int64_t E = cfg_.numExperts, K = cfg_.topK;
  std::vector<float> logits(static_cast<size_t>(n * E));
  {
    trace::Scope span("routing to host", "model");  // waits for the GPU's work so far
    backend_.copy(logits.data(), Tier::Host, logitsDev, Tier::Device, logits.size() * sizeof(float));
  }
  std::vector<float> scoreBias;
  if (w.scoreBias.ptr()) {
    scoreBias.resize(size_t(E));
    backend_.copy(scoreBias.data(), Tier::Host, w.scoreBias.ptr(), Tier::Device, size_t(E) * sizeof(float));
  }
  idx.assign(static_cast<size_t>(n * K), 0);
  wt.assign(static_cast<size_t>(n * K), 0.0f);
  for (int64_t t = 0; t < n; t++)
    routeTopK(cfg_, logits.data() + t * E, scoreBias.empty() ? nullptr : scoreBias.data(), idx.data() + t * K,
              wt.data() + t * K);
}

void DecoderModel::predictNextExperts(int l, const Activations& a) {
  const int next = l + 1;
  if (next >= int(cfg_.numLayers) || size_t(next) >= layers_.size() || !layers_[size_t(next)].moe) return;
  const MoeWeights& w = layers_[size_t(next)].experts;
  if (!w.router.data) return;
  // Layer l+1's router on layer l's normed post-attention hidden state: a cheap guess of its experts.
  const int64_t n = a.n, E = cfg_.numExperts;
  DeviceArray logitsDev(backend_, size_t(n * E));  // [n, E]
  backend_.matmul(a.h.data(), n, w.router, w.routerBias.ptr(), logitsDev.data());
  std::vector<int64_t> idx;  // [n, K]
  std::vector<float> wt;
  routeOnHost(w, logitsDev.data(), n, idx, wt);
  std::vector<bool> hit(static_cast<size_t>(E), false);
  for (int64_t e : idx) hit[size_t(e)] = true;
  std::vector<int64_t> predicted;
  for (int64_t e = 0; e < E; e++)
    if (hit[size_t(e)]) predicted.push_back(e);
  weights_.prefetchExperts(next, predicted, PrefetchHint::Predicted);
}

void DecoderModel::bindLayer(int l, const LayerLease& lease) {
  auto& w = layers_[size_t(l)];
  const std::string p = fmt::format("layers.{}.", l);
  // Views the provider gave without data (streamed); resident ones (routers, ...) keep theirs.
  auto bind = [&](WeightView& v, const std::string& name) {
    if (!v.data && !v.shape.empty()) lease.bind(v, name);
  };
  bind(w.attn.q, p + "attn.q.weight");
  bind(w.attn.k, p + "attn.k.weight");
  bind(w.attn.v, p + "attn.v.weight");
  bind(w.attn.o, p + "attn.o.weight");
  bind(w.ffn.gate, p + "ffn.gate.weight");
  bind(w.ffn.up, p + "ffn.up.weight");
  bind(w.ffn.down, p + "ffn.down.weight");
  bind(w.experts.router, p + "router.weight");
}

// ---------------------------------------------------------------- layers and forward

void DecoderModel::loadStandardLayer(int l, bool moe) {
  if (layers_.size() < size_t(cfg_.numLayers)) layers_.resize(size_t(cfg_.numLayers));
  auto& lw = layers_[size_t(l)];
  loadNorms(l, lw);
  loadAttention(l, lw.attn);
  lw.moe = moe;
  lw.sliding = !cfg_.layerIsSliding.empty() && cfg_.layerIsSliding[size_t(l)];
  if (moe)
    loadMoe(l, lw.experts);
  else
    loadDenseFfn(fmt::format("layers.{}.ffn", l), cfg_.intermediateSize, lw.ffn);
}

void DecoderModel::layer(int l, Activations& a, KVCache& kv) {
  trace::Scope span("layer", "model");
  span.arg("layer", l);
  auto& w = layers_[size_t(l)];
  normInput(a, w.attnNorm, w.attnNormBias);  // x += the previous layer's FFN output if pending; h = norm(x)
  attentionBlock(l, w.attn, a, kv);          // x += attention
  normInput(a, w.ffnNorm, w.ffnNormBias);    // h = norm(x)
  if (w.moe) {
    moeBlock(l, w.experts, a);  // x += experts, or out = experts (pending)
  } else {
    denseFfn(w.ffn, a.h.data(), a.n, a.out.data());
    a.pending = true;  // added by the next layer's norm, or before the final norm
  }
}


void DecoderModel::forward(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits, float* logits) {
  run(ids, n, pos0, kv, allLogits, logits, nullptr);
}

int32_t DecoderModel::forwardGreedy(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv) {
  int32_t tok = 0;
  run(ids, n, pos0, kv, false, nullptr, &tok);
  return tok;
}

DecoderModel::~DecoderModel() {
  if (picks_) backend_.release(Tier::Device, picks_, 2 * sizeof(int32_t));
}

int64_t DecoderModel::decodeGreedy(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                                   const std::function<bool(int32_t)>& onToken) {
  if (!backend_.devicePicks()) return Model::decodeGreedy(tok, pos, steps, kv, onToken);
  return decodeOnDevice(tok, pos, steps, kv, onToken, {});
}

int64_t DecoderModel::decodeSampled(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                                    const std::function<bool(int32_t)>& onToken,
                                    const std::function<DeviceSampling()>& sampling) {
  check(deviceSamplingTopK() > 0, "backend {} cannot sample on the device", backend_.name());
  return decodeOnDevice(tok, pos, steps, kv, onToken, sampling);
}

// Step i's input is step i - 1's pick, read on the device; the host issues step i + 1 before it waits for step i's
// token (the pick slots alternate, so step i + 1 writes the slot step i - 1 used, whose token the host already has).
int64_t DecoderModel::decodeOnDevice(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                                     const std::function<bool(int32_t)>& onToken,
                                     const std::function<DeviceSampling()>& sampling) {
  steps = std::min(steps, kv.capacity() - pos);
  if (steps <= 0) return 0;
  if (!picks_) picks_ = static_cast<int32_t*>(backend_.allocate(Tier::Device, 2 * sizeof(int32_t)));
  auto issue = [&](int64_t i) {
    DeviceSampling s;
    if (sampling) s = sampling();  // step i's draw: drawn in step order
    const DevicePick p{i == 0 ? nullptr : picks_ + (i - 1) % 2, picks_ + i % 2, int(i % 2), sampling ? &s : nullptr};
    run(&tok, 1, pos + i, kv, false, nullptr, nullptr, &p);
  };
  issue(0);
  for (int64_t i = 0; i < steps; i++) {
    if (i + 1 < steps) issue(i + 1);
    if (!onToken(backend_.pickResult(int(i % 2)))) return i + 1;
  }
  return steps;
}

// The forward pass; its result is the logits (host, [allLogits ? n : 1, vocab]), the last token's argmax (greedy) or
// that argmax kept on the device (pick).
void DecoderModel::run(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits, float* logits,
                       int32_t* greedy, const DevicePick* pick) {
  check(n > 0, "forward: no tokens");
  trace::Scope span("forward", "model");
  span.arg("tokens", double(n));
  span.arg("pos", double(pos0));
  check(pos0 + n <= kv.capacity(), "context full: {} tokens exceed the context of {} tokens", pos0 + n,
        kv.capacity());
  // A decode step with nothing paged: the backend may record it and replay it as a graph (Backend::beginStep).
  struct Step {
    Backend& b;
    bool on;
    Step(Backend& backend, bool o, bool queued) : b(backend), on(o) {
      if (on) b.beginStep(queued);
    }
    void end() {
      if (on) b.endStep();
      on = false;
    }
    ~Step() {
      if (on) b.abortStep();
    }
  } step(backend_, n == 1 && weights_.allResident(), pick && pick->in);  // queued: the previous step still runs
  const int64_t hid = cfg_.hiddenSize, V = cfg_.vocabSize;
  Activations a;
  a.n = n;
  a.positions.resize(size_t(n));
  std::iota(a.positions.begin(), a.positions.end(), pos0);
  a.x = DeviceArray(backend_, size_t(n * hid));
  a.h = DeviceArray(backend_, size_t(n * hid));
  a.out = DeviceArray(backend_, size_t(n * hid));
  if (pick && pick->in)
    backend_.embedDevice(embed_, pick->in, n, a.x.data());
  else
    backend_.embed(embed_, ids, n, a.x.data());
  for (int l = 0; l < int(cfg_.numLayers); l++) {
    LayerLease lease = weights_.acquireLayer(l);  // streamed layers: pinned in the device tier while l runs
    if (lease.streamed()) {
      weights_.prefetchLayer(l + 1 < int(cfg_.numLayers) ? l + 1 : 0);  // its copy overlaps this layer's compute
      bindLayer(l, lease);
      lease.checkAllBound();
    }
    layer(l, a, kv);
  }
  const int64_t rows = allLogits ? n : 1;
  float* last = a.x.data() + (n - rows) * hid;
  if (a.pending && cfg_.norm != NormType::LayerNorm) {  // the last layer's output: x += out, then the final norm
    backend_.addRmsNorm(last, a.out.data() + (n - rows) * hid, rows, hid, outNorm_.ptr(), float(cfg_.normEps),
                        a.h.data());
  } else {
    if (a.pending) residual(a);
    norm(last, rows, outNorm_, outNormBias_, a.h.data());
  }
  DeviceArray out(backend_, size_t(rows * V));
  backend_.matmul(a.h.data(), rows, lmHead_, lmHeadBias_.ptr(), out.data());
  if (pick)
    backend_.pickToDevice(out.data(), V, pick->out, pick->slot, pick->sampling);
  else if (greedy)
    backend_.argmax(out.data(), 1, V, greedy);
  else
    backend_.copy(logits, Tier::Host, out.data(), Tier::Device, size_t(rows * V) * sizeof(float));
  step.end();
}

}  // namespace doppler

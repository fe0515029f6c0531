// DeepSeek-V3 / Kimi K2: multi-head latent attention (MLA) and a MoE FFN with a shared expert.
//
// MLA (per token, H heads, nope/rope/v head dims N/R/V, latent rank C):
//   q = q_b(rmsnorm(q_a(h)))           [H, N + R]  (q LoRA; q = q_proj(h) when q_lora_rank is null)
//   kv_a(h) = [c' | k_rot]             [C + R]; c = rmsnorm(c') is the latent, k_rot one rope key shared by all heads
//   kv_b(c) = per head [k_nope | v]    [H, N + V]
//   rope (interleaved pairs when rope_interleave) on q[:, N:] and k_rot; score = (q · [k_nope | k_rot]) * scale,
//   scale = (N + R)^-0.5 * mscale^2 with mscale = yarn_get_mscale(factor, mscale_all_dim) when given.
// The KV cache is COMPRESSED: per token and layer it holds [c | roped k_rot] (C + R floats; KVLayerShape
// {1, C + R, 0}), not the expanded per-head K/V. Attention runs in one of two equal forms, picked by cost:
//   absorbed (decode): q_nope is taken through kv_b's K part (q~_h = W_k,hᵀ q_nope,h, [C]) so the scores are
//     [q~_h | q_rot,h] · [c | k_rot] straight over the cache (one shared "kv head" of dim C + R); the values are
//     the cached latents themselves, and each head's latent output goes through kv_b's V part (W_v,h, [V, C]);
//   expanded (prefill): kv_b applied to every cached latent, then ordinary attention over [k_nope | k_rot], v.
// MoE layers (l >= first_k_dense_replace): routed experts with sigmoid scores, e_score_correction_bias,
// group-limited top-k, norm_topk_prob and routed_scaling_factor (RoutingType::SigmoidGroupTopK), plus the shared
// expert(s) (a SwiGLU FFN of width moe_intermediate_size * n_shared_experts) on every token. Dense layers: SwiGLU.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/architectures.h"
#include "model/decoder.h"

namespace doppler {

namespace {

// transformers' DeepseekV3RMSNorm(q_lora_rank / kv_lora_rank) keeps the default eps, whatever rms_norm_eps says.
constexpr float kLoraNormEps = 1e-6f;

struct MlaWeights {
  WeightView q;           // [H*(N+R), hidden] (no q LoRA)
  WeightView qA;          // [q_lora, hidden]
  ParamVec qANorm;        // [q_lora]
  WeightView qB;          // [H*(N+R), q_lora]
  WeightView kvA;         // [C+R, hidden]
  ParamVec kvANorm;       // [C]
  WeightView kvB;         // [H*(N+V), C]
  WeightView o;           // [hidden, H*V]
  std::shared_ptr<uint8_t> kvBRows;  // row-major copy of a column-layout kv_b in the device tier (made at load
                                     // when it is resident)
};

class DeepseekV3Model final : public DecoderModel {
 public:
  DeepseekV3Model(const ModelConfig& cfg, WeightProvider& w, Backend& b) : DecoderModel(cfg, w, b) {
    check(cfg_.kvLoraRank > 0 && cfg_.qkNopeHeadDim > 0 && cfg_.qkRopeHeadDim > 0 && cfg_.vHeadDim > 0,
          "deepseek_v3: config needs kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim and v_head_dim");
    check(!cfg_.attentionBias, "deepseek_v3: attention_bias = true is not supported");
    check(cfg_.numExperts > 0 && cfg_.routing == RoutingType::SigmoidGroupTopK,
          "deepseek_v3: config needs routed experts with sigmoid group-limited routing");
    // Rope covers only the R decoupled dims of each head.
    rope_ = computeRope(cfg_.rope, cfg_.qkRopeHeadDim, cfg_.maxPositionEmbeddings);
    scale_ = 1.0f / std::sqrt(float(cfg_.qkNopeHeadDim + cfg_.qkRopeHeadDim));
    if (cfg_.rope.type != "default" && cfg_.rope.mscaleAllDim != 0) {
      const double m = yarnGetMscale(cfg_.rope.factor, cfg_.rope.mscaleAllDim);
      scale_ = float(double(scale_) * m * m);
    }

    loadCommon();
    layers_.resize(size_t(cfg_.numLayers));
    mla_.resize(size_t(cfg_.numLayers));
    shared_.resize(size_t(cfg_.numLayers));
    for (int l = 0; l < int(cfg_.numLayers); l++) {
      auto& lw = layers_[size_t(l)];
      loadNorms(l, lw);
      loadMla(l, mla_[size_t(l)]);
      lw.moe = cfg_.layerIsMoe[size_t(l)];
      if (lw.moe) {
        loadMoe(l, lw.experts);
        if (cfg_.numSharedExperts > 0)
          loadDenseFfn(fmt::format("layers.{}.shared", l), cfg_.moeIntermediateSize * cfg_.numSharedExperts,
                       shared_[size_t(l)]);
      } else {
        loadDenseFfn(fmt::format("layers.{}.ffn", l), cfg_.intermediateSize, lw.ffn);
      }
    }
  }

  // The compressed cache: latent + rope key, one "head", no separate values.
  std::vector<KVLayerShape> kvShapes() const override {
    return std::vector<KVLayerShape>(size_t(cfg_.numLayers),
                                     KVLayerShape{1, cfg_.kvLoraRank + cfg_.qkRopeHeadDim, 0});
  }

 protected:
  void layer(int l, Activations& a, KVCache& kv) override {
    auto& w = layers_[size_t(l)];
    normInput(a, w.attnNorm, w.attnNormBias);
    mlaAttention(l, mla_[size_t(l)], a, kv);
    a.pending = true;
    normInput(a, w.ffnNorm, w.ffnNormBias);
    if (w.moe) {
      moeBlock(l, w.experts, a);  // x += experts, or out = experts with a.pending
      const FfnWeights& sh = shared_[size_t(l)];
      if (!sh.gate.shape.empty()) {
        DeviceArray s(backend_, size_t(a.n * cfg_.hiddenSize));  // [n, hidden]
        denseFfn(sh, a.h.data(), a.n, s.data());
        backend_.axpy(1.0f, s.data(), a.n * cfg_.hiddenSize, a.pending ? a.out.data() : a.x.data());
      }
    } else {
      denseFfn(w.ffn, a.h.data(), a.n, a.out.data());
      a.pending = true;
    }
  }

 private:
  void loadMla(int l, MlaWeights& w) {
    const std::string p = fmt::format("layers.{}.attn.", l);
    const int64_t H = cfg_.numHeads, N = cfg_.qkNopeHeadDim, R = cfg_.qkRopeHeadDim, V = cfg_.vHeadDim,
                  C = cfg_.kvLoraRank, hid = cfg_.hiddenSize;
    if (cfg_.qLoraRank > 0) {
      w.qA = loadMatrix(p + "q_a.weight", cfg_.qLoraRank, hid);
      w.qANorm = loadParams(p + "q_a_norm.weight", cfg_.qLoraRank);
      w.qB = loadMatrix(p + "q_b.weight", H * (N + R), cfg_.qLoraRank);
    } else {
      w.q = loadMatrix(p + "q.weight", H * (N + R), hid);
    }
    w.kvA = loadMatrix(p + "kv_a.weight", C + R, hid);
    w.kvANorm = loadParams(p + "kv_a_norm.weight", C);
    w.kvB = loadMatrix(p + "kv_b.weight", H * (N + V), C);
    w.o = loadMatrix(p + "o.weight", hid, H * V);

    if (w.kvB.layout == Layout::Column && w.kvB.data) w.kvBRows = rowMajorOnDevice(w.kvB);
  }

  // A row-major copy of a column-layout matrix in the device tier: read back to the host, transposed there,
  // copied up again (the weights may be GPU memory, which host code cannot read directly).
  std::shared_ptr<uint8_t> rowMajorOnDevice(const WeightView& w) {
    const size_t bytes = w.bytes();
    std::vector<uint8_t> host(bytes), rows;
    backend_.copy(host.data(), Tier::Host, w.data, Tier::Device, bytes);
    WeightView hv = w;
    hv.data = host.data();
    toRowMajor(hv, rows);
    auto* d = static_cast<uint8_t*>(backend_.allocate(Tier::Device, bytes));
    backend_.copy(d, Tier::Device, rows.data(), Tier::Host, bytes);
    Backend* b = &backend_;
    return std::shared_ptr<uint8_t>(d, [b, bytes](uint8_t* p) { b->release(Tier::Device, p, bytes); });
  }

  // A column-layout W[out, in] as row-major bytes (same dtype).
  static void toRowMajor(const WeightView& w, std::vector<uint8_t>& out) {
    const int64_t rows = w.rows(), cols = w.cols();
    const size_t es = dtypeSize(w.dtype);
    const auto* src = static_cast<const uint8_t*>(w.data);
    out.resize(size_t(rows * cols) * es);
    for (int64_t i = 0; i < cols; i++)
      for (int64_t o = 0; o < rows; o++)
        std::memcpy(out.data() + size_t(o * cols + i) * es, src + size_t(i * rows + o) * es, es);
  }

  // Streamed layers (tiered weights): the MLA matrices and the shared expert live outside LayerWeights.
  void bindLayer(int l, const LayerLease& lease) override {
    DecoderModel::bindLayer(l, lease);
    const std::string p = fmt::format("layers.{}.", l);
    auto bind = [&](WeightView& v, const std::string& name) {
      if (!v.data && !v.shape.empty()) lease.bind(v, name);
    };
    MlaWeights& w = mla_[size_t(l)];
    bind(w.q, p + "attn.q.weight");
    bind(w.qA, p + "attn.q_a.weight");
    bind(w.qB, p + "attn.q_b.weight");
    bind(w.kvA, p + "attn.kv_a.weight");
    bind(w.kvB, p + "attn.kv_b.weight");
    bind(w.o, p + "attn.o.weight");
    FfnWeights& sh = shared_[size_t(l)];
    bind(sh.gate, p + "shared.gate.weight");
    bind(sh.up, p + "shared.up.weight");
    bind(sh.down, p + "shared.down.weight");
  }

  void copyDev(float* dst, const float* src, int64_t count) {
    backend_.copy(dst, Tier::Device, src, Tier::Device, size_t(count) * sizeof(float));
  }

  // a.out = MLA(a.h) for layer l; appends [latent | k_rot] of the n tokens to the cache.
  void mlaAttention(int l, const MlaWeights& w, Activations& a, KVCache& kv) {
    const int64_t n = a.n, H = cfg_.numHeads, N = cfg_.qkNopeHeadDim, R = cfg_.qkRopeHeadDim,
                  V = cfg_.vHeadDim, C = cfg_.kvLoraRank, QD = N + R, LD = C + R;
    const int64_t pos0 = a.positions[0], T = pos0 + n;

    DeviceArray q(backend_, size_t(n * H * QD));  // [n, H, N+R]
    if (!w.qA.shape.empty()) {
      DeviceArray qa(backend_, size_t(n * cfg_.qLoraRank));  // [n, q_lora]
      backend_.matmul(a.h.data(), n, w.qA, nullptr, qa.data());
      backend_.rmsNorm(qa.data(), n, cfg_.qLoraRank, w.qANorm.ptr(), kLoraNormEps, qa.data());
      backend_.matmul(qa.data(), n, w.qB, nullptr, q.data());
    } else {
      backend_.matmul(a.h.data(), n, w.q, nullptr, q.data());
    }
    DeviceArray lat(backend_, size_t(n * LD));  // [n, C+R]: normed latent | k_rot
    backend_.matmul(a.h.data(), n, w.kvA, nullptr, lat.data());
    for (int64_t i = 0; i < n; i++)
      backend_.rmsNorm(lat.data() + i * LD, 1, C, w.kvANorm.ptr(), kLoraNormEps, lat.data() + i * LD);
    RopeParams rp{rope_.invFreq.data(), rope_.rotDim, rope_.attentionScale, cfg_.ropeInterleave};
    backend_.rope(q.data() + N, n, H, QD, a.positions.data(), rp);   // q[:, :, N:]
    backend_.rope(lat.data() + C, n, 1, LD, a.positions.data(), rp);  // k_rot
    kv.write(l, pos0, n, lat.data(), lat.data());
    std::vector<KVChunk> chunks;
    kv.chunks(l, T, chunks);

    DeviceArray attn(backend_, size_t(n * H * V));  // [n, H, V]
    // Multiply-adds of each form: absorbed scores/values over C+R per key; expanded pays kv_b on every key.
    const double absorbed = double(n) * double(T) * double(H) * double(2 * LD) + double(n * H) * double((N + V) * C);
    const double expanded = double(T) * double(H) * double((N + V) * C) + double(n) * double(T) * double(H * (QD + V));
    if (absorbed <= expanded)
      absorbedAttention(w, q.data(), n, a.positions.data(), chunks, attn.data());
    else
      expandedAttention(w, q.data(), n, T, a.positions.data(), chunks, attn.data());
    backend_.matmul(attn.data(), n, w.o, nullptr, a.out.data());
  }

  void absorbedAttention(const MlaWeights& w, const float* q, int64_t n, const int64_t* positions,
                         std::vector<KVChunk>& chunks, float* attn) {
    const int64_t H = cfg_.numHeads, N = cfg_.qkNopeHeadDim, R = cfg_.qkRopeHeadDim, V = cfg_.vHeadDim,
                  C = cfg_.kvLoraRank, QD = N + R, LD = C + R;
    // Per-head views of kv_b (row-major): head h's rows are contiguous, so W_k,h [N, C] read column-major is
    // W_k,hᵀ [C, N], and W_v,h [V, C] is a row block.
    std::shared_ptr<uint8_t> scratch;
    const uint8_t* base = static_cast<const uint8_t*>(w.kvB.data);
    if (w.kvB.layout == Layout::Column) {
      if (!w.kvBRows) scratch = rowMajorOnDevice(w.kvB);  // streamed: converted per use
      base = w.kvBRows ? w.kvBRows.get() : scratch.get();
    }
    const size_t es = dtypeSize(w.kvB.dtype);
    auto headK = [&](int64_t h) {
      return WeightView{base + size_t(h * (N + V) * C) * es, w.kvB.dtype, {C, N}, Layout::Column};
    };
    auto headV = [&](int64_t h) {
      return WeightView{base + size_t((h * (N + V) + N) * C) * es, w.kvB.dtype, {V, C}, Layout::Row};
    };
    DeviceArray qAbs(backend_, size_t(n * H * LD));  // [n, H, C+R]
    DeviceArray xs(backend_, size_t(n * std::max(N, C))), ys(backend_, size_t(n * std::max(C, V)));
    for (int64_t h = 0; h < H; h++) {
      for (int64_t i = 0; i < n; i++) copyDev(xs.data() + i * N, q + (i * H + h) * QD, N);  // q_nope,h [n, N]
      backend_.matmul(xs.data(), n, headK(h), nullptr, ys.data());                           // [n, C]
      for (int64_t i = 0; i < n; i++) {
        copyDev(qAbs.data() + (i * H + h) * LD, ys.data() + i * C, C);
        copyDev(qAbs.data() + (i * H + h) * LD + C, q + (i * H + h) * QD + N, R);
      }
    }
    // Values are the cached rows themselves: their first C dims are the latent (the trailing R dims of the
    // output are ignored below).
    for (auto& c : chunks) c.v = c.k;
    AttentionParams ap;
    ap.numHeads = H;
    ap.numKvHeads = 1;
    ap.headDim = LD;
    ap.vDim = LD;
    ap.scale = scale_;
    DeviceArray o(backend_, size_t(n * H * LD));  // [n, H, C+R]
    backend_.attention(qAbs.data(), n, positions, chunks.data(), int64_t(chunks.size()), ap, o.data());
    for (int64_t h = 0; h < H; h++) {
      for (int64_t i = 0; i < n; i++) copyDev(xs.data() + i * C, o.data() + (i * H + h) * LD, C);  // [n, C]
      backend_.matmul(xs.data(), n, headV(h), nullptr, ys.data());                                // [n, V]
      for (int64_t i = 0; i < n; i++) copyDev(attn + (i * H + h) * V, ys.data() + i * V, V);
    }
  }

  void expandedAttention(const MlaWeights& w, const float* q, int64_t n, int64_t T, const int64_t* positions,
                         const std::vector<KVChunk>& chunks, float* attn) {
    const int64_t H = cfg_.numHeads, N = cfg_.qkNopeHeadDim, R = cfg_.qkRopeHeadDim, V = cfg_.vHeadDim,
                  C = cfg_.kvLoraRank, QD = N + R, LD = C + R;
    DeviceArray latAll(backend_, size_t(T * C)), rotAll(backend_, size_t(T * R));  // [T, C], [T, R]
    int64_t covered = 0;
    for (const auto& ch : chunks) {
      for (int64_t t = ch.t0; t < ch.t1; t++) {
        copyDev(latAll.data() + t * C, ch.k + (t - ch.t0) * LD, C);
        copyDev(rotAll.data() + t * R, ch.k + (t - ch.t0) * LD + C, R);
      }
      covered += ch.t1 - ch.t0;
    }
    check(covered == T, "deepseek_v3: the KV cache returned {} of {} tokens", covered, T);
    DeviceArray kvAll(backend_, size_t(T * H * (N + V)));  // [T, H, N+V]
    backend_.matmul(latAll.data(), T, w.kvB, nullptr, kvAll.data());
    DeviceArray K(backend_, size_t(T * H * QD)), Vv(backend_, size_t(T * H * V));  // [T, H, N+R], [T, H, V]
    for (int64_t t = 0; t < T; t++)
      for (int64_t h = 0; h < H; h++) {
        const float* kvh = kvAll.data() + (t * H + h) * (N + V);
        copyDev(K.data() + (t * H + h) * QD, kvh, N);
        copyDev(K.data() + (t * H + h) * QD + N, rotAll.data() + t * R, R);
        copyDev(Vv.data() + (t * H + h) * V, kvh + N, V);
      }
    KVChunk all{0, T, K.data(), Vv.data()};
    AttentionParams ap;
    ap.numHeads = H;
    ap.numKvHeads = H;
    ap.headDim = QD;
    ap.vDim = V;
    ap.scale = scale_;
    backend_.attention(q, n, positions, &all, 1, ap, attn);
  }

  float scale_ = 1.0f;
  std::vector<MlaWeights> mla_;
  std::vector<FfnWeights> shared_;              // per layer; empty views on dense layers
};

}  // namespace

std::unique_ptr<Model> makeDeepseekV3(const ModelConfig& c, WeightProvider& w, Backend& b) {
  return std::make_unique<DeepseekV3Model>(c, w, b);
}

}  // namespace doppler

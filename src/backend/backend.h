// The backend interface: where memory lives (buffers per tier), how bytes move between tiers, and the ops
// a forward pass needs. Model code calls only this interface; the CPU backend (backend/cpu) implements
// it for CI and hosts without a GPU, the CUDA backend (later) on the GPU.
//
// Activations are f32, row-major. Pointers passed to ops are memory from allocate(Tier::Device, ...)
// (on the CPU backend that is plain host memory counted against an emulated device budget).
// Weights arrive as WeightView (f32/f16/bf16, row or column layout; see core/tensor.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace doppler {

namespace kv {
struct BlockFormat;  // a KV cache block's storage layout (kv/kv_codec.h)
}

enum class Tier : uint8_t { Device, Host, Disk };
std::string_view tierName(Tier t);  // "device" | "host" | "disk"

// Rotary embedding applied per head to the first `rotDim` dims of each head.
struct RopeParams {
  const float* invFreq = nullptr;  // [rotDim / 2]
  int64_t rotDim = 0;
  float attentionScale = 1.0f;     // multiplies cos and sin (yarn / longrope mscale)
  bool interleaved = false;        // false: rotate halves (x[i], x[i + rotDim/2]) (NeoX / HF default);
                                   // true: rotate pairs (x[2i], x[2i+1]) (deepseek rope_interleave)
};

// One contiguous run of cached keys/values for one layer: tokens [t0, t1).
struct KVChunk {
  int64_t t0 = 0, t1 = 0;
  const float* k = nullptr;  // [t1 - t0, kvHeads, headDim]
  const float* v = nullptr;  // [t1 - t0, kvHeads, vDim]
};

struct AttentionParams {
  int64_t numHeads = 0, numKvHeads = 0;
  int64_t headDim = 0;       // q/k dim per head
  int64_t vDim = 0;          // v dim per head
  float scale = 1.0f;        // softmax scale (1/sqrt(headDim) unless the model says otherwise)
  int64_t window = 0;        // 0: full causal attention; w > 0: query at position p sees keys (p - w, p]
  const float* sinks = nullptr;  // [numHeads] per-head sink logits (gpt_oss) or nullptr
};

// One routed expert applied to one token (Backend::moeExperts).
struct ExpertCall {
  WeightView gate, up, down;  // [I, hidden], [I, hidden], [hidden, I]
  float weight = 0;           // routing weight
};

// Sampling a backend may do on the device (Backend::pickToDevice): engine/sampler.cpp's steps for temperature > 0
// with top-k on and no repetition penalty: the topK best of logits / temperature (ties: lower index), their softmax
// (double), top-p, min-p and the draw u.
struct DeviceSampling {
  float temperature = 1.0f;  // > 0
  int topK = 0;              // 1 .. Backend::deviceSamplingTopK()
  float topP = 1.0f, minP = 0.0f;
  double u = 0;              // the sampler's uniform draw in [0, 1) for this token
};

// Decode steps recorded and replayed as GPU graphs (Backend::beginStep; the CUDA backend's GraphRecorder).
struct GraphStats {
  uint64_t steps = 0;        // steps recorded as graphs (beginStep .. endStep)
  uint64_t launches = 0;     // graph launches (segments)
  uint64_t builds = 0;       // graphs built and instantiated (first use, or a step's ops changed)
  uint64_t nodes = 0;        // ops run through graphs
  uint64_t nodeUpdates = 0;  // nodes whose arguments were updated in place before a launch
  double hostSeconds = 0;    // host time inside recorded steps (recording, updates, launches, result waits)
  double firstLaunchSeconds = 0;  // host time from a step's start to its first graph launch
  double lastLaunchSeconds = 0;   // host time from a step's start to its last graph launch (recording it all)
  double updateSeconds = 0;       // host time updating node arguments
  double gpuSeconds = 0;     // GPU time of the graph launches (events around each launch)
  double gpuSpanSeconds = 0; // GPU time from a step's first launch starting to its last ending
  double gpuGapSeconds = 0;  // GPU time from one step's end to the next step's first launch starting
  uint64_t gaps = 0;         // steps gpuGapSeconds covers (each after another recorded step)
};

// Counters a backend keeps (all zero on the CPU backend).
struct BackendStats {
  GraphStats graphs;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  virtual void* allocate(Tier tier, size_t bytes) = 0;
  virtual void release(Tier tier, void* p, size_t bytes) = 0;  // bytes: as passed to allocate
  virtual void copy(void* dst, Tier dstTier, const void* src, Tier srcTier, size_t bytes) = 0;
  // Scratch device memory (DeviceArray): like allocate(Tier::Device), for arrays that live within a forward pass
  // or longer. Inside a step (beginStep) a GPU backend serves them from an arena that starts over every step, so
  // that a replayed step finds its scratch at the same addresses.
  virtual void* allocateScratch(size_t bytes) { return allocate(Tier::Device, bytes); }
  virtual void releaseScratch(void* p, size_t bytes) { release(Tier::Device, p, bytes); }

  // ---- ops ----
  // y[n, out] = x[n, in] · Wᵀ (+ bias)
  virtual void matmul(const float* x, int64_t n, const WeightView& w, const float* bias, float* y) = 0;
  // out[i, :] = table[ids[i], :] as f32. table: [vocab, dim], row layout.
  virtual void embed(const WeightView& table, const int32_t* ids, int64_t n, float* out) = 0;
  // y[n, out] += x[n, in] · Wᵀ (+ bias): a block's output added straight into the residual stream. Default: matmul
  // into scratch, then axpy; the CUDA backend adds in the decode GEMV's own store. y must not alias x.
  virtual void matmulAdd(const float* x, int64_t n, const WeightView& w, const float* bias, float* y);
  // y[r, :] = x[r, :] / rms(x[r, :]) * w (+ 0 bias); rows x dim. y may alias x.
  virtual void rmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, float* y) = 0;
  // y = (x - mean) / sqrt(var + eps) * w + b. y may alias x.
  virtual void layerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, float eps,
                         float* y) = 0;
  // In place on x: [n, heads, headDim], token i at position positions[i].
  virtual void rope(float* x, int64_t n, int64_t heads, int64_t headDim, const int64_t* positions,
                    const RopeParams& p) = 0;
  // q [n, qHeads, headDim] and k [n, kHeads, headDim] in place: each head RMS-normalised with qNorm / kNorm
  // [headDim] when they are given (qwen3's q/k norm; both or neither), then rope at positions[i]. Default: rmsNorm
  // and rope one after another; the CUDA backend does it in one launch.
  virtual void qkNormRope(float* q, float* k, int64_t n, int64_t qHeads, int64_t kHeads, int64_t headDim,
                          const float* qNorm, const float* kNorm, float eps, const int64_t* positions,
                          const RopeParams& p) {
    if (qNorm) rmsNorm(q, n * qHeads, headDim, qNorm, eps, q);
    if (kNorm) rmsNorm(k, n * kHeads, headDim, kNorm, eps, k);
    rope(q, n, qHeads, headDim, positions, p);
    rope(k, n, kHeads, headDim, positions, p);
  }
  // Causal attention of n queries q [n, numHeads, headDim] at positions[i] over cached chunks (which already
  // hold these tokens). out: [n, numHeads, vDim].
  virtual void attention(const float* q, int64_t n, const int64_t* positions, const KVChunk* chunks,
                         int64_t numChunks, const AttentionParams& p, float* out) = 0;
  // out = silu(gate) * up over n elements; limit > 0: gpt_oss clamped variant
  // (gate = min(gate, limit), up = clamp(up, -limit, limit), out = gate * sigmoid(alpha * gate) * (up + 1)).
  virtual void swiglu(const float* gate, const float* up, int64_t n, float limit, float alpha, float* out) = 0;
  // y[i] += a * x[i]
  virtual void axpy(float a, const float* x, int64_t n, float* y) = 0;
  // The residual add fused with the next RMSNorm: x += add, then y = rmsNorm(x) * w (rows x dim). Default: axpy,
  // then rmsNorm.
  virtual void addRmsNorm(float* x, const float* add, int64_t rows, int64_t dim, const float* w, float eps, float* y) {
    axpy(1.0f, add, rows * dim, x);
    rmsNorm(x, rows, dim, w, eps, y);
  }
  // Several products of the same input: ys[j] = x · ws[j]ᵀ (+ biases[j]) for j < count (attention's q, k, v).
  // Default: one matmul after another; the CUDA backend runs them in one launch for one token.
  struct MatmulOut {
    WeightView w;
    const float* bias;
    float* y;
  };
  virtual void matmulMany(const float* x, int64_t n, const MatmulOut* outs, int count) {
    for (int j = 0; j < count; j++) matmul(x, n, outs[j].w, outs[j].bias, outs[j].y);
  }
  // MoE for ONE token (decode): out[:] += Σ_j calls[j].weight · down_j(act(gate_j(x), up_j(x))) with act the
  // swiglu above (limit, alpha); x, out [hidden]. Default (backend_factory.cpp): the ops above, one expert after
  // another; the CUDA backend runs all of them in two launches (grouped GEMVs).
  virtual void moeExperts(const float* x, const ExpertCall* calls, int64_t count, float limit, float alpha,
                          float* out);
  // Decode MoE with the routing on the device, for ONE token when every expert of the layer is resident:
  // softmax over the numExperts router logits (device), the topK best (ties: lower index), weights renormalised
  // over them when normTopk; out[:] += Σ weight_j · expert_j(x) (out: the residual stream). `experts` lists all numExperts
  // experts of the layer and must stay valid (same device addresses) for the backend's lifetime. Nothing waits
  // for the GPU. Returns false when the backend has no such path (the caller then routes on the host).
  virtual bool moeRoutedOnDevice(const float* x, const float* logits, const ExpertCall* experts, int64_t numExperts,
                                 int64_t topK, bool normTopk, float limit, float alpha, float* out) {
    return false;
  }
  // MoE prefill's token routing (rows and w are host arrays): gatherRows copies dst[i, :] = src[rows[i], :];
  // scatterAddRows adds dst[rows[i], :] += w[i] * src[i, :] (rows distinct), for i < count, rows of dim floats.
  // Defaults: one copy() / axpy() per row; a GPU backend does each in one launch.
  virtual void gatherRows(const float* src, const int64_t* rows, int64_t count, int64_t dim, float* dst);
  virtual void scatterAddRows(const float* src, const int64_t* rows, const float* w, int64_t count, int64_t dim,
                              float* dst);
  // Greedy pick (sampling on the device): out[r] = the index of the first maximum of x[r, 0..n) for r < rows, as
  // std::max_element picks it (NaN never wins, but a NaN at index 0 stays: firstMaxIndex). out is host memory;
  // waits for the result, so only rows * 4 bytes cross to the host. Default: reads the rows on the host.
  virtual void argmax(const float* x, int64_t rows, int64_t n, int32_t* out);
  // ---- decoding with the token kept on the device (Model::decodeGreedy, decodeSampled) ----
  // True when pickToDevice, pickResult and embedDevice work: a step's pick then feeds the next step's embedding on
  // the device, and the host may issue step i+1 before step i's token has reached it. Default: false (CPU backend).
  virtual bool devicePicks() const { return false; }
  // *dev (device memory) = firstMaxIndex(x[0..n)) as argmax picks it, or with `sampling` the token Sampler::sample
  // draws; the same index starts for the host without waiting: pickResult(slot) waits for it and returns it. slot: 0
  // or 1 (two picks may be in flight).
  virtual void pickToDevice(const float* x, int64_t n, int32_t* dev, int slot, const DeviceSampling* sampling = nullptr);
  // The largest top-k pickToDevice samples with; 0: it picks greedily only.
  virtual int deviceSamplingTopK() const { return 0; }
  virtual int32_t pickResult(int slot);
  // embed() with ids [n] in device memory (not checked on the host: an id outside the table gives a row of NaN).
  virtual void embedDevice(const WeightView& table, const int32_t* ids, int64_t n, float* out);
  // ---- KV cache blocks (the paged KV cache's storage, kv/kv_codec.h) ----
  // dst (fmt.bytes() bytes) = k [tokens, heads, kDim] and v [tokens, heads, vDim] (f32; v unused when vDim == 0)
  // stored in fmt's type; decodeKVBlock is the inverse. All pointers are device memory. Default: kv/kv_codec.h's
  // host code (through host copies when device memory is not host-visible); the CUDA backend runs kernels that give
  // the same bytes.
  virtual void encodeKVBlock(const kv::BlockFormat& fmt, const float* k, const float* v, uint8_t* dst);
  virtual void decodeKVBlock(const kv::BlockFormat& fmt, const uint8_t* src, float* k, float* v);
  // y[i] = value for i < n (device memory). Default: through copy() from a host array.
  virtual void fill(float* y, int64_t n, float value) {
    std::vector<float> v(static_cast<size_t>(n), value);
    copy(y, Tier::Device, v.data(), Tier::Host, v.size() * sizeof(float));
  }

  // True when device-tier memory is ordinary host memory that host code may read and write directly (the CPU
  // backend). False on a GPU: host code must go through copy().
  virtual bool hostVisible() const { return false; }
  // Waits until every op issued so far has finished (ops of asynchronous backends run in issue order; copy()
  // to the host tier waits by itself).
  virtual void synchronize() {}
  // ---- step graphs ----
  // A decode step during which no weight is loaded, evicted or streamed (everything resident) may be bracketed by
  // beginStep() .. endStep(): a GPU backend then records the step's ops and launches them as a graph at endStep()
  // or at the first op that needs the host (a copy to or from host memory, synchronize()), updating only the
  // arguments that changed since the previous step. Results are bit-identical to issuing the ops one by one. The
  // caller must not let another thread free or overwrite device memory the step uses until endStep().
  // abortStep() drops the recorded ops (after an exception). Defaults: nothing (ops run as they are issued).
  // queued: the GPU is still busy with earlier work (pipelined decoding issues step i + 1 while step i runs), so the
  // step may be launched as one graph instead of in parts that let the GPU start on it early.
  virtual void beginStep(bool queued = false) {}
  virtual void endStep() {}
  virtual void abortStep() noexcept {}
  virtual BackendStats stats() const { return {}; }

  // Physical device memory (a GPU's total and currently free bytes); false when the device tier is emulated.
  virtual bool deviceMemory(uint64_t* total, uint64_t* free) const { return false; }
};

std::unique_ptr<Backend> makeCpuBackend();

// The index std::max_element returns for x[0..n) (n > 0): the first maximum; NaN compares false, so it never
// replaces a maximum, and a NaN at index 0 is never replaced. Backend::argmax's reference.
int32_t firstMaxIndex(const float* x, int64_t n);

// ---- backend selection (backend/backend_factory.cpp) ----
// "cpu", "cuda" (Error naming the reason when no GPU is usable) or "auto" (cuda when a GPU is usable, else cpu).
std::unique_ptr<Backend> makeBackend(std::string_view kind);
bool cudaCompiled();                         // this build has the CUDA backend
int cudaDeviceCount(std::string* why = nullptr);  // usable GPUs (0 with the reason in *why)
std::string cudaDeviceSummary();             // "NVIDIA H200, 139.8 GiB, sm_90, 132 SMs, driver 13.0" or "none (...)"

}  // namespace doppler

namespace doppler {

// f32 scratch array in a backend's device tier (RAII).
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(Backend& b, size_t count) : b_(&b), n_(count) {
    p_ = static_cast<float*>(b.allocateScratch(count * sizeof(float)));
  }
  ~DeviceArray() { reset(); }
  DeviceArray(DeviceArray&& o) noexcept : b_(o.b_), p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      reset();
      b_ = o.b_; p_ = o.p_; n_ = o.n_;
      o.p_ = nullptr; o.n_ = 0;
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  float* data() { return p_; }
  const float* data() const { return p_; }
  size_t size() const { return n_; }
  explicit operator bool() const { return p_ != nullptr; }

 private:
  void reset() {
    if (p_) b_->releaseScratch(p_, n_ * sizeof(float));
    p_ = nullptr;
  }
  Backend* b_ = nullptr;
  float* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace doppler

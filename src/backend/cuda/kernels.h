// CUDA kernels of the CUDA backend (kernels.cu), behind plain launch functions so that the backend class
// (cuda_backend.cpp) compiles with the host compiler. Every launcher enqueues on `stream` and returns the launch
// error (cudaSuccess when the launch was accepted). Pointers are device memory unless said otherwise.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace doppler::cuda {

// Receives the calling thread's kernel launches instead of the GPU while set (setLaunchSink), with the kernel,
// its launch shape and its parameters (args[i] points at sizes[i] bytes, as cudaLaunchKernel takes them). The
// CUDA backend records decode steps into graphs with it (graph_recorder.h). kernel() reports failure by throwing.
class LaunchSink {
 public:
  virtual ~LaunchSink() = default;
  virtual void kernel(const void* func, dim3 grid, dim3 block, size_t smem, void** args, const size_t* sizes,
                      int count) = 0;
};
void setLaunchSink(LaunchSink* sink);  // for the calling thread; nullptr: launch on the GPU again

// Weight element types as the kernels know them (core/dtype.h's DType mapped by the backend).
enum WType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kMXFP4 = 3 };

struct MatW {
  const void* data;
  int type;         // WType
  bool column;      // Layout::Column: element (o, i) at i * out + o; else o * in + i
  int64_t out, in;  // logical W[out, in]
};

// y[n, out] = x[n, in] · Wᵀ (+ bias). Chooses a GEMV (small n) or a tiled GEMM. add: y += x · Wᵀ (+ bias) instead
// (n <= 8 only, the GEMV's own store; cudaErrorInvalidValue otherwise).
cudaError_t matmul(const float* x, int64_t n, const MatW& w, const float* bias, float* y, cudaStream_t s,
                   bool add = false);

// y_j = x · W_jᵀ (+ bias_j) for one token and up to kMultiGemv row-layout matrices of one type (f32/f16/bf16) with
// the same `in` (% 8 == 0; W_j and x 16-byte aligned): one launch. firstBlock is filled in by matmulMany.
constexpr int kMultiGemv = 4;
struct MultiGemv {
  int count;
  const void* w[kMultiGemv];
  const float* bias[kMultiGemv];
  float* y[kMultiGemv];
  int64_t out[kMultiGemv];
  int64_t firstBlock[kMultiGemv];
};
cudaError_t matmulMany(const float* x, int64_t in, int type, MultiGemv m, cudaStream_t s);


// y = rmsNorm(x) * w per row; add != nullptr: x += add first (x is written back).
cudaError_t rmsNorm(float* x, const float* add, int64_t rows, int64_t dim, const float* w, float eps, float* y,
                    cudaStream_t s);
cudaError_t layerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, float eps, float* y,
                      cudaStream_t s);

// Small host arrays travel inside the kernel parameters (no copy before the launch) when they fit ("inl"); else
// the pointers name device copies.
constexpr int kInlinePos = 32, kInlineInv = 128, kInlinePosAttn = 16, kInlineChunks = 96, kInlineExperts = 64,
              kInlineIds = 32;

struct EmbedArgs {
  const int32_t* ids;  // [n] token ids (device) unless inl
  bool inl;
  int32_t idsInl[kInlineIds];
};
// out[i, :] = table[ids[i], :] (inline ids checked on the host by the caller; a device id outside the table gives a
// row of NaN).
cudaError_t embed(const MatW& table, const EmbedArgs& e, int64_t n, float* out, cudaStream_t s);

struct RopeArgs {
  const int64_t* pos;  // [n] positions (device) unless inl
  const float* inv;    // [rotDim / 2] inverse frequencies (device) unless inl
  bool inl;
  int64_t posInl[kInlinePos];
  float invInl[kInlineInv];
};

// In place on x: token i's heads at x + (i * heads + h) * headDim.
cudaError_t rope(float* x, int64_t n, int64_t heads, int64_t headDim, const RopeArgs& r, int64_t rotDim,
                 float attentionScale, bool interleaved, cudaStream_t s);

// rope on q [n, qHeads, headDim] and k [n, kHeads, headDim], each head first RMS-normalised with qNorm / kNorm
// [headDim] when they are given (qwen3's q/k norm): one launch.
cudaError_t qkNormRope(float* q, float* k, int64_t n, int64_t qHeads, int64_t kHeads, int64_t headDim,
                       const float* qNorm, const float* kNorm, float eps, const RopeArgs& r, int64_t rotDim,
                       float attentionScale, bool interleaved, cudaStream_t s);

struct DevChunk {
  int64_t t0, t1;
  const float* k;
  const float* v;
};

struct AttnArgs {
  int64_t numHeads, numKvHeads, headDim, vDim;
  float scale;
  int64_t window;
  const float* sinks;  // [numHeads] or nullptr
  int64_t numChunks;
  const int64_t* pos;      // [n] (device) unless inl
  const DevChunk* chunks;  // [numChunks] (device) unless inl
  bool inl;
  int64_t posInl[kInlinePosAttn];
  DevChunk chunkInl[kInlineChunks];
};

cudaError_t attention(const float* q, int64_t n, const AttnArgs& a, float* out, cudaStream_t s);

// Grouped MoE for one token: all `count` experts (row layout, f32/f16/bf16, in % 8 == 0, 16-byte aligned) in two
// launches: act[j, :] = swiglu(gate_j x, up_j x); out[h] += Σ_j weight_j · down_j[h, :] · act[j, :].
struct ExpertPtrs {
  const void* gate;
  const void* up;
  const void* down;
  float weight;
};
struct MoeArgs {
  const ExpertPtrs* ex;  // [count] (device) unless inl
  bool inl;
  ExpertPtrs exInl[kInlineExperts];
  int* sel;              // device routing: expert j of the launch is ex[sel[j]] with weight selW[j]; else nullptr
  float* selW;
  bool assign;           // out = Σ (instead of out += Σ)
  // Routing inside the launch (with sel): the gate/up kernel routes the token by logits [numExperts] (softmax,
  // the topK best, ties to the lower index, renormalised when routeNorm; count == topK) and writes sel / selW for
  // the down kernel. nullptr: sel is given.
  const float* logits;
  int numExperts, topK;
  bool routeNorm;
};
cudaError_t moeExperts(const float* x, const MoeArgs& m, int count, int type, int64_t inter, int64_t hidden,
                       float limit, float alpha, float* act, float* out, cudaStream_t s);

// Greedy pick: out[r] = the index of the first maximum of x[r, 0..n) (std::max_element's answer; NaN never wins, a
// NaN at index 0 stays) for r < rows (<= 65535), n <= INT32_MAX. Scratch: pv, pi [rows * argmaxBlocks(n)] and
// counter [rows], which must be zero before the first launch (each launch leaves it zero). One launch.
constexpr int kArgmaxMaxBlocks = 128;
int argmaxBlocks(int64_t n);
cudaError_t argmax(const float* x, int64_t rows, int64_t n, float* pv, int* pi, unsigned* counter, int32_t* out,
                   cudaStream_t s);

// Sampling one row of logits x[0, n) as engine/sampler.cpp does with temperature > 0, 1 <= topK <= kMaxSampleTopK
// (no repetition penalty): the topK best of x / temperature (ties to the lower index), their softmax in double,
// top-p, min-p and the draw u in [0, 1). Scratch: pv, pi [argmaxBlocks(n) * topK], counter [1] (zero before the
// first launch; each launch leaves it zero). One launch; *out (device) is the token.
constexpr int kMaxSampleTopK = 64;
struct SampleArgs {
  float temperature;
  int topK;
  float topP, minP;
  double u;
};
cudaError_t sample(const float* x, int64_t n, const SampleArgs& a, float* pv, int* pi, unsigned* counter,
                   int32_t* out, cudaStream_t s);

// cuBLAS prefill helpers (cublas_gemm.cpp): parts [3][count] bf16 with x = parts[0] + parts[1] + parts[2] (each the
// bf16 rounding of what the previous parts leave); initRows: y[t, o] = bias[o] (or 0) for t < n, o < out;
// sumParts: y[i] = (p[2][i] + p[1][i]) + p[0][i] (+ bias[i % out]) for i < count, p [3][count].
cudaError_t splitBf16x3(const float* x, int64_t count, uint16_t* parts, cudaStream_t s);
cudaError_t initRows(float* y, int64_t n, int64_t out, const float* bias, cudaStream_t s);
cudaError_t sumParts(const float* p, int64_t count, int64_t out, const float* bias, float* y, cudaStream_t s);

// dst[i, :] = src[rows[i], :]; scatterAddRows: dst[rows[i], :] += w[i] * src[i, :] (rows distinct). rows and w are
// device arrays of count entries.
cudaError_t gatherRows(const float* src, const int64_t* rows, int64_t count, int64_t dim, float* dst, cudaStream_t s);
cudaError_t scatterAddRows(const float* src, const int64_t* rows, const float* w, int64_t count, int64_t dim,
                           float* dst, cudaStream_t s);

// KV cache blocks (kv/kv_codec.h): rows = tokens * heads; K rows of kDim then V rows of vDim (none when 0) in the
// payload type (kKV*), then for int8 the K and V scales [rows] f32 at scaleOffset (which need not be 4-byte
// aligned). Every conversion rounds as the host codec does (nearest even; int8: scale = max |x| / 127 per row), so
// the bytes equal kv::encodeBlock's.
enum KVType : int { kKVF32 = 0, kKVF16 = 1, kKVBF16 = 2, kKVInt8 = 3 };
struct KVBlockArgs {
  int type;  // KVType
  int64_t rows, kDim, vDim;
  int64_t vOffset, scaleOffset;  // bytes
};
cudaError_t kvEncode(const KVBlockArgs& a, const float* k, const float* v, uint8_t* dst, cudaStream_t s);
cudaError_t kvDecode(const KVBlockArgs& a, const uint8_t* src, float* k, float* v, cudaStream_t s);

cudaError_t swiglu(const float* gate, const float* up, int64_t n, float limit, float alpha, float* out, cudaStream_t s);
cudaError_t copyDevice(void* dst, const void* src, size_t bytes, cudaStream_t s);  // a kernel, not a memcpy
cudaError_t axpy(float a, const float* x, int64_t n, float* y, cudaStream_t s);
cudaError_t fill(float* y, int64_t n, float v, cudaStream_t s);

}  // namespace doppler::cuda

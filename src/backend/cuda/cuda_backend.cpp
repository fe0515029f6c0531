// The CUDA backend (issue #8): every Backend op on one GPU, f32 activations and accumulation.
//
// Memory: Tier::Device is GPU memory from the stream-ordered allocator (cudaMallocAsync on the compute stream,
// pool kept, never managed memory), so the many small scratch arrays of a forward cost no cudaMalloc each;
// Tier::Host is pinned memory (mapped by us with huge pages and registered: pinned_memory.h; cudaHostAlloc when that
// fails), which the GPU copies from at full PCIe speed.
// Streams: ops run in issue order on one compute stream and return at once. copy() keeps the interface's
// synchronous meaning where it matters: a copy into host memory waits for it; a host-to-device copy (the tier
// cache's loader thread uses them) runs on the calling thread's own copy stream after the work already issued on
// the compute stream (its destination may be memory that work still reads), and waits for itself, so the source
// may be reused at once; device-to-device copies stay on the compute stream, asynchronous.
// Small host arrays an op takes (positions, rope frequencies, token ids, KV chunk lists) are uploaded into a
// device scratch area with cudaMemcpyAsync on the compute stream (stream order makes reuse safe).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cublas_gemm.h"
#include "backend/cuda/graph_recorder.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/pinned_memory.h"
#include "backend/gpu_bandwidth.h"
#include "core/error.h"
#include "core/trace.h"
#include "kv/kv_codec.h"

namespace doppler {

namespace cuda {

int deviceCount(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
    cudaGetLastError();  // clear
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device";
  return n;
}

std::string deviceSummary() {
  std::string why;
  const int n = deviceCount(&why);
  if (n <= 0) return "none (" + why + ")";
  std::string out;
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  for (int d = 0; d < n; d++) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) continue;
    size_t freeB = 0, totalB = 0;
    cudaSetDevice(d);
    cudaMemGetInfo(&freeB, &totalB);
    out += fmt::format("{}{}: {}, {:.1f} GiB ({:.1f} GiB free), sm_{}{}, {} SMs, L2 {} MiB, driver {}.{}, runtime {}.{}",
                       out.empty() ? "" : "; ", d, p.name, double(totalB) / (1 << 30), double(freeB) / (1 << 30),
                       p.major, p.minor, p.multiProcessorCount, p.l2CacheSize >> 20, driver / 1000,
                       (driver % 1000) / 10, runtime / 1000, (runtime % 1000) / 10);
  }
  cudaSetDevice(0);
  return out;
}

GpuBandwidth measureBandwidth(size_t bytes, int runs) {
  GpuBandwidth r;
  r.bytes = bytes;
  r.runs = runs;
  void *a = nullptr, *b = nullptr, *h = nullptr;
  cudaStream_t s;
  cudaEvent_t e0, e1;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess ||
      cudaHostAlloc(&h, bytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();
    if (a) cudaFree(a);
    if (b) cudaFree(b);
    return r;
  }
  cudaStreamCreate(&s);
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::memset(h, 0x5a, bytes);  // not zeros
  cudaMemcpy(a, h, bytes, cudaMemcpyHostToDevice);
  auto median = [&](auto&& op) {
    std::vector<float> ms;
    op();  // warm-up
    for (int i = 0; i < runs; i++) {
      cudaEventRecord(e0, s);
      op();
      cudaEventRecord(e1, s);
      cudaEventSynchronize(e1);
      float t = 0;
      cudaEventElapsedTime(&t, e0, e1);
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return double(ms[ms.size() / 2]) * 1e-3;
  };
  const double d2d = median([&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s); });
  const double h2d = median([&] { cudaMemcpyAsync(a, h, bytes, cudaMemcpyHostToDevice, s); });
  r.deviceCopyGBs = 2.0 * double(bytes) / d2d / 1e9;
  r.hostToDeviceGBs = double(bytes) / h2d / 1e9;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(s);
  cudaFree(a);
  cudaFree(b);
  cudaFreeHost(h);
  return r;
}

}  // namespace cuda

namespace {

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("cuda: {}: {}", what, cudaGetErrorString(e));
}

cuda::MatW matW(const WeightView& w, const char* op) {
  int t;
  switch (w.dtype) {
    case DType::F32: t = cuda::kF32; break;
    case DType::F16: t = cuda::kF16; break;
    case DType::BF16: t = cuda::kBF16; break;
    case DType::MXFP4: t = cuda::kMXFP4; break;
    default: fail("cuda {}: weight dtype {} not supported (f32, f16, bf16, mxfp4)", op, dtypeName(w.dtype));
  }
  check(w.data != nullptr, "cuda {}: weight {} has no data", op, shapeString(w.shape));
  if (w.dtype == DType::MXFP4)
    check(w.layout == Layout::Row && w.cols() % 32 == 0, "cuda {}: mxfp4 weights must be row layout with in % 32 == 0",
          op);
  return cuda::MatW{w.data, t, w.layout == Layout::Column, w.rows(), w.cols()};
}

class CudaBackend final : public Backend {
 public:
  CudaBackend() : owner_(std::this_thread::get_id()) {
    ck(cudaSetDevice(0), "cudaSetDevice");
    cudaDeviceProp p{};
    ck(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties");
    name_ = fmt::format("cuda ({}, sm_{}{})", p.name, p.major, p.minor);
    ck(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    // Keep freed memory in the pool (the default releases it at every synchronisation).
    cudaMemPool_t pool;
    ck(cudaDeviceGetDefaultMemPool(&pool, 0), "cudaDeviceGetDefaultMemPool");
    uint64_t keep = UINT64_MAX;
    ck(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
    const char* pdl = std::getenv("DOPPLER_CUDA_PDL");  // programmatic edges in step graphs (sm_90 and later)
    graph_ = std::make_unique<cuda::GraphRecorder>(stream_, p.major >= 9 && !(pdl && std::string_view(pdl) == "0"));
    const char* g = std::getenv("DOPPLER_CUDA_GRAPHS");
    graphs_ = !(g && std::string_view(g) == "0");
    blas_ = std::make_unique<cuda::CublasGemm>(stream_);
    if (blas_->available()) name_.insert(name_.size() - 1, ", cuBLAS");
  }
  ~CudaBackend() override {
    graph_->abort();
    graph_.reset();
    cudaStreamSynchronize(stream_);
    blas_.reset();
    if (arena_) cudaFree(arena_);
    if (scratch_) cudaFree(scratch_);
    if (staging_) cudaFreeHost(staging_);
    pick_.reset();
    if (pickSlots_) cudaFreeHost(pickSlots_);
    for (auto e : pickEvents_)
      if (e) cudaEventDestroy(e);
    for (auto& [k, t] : tables_)
      if (t.dev) cudaFree(t.dev);
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& c : copyStreams_) {
      cudaStreamDestroy(c.stream);
      cudaEventDestroy(c.event);
      for (auto e : c.timing) cudaEventDestroy(e);
    }
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  bool deviceMemory(uint64_t* total, uint64_t* free) const override {
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) return false;
    *total = t;
    *free = f;
    return true;
  }

  // ---------------------------------------------------------------- memory

  void* allocate(Tier tier, size_t bytes) override {
    void* p = nullptr;
    const size_t b = std::max<size_t>(bytes, 1);
    if (tier == Tier::Device) {
      cudaError_t e = cudaMallocAsync(&p, b, stream_);
      if (e != cudaSuccess) {
        cudaGetLastError();
        size_t f = 0, t = 0;
        cudaMemGetInfo(&f, &t);
        fail("out of GPU memory allocating {} bytes for the device tier ({}; {} of {} bytes free)", bytes,
             cudaGetErrorString(e), f, t);
      }
      return p;
    }
    if (tier == Tier::Host) {
      if ((p = pinned_.allocate(b))) return p;  // mapped, faulted in and registered: far faster (pinned_memory.h)
      cudaError_t e = cudaHostAlloc(&p, b, cudaHostAllocPortable);
      if (e != cudaSuccess) {
        cudaGetLastError();
        fail("out of pinned host memory allocating {} bytes for the host tier ({})", bytes, cudaGetErrorString(e));
      }
      return p;
    }
    fail("cuda backend: cannot allocate in the {} tier", tierName(tier));
  }

  void release(Tier tier, void* p, size_t) override {
    if (!p) return;
    if (tier == Tier::Device && recordingHere()) {  // recorded ops may still use it: free it after they launch
      deferredFrees_.push_back(p);
      return;
    }
    if (tier == Tier::Device) ck(cudaFreeAsync(p, stream_), "cudaFreeAsync");
    else if (!pinned_.release(p)) ck(cudaFreeHost(p), "cudaFreeHost");
  }

  void copy(void* dst, Tier, const void* src, Tier, size_t bytes) override {
    if (bytes == 0) return;
    // Classify by the pointers themselves (callers label tiers by role; a host vector may be labelled device).
    const cudaMemoryType dType = memoryType(dst);
    const bool dDev = isDevice(dType), sDev = isDevice(memoryType(src));
    if (!dDev && !sDev) {
      // Host to host: the source may be device work's output only through a device pointer, so plain memcpy.
      std::memcpy(dst, src, bytes);
      return;
    }
    if (dDev && sDev && recordingHere()) {  // a kernel node of the step's graph
      ck(cuda::copyDevice(dst, src, bytes, stream_), "device-to-device copy");
      return;
    }
    if (recordingHere()) flushRecorded();  // copies that involve the host run in order after the recorded ops
    if (dDev && sDev) {
      ck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "device-to-device copy");
      if (std::this_thread::get_id() != owner_) ck(cudaStreamSynchronize(stream_), "copy: synchronize");
      return;
    }
    if (!dDev) {  // device to host: after the work that produces it, and wait
      // Into pageable memory (a logits vector) through a pinned buffer: the driver's own pageable path ran at
      // 7-8 GB/s for 608 KB (cuda_ops_bench).
      if (bytes <= kStagingMax && dType != cudaMemoryTypeHost) {
        std::lock_guard<std::mutex> lk(stagingMu_);
        if (bytes > stagingBytes_) {
          if (staging_) ck(cudaFreeHost(staging_), "cudaFreeHost (staging)");
          staging_ = nullptr;
          stagingBytes_ = std::max<size_t>(bytes, size_t(1) << 20);
          ck(cudaHostAlloc(&staging_, stagingBytes_, cudaHostAllocPortable), "cudaHostAlloc (staging)");
        }
        ck(cudaMemcpyAsync(staging_, src, bytes, cudaMemcpyDeviceToHost, stream_), "device-to-host copy");
        ck(cudaStreamSynchronize(stream_), "device-to-host copy: synchronize");
        std::memcpy(dst, staging_, bytes);
        return;
      }
      ck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "device-to-host copy");
      ck(cudaStreamSynchronize(stream_), "device-to-host copy: synchronize");
      return;
    }
    // Host to device, on this thread's copy stream after the compute work issued so far.
    CopyStream& cs = copyStream();
    const bool timed = trace::on();  // the copy's GPU-side timeline: waiting for compute, then copying
    if (timed) ck(cudaEventRecord(cs.timing[0], cs.stream), "copy: cudaEventRecord");
    ck(cudaEventRecord(cs.event, stream_), "copy: cudaEventRecord");
    ck(cudaStreamWaitEvent(cs.stream, cs.event, 0), "copy: cudaStreamWaitEvent");
    if (timed) ck(cudaEventRecord(cs.timing[1], cs.stream), "copy: cudaEventRecord");
    ck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cs.stream), "host-to-device copy");
    if (timed) ck(cudaEventRecord(cs.timing[2], cs.stream), "copy: cudaEventRecord");
    ck(cudaStreamSynchronize(cs.stream), "host-to-device copy: synchronize");
    if (timed) {
      float waitMs = 0, copyMs = 0;
      ck(cudaEventElapsedTime(&waitMs, cs.timing[0], cs.timing[1]), "copy: cudaEventElapsedTime");
      ck(cudaEventElapsedTime(&copyMs, cs.timing[1], cs.timing[2]), "copy: cudaEventElapsedTime");
      const double end = trace::nowMicros();  // the host saw the copy end (a few us late)
      trace::span("h2d copy", "gpu", end - 1e3 * copyMs, end,
                  {{"bytes", double(bytes)}, {"waited_for_compute_us", 1e3 * waitMs}}, "copy engine");
    }
  }

  void synchronize() override {
    if (recordingHere()) flushRecorded();
    ck(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

  // ---------------------------------------------------------------- step graphs (graph_recorder.h)

  void beginStep(bool queued = false) override {
    if (!graphs_ || std::this_thread::get_id() != owner_ || graph_->recording()) return;
    if (arenaLive_ == 0) {  // start the arena over (grown to what the last step asked for)
      if (arenaWant_ > arenaCap_) {
        if (arena_) ck(cudaFreeAsync(arena_, stream_), "cudaFreeAsync (arena)");
        arena_ = nullptr;
        arenaCap_ = (arenaWant_ + arenaWant_ / 4 + 255) / 256 * 256;
        ck(cudaMallocAsync(reinterpret_cast<void**>(&arena_), arenaCap_, stream_), "cudaMallocAsync (arena)");
      }
      arenaTop_ = 0;
    }
    graph_->begin(queued);
  }
  void* allocateScratch(size_t bytes) override {
    if (!recordingHere()) return allocate(Tier::Device, bytes);
    const size_t b = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    if (arenaTop_ + b > arenaCap_) {  // too small this step: grown at the next one
      arenaWant_ = std::max(arenaWant_, arenaTop_ + b);
      arenaTop_ += b;  // so that the next request measures what the whole step needs
      return allocate(Tier::Device, bytes);
    }
    void* p = arena_ + arenaTop_;
    arenaTop_ += b;
    arenaLive_++;
    return p;
  }
  void releaseScratch(void* p, size_t bytes) override {
    const auto* q = static_cast<const uint8_t*>(p);
    if (arena_ && q >= arena_ && q < arena_ + arenaCap_) {
      arenaLive_--;
      return;
    }
    release(Tier::Device, p, bytes);
  }
  void endStep() override {
    if (!graph_->recording()) return;
    graph_->end();
    freeDeferred();
  }
  void abortStep() noexcept override {
    if (!graph_->recording()) return;
    graph_->abort();
    for (void* p : deferredFrees_) cudaFreeAsync(p, stream_);
    deferredFrees_.clear();
  }
  BackendStats stats() const override {
    BackendStats b;
    b.graphs = graph_->stats();
    return b;
  }

  // ---------------------------------------------------------------- ops

  void matmul(const float* x, int64_t n, const WeightView& w, const float* bias, float* y) override {
    check(x != y, "cuda matmul: y must not alias x");
    const cuda::MatW mw = matW(w, "matmul");
    // Prefill: cuBLAS on tensor cores when it is there (never inside a recorded step: its launches bypass the
    // recorder); decode-sized n: our GEMV.
    if (n >= kCublasMinRows && !recordingHere() && blas_->takes(mw, n)) {
      const size_t bytes = cuda::CublasGemm::scratchBytes(mw, n);  // 0 for f32 weights
      DeviceArray scratch;
      if (bytes) scratch = DeviceArray(*this, (bytes + sizeof(float) - 1) / sizeof(float));
      blas_->matmul(x, n, mw, bias, y, scratch.data());
      return;
    }
    ck(cuda::matmul(x, n, mw, bias, y, stream_), "matmul");
  }

  void matmulAdd(const float* x, int64_t n, const WeightView& w, const float* bias, float* y) override {
    check(x != y, "cuda matmulAdd: y must not alias x");
    if (n > 8) return Backend::matmulAdd(x, n, w, bias, y);  // prefill: cuBLAS or the tiled GEMM, then an add
    ck(cuda::matmul(x, n, matW(w, "matmulAdd"), bias, y, stream_, true), "matmulAdd");
  }

  void matmulMany(const float* x, int64_t n, const MatmulOut* outs, int count) override {
    cuda::MultiGemv m{};
    const bool one = multiGemv(x, n, outs, count, m);
    if (!one && n >= kCublasMinRows && !recordingHere() && count > 1) {  // prefill: bf16 weights share x's split
      bool shared = true;
      std::vector<cuda::MatW> mws;
      for (int j = 0; j < count && shared; j++) {
        mws.push_back(matW(outs[j].w, "matmulMany"));
        shared = mws.back().type == cuda::kBF16 && blas_->takes(mws.back(), n) && mws.back().in == mws[0].in &&
                 outs[j].y != x;
      }
      if (shared) {
        DeviceArray parts(*this, (cuda::CublasGemm::partsBytes(n, mws[0].in) + sizeof(float) - 1) / sizeof(float));
        blas_->split(x, n, mws[0].in, parts.data());
        for (int j = 0; j < count; j++) {
          DeviceArray products(*this, cuda::CublasGemm::productBytes(n, mws[size_t(j)].out) / sizeof(float));
          blas_->matmulParts(parts.data(), n, mws[size_t(j)], outs[j].bias, outs[j].y, products.data());
        }
        return;
      }
    }
    if (!one) return Backend::matmulMany(x, n, outs, count);
    ck(cuda::matmulMany(x, outs[0].w.cols(), multiType(outs[0].w.dtype), m, stream_), "matmulMany");
  }

  void addRmsNorm(float* x, const float* add, int64_t rows, int64_t dim, const float* w, float eps,
                  float* y) override {
    check(y != x && y != add, "cuda addRmsNorm: y must not alias x or add");
    ck(cuda::rmsNorm(x, add, rows, dim, w, eps, y, stream_), "addRmsNorm");
  }

  void embed(const WeightView& table, const int32_t* ids, int64_t n, float* out) override {
    const int64_t vocab = table.rows();
    for (int64_t i = 0; i < n; i++)
      check(ids[i] >= 0 && ids[i] < vocab, "token id {} out of range (vocabulary has {} tokens)", ids[i], vocab);
    check(table.dtype != DType::MXFP4, "cuda embed: an mxfp4 embedding table is not supported");
    cuda::EmbedArgs e{};
    if (n <= cuda::kInlineIds) {  // in the kernel's parameters
      e.inl = true;
      std::memcpy(e.idsInl, ids, size_t(n) * sizeof(int32_t));
    } else {
      Uploads up(*this);
      const size_t oIds = up.add(ids, size_t(n) * sizeof(int32_t));
      e.ids = reinterpret_cast<const int32_t*>(up.flush() + oIds);
    }
    ck(cuda::embed(matW(table, "embed"), e, n, out, stream_), "embed");
  }

  void embedDevice(const WeightView& table, const int32_t* ids, int64_t n, float* out) override {
    check(table.dtype != DType::MXFP4, "cuda embed: an mxfp4 embedding table is not supported");
    cuda::EmbedArgs e{};
    e.ids = ids;
    ck(cuda::embed(matW(table, "embed"), e, n, out, stream_), "embedDevice");
  }

  void rmsNorm(const float* x, int64_t rows, int64_t dim, const float* w, float eps, float* y) override {
    ck(cuda::rmsNorm(const_cast<float*>(x), nullptr, rows, dim, w, eps, y, stream_), "rmsNorm");
  }

  void layerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, float eps,
                 float* y) override {
    ck(cuda::layerNorm(x, rows, dim, w, b, eps, y, stream_), "layerNorm");
  }

  // Positions and inverse frequencies for the rope kernels: in the kernel's parameters when they fit, else uploaded.
  cuda::RopeArgs ropeArgs(int64_t n, const int64_t* positions, const RopeParams& p) {
    const int64_t half = p.rotDim / 2;
    cuda::RopeArgs r{};
    if (n <= cuda::kInlinePos && half <= cuda::kInlineInv) {
      r.inl = true;
      std::memcpy(r.posInl, positions, size_t(n) * sizeof(int64_t));
      std::memcpy(r.invInl, p.invFreq, size_t(half) * sizeof(float));
    } else {
      Uploads up(*this);
      const size_t oPos = up.add(positions, size_t(n) * sizeof(int64_t));
      const size_t oInv = up.add(p.invFreq, size_t(half) * sizeof(float));
      const uint8_t* base = up.flush();
      r.pos = reinterpret_cast<const int64_t*>(base + oPos);
      r.inv = reinterpret_cast<const float*>(base + oInv);
    }
    return r;
  }

  void rope(float* x, int64_t n, int64_t heads, int64_t headDim, const int64_t* positions,
            const RopeParams& p) override {
    const cuda::RopeArgs r = ropeArgs(n, positions, p);
    ck(cuda::rope(x, n, heads, headDim, r, p.rotDim, p.attentionScale, p.interleaved, stream_), "rope");
  }

  void qkNormRope(float* q, float* k, int64_t n, int64_t qHeads, int64_t kHeads, int64_t headDim, const float* qNorm,
                  const float* kNorm, float eps, const int64_t* positions, const RopeParams& p) override {
    if (headDim > 4096 || p.rotDim > headDim || bool(qNorm) != bool(kNorm))
      return Backend::qkNormRope(q, k, n, qHeads, kHeads, headDim, qNorm, kNorm, eps, positions, p);
    const cuda::RopeArgs r = ropeArgs(n, positions, p);
    ck(cuda::qkNormRope(q, k, n, qHeads, kHeads, headDim, qNorm, kNorm, eps, r, p.rotDim, p.attentionScale,
                        p.interleaved, stream_),
       "qkNormRope");
  }

  void attention(const float* q, int64_t n, const int64_t* positions, const KVChunk* chunks, int64_t numChunks,
                 const AttentionParams& p, float* out) override {
    check(p.numKvHeads > 0 && p.numHeads % p.numKvHeads == 0, "attention: {} heads not divisible by {} kv heads",
          p.numHeads, p.numKvHeads);
    // Chunks in GPU memory (or pinned host memory, which the GPU can read over PCIe).
    cuda::AttnArgs a{};
    a.numHeads = p.numHeads;
    a.numKvHeads = p.numKvHeads;
    a.headDim = p.headDim;
    a.vDim = p.vDim;
    a.scale = p.scale;
    a.window = p.window;
    a.sinks = p.sinks;
    a.numChunks = numChunks;
    if (n <= cuda::kInlinePosAttn && numChunks <= cuda::kInlineChunks) {
      a.inl = true;
      std::memcpy(a.posInl, positions, size_t(n) * sizeof(int64_t));
      for (int64_t c = 0; c < numChunks; c++)
        a.chunkInl[c] = cuda::DevChunk{chunks[c].t0, chunks[c].t1, chunks[c].k, chunks[c].v};
    } else {
      std::vector<cuda::DevChunk> dc(static_cast<size_t>(numChunks));
      for (int64_t c = 0; c < numChunks; c++)
        dc[size_t(c)] = cuda::DevChunk{chunks[c].t0, chunks[c].t1, chunks[c].k, chunks[c].v};
      Uploads up(*this);
      const size_t oPos = up.add(positions, size_t(n) * sizeof(int64_t));
      const size_t oCh = up.add(dc.data(), dc.size() * sizeof(cuda::DevChunk));
      const uint8_t* base = up.flush();
      a.pos = reinterpret_cast<const int64_t*>(base + oPos);
      a.chunks = reinterpret_cast<const cuda::DevChunk*>(base + oCh);
    }
    ck(cuda::attention(q, n, a, out, stream_), "attention");
  }

  void moeExperts(const float* x, const ExpertCall* calls, int64_t count, float limit, float alpha,
                  float* out) override {
    if (count <= 0) return;
    const WeightView& g0 = calls[0].gate;
    const int64_t inter = g0.rows(), hid = g0.cols();
    const DType dt = g0.dtype;
    const size_t es = dtypeSize(dt);
    auto fits = [&](const WeightView& w, int64_t rows, int64_t cols) {
      return w.data && w.dtype == dt && w.layout == Layout::Row && w.rows() == rows && w.cols() == cols &&
             reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
    };
    bool grouped = (dt == DType::F32 || dt == DType::F16 || dt == DType::BF16) && inter % 8 == 0 && hid % 8 == 0 &&
                   (size_t(inter) * es) % 16 == 0 && (size_t(hid) * es) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(x) % 16 == 0;
    std::vector<cuda::ExpertPtrs> ptrs(static_cast<size_t>(count));  // NOLINT
    for (int64_t j = 0; j < count && grouped; j++) {
      const ExpertCall& c = calls[j];
      grouped = fits(c.gate, inter, hid) && fits(c.up, inter, hid) && fits(c.down, hid, inter);
      ptrs[size_t(j)] = cuda::ExpertPtrs{c.gate.data, c.up.data, c.down.data, c.weight};
    }
    if (!grouped) return Backend::moeExperts(x, calls, count, limit, alpha, out);  // one expert at a time
    const int type = dt == DType::F32 ? cuda::kF32 : dt == DType::F16 ? cuda::kF16 : cuda::kBF16;
    DeviceArray act(*this, size_t(count * inter));  // [count, I]
    cuda::MoeArgs m{};
    if (count <= cuda::kInlineExperts) {
      m.inl = true;
      std::copy(ptrs.begin(), ptrs.end(), m.exInl);
    } else {
      Uploads up(*this);
      const size_t oPtrs = up.add(ptrs.data(), ptrs.size() * sizeof(cuda::ExpertPtrs));
      m.ex = reinterpret_cast<const cuda::ExpertPtrs*>(up.flush() + oPtrs);
    }
    ck(cuda::moeExperts(x, m, int(count), type, inter, hid, limit, alpha, act.data(), out, stream_), "moeExperts");
  }

  bool moeRoutedOnDevice(const float* x, const float* logits, const ExpertCall* experts, int64_t numExperts,
                         int64_t topK, bool normTopk, float limit, float alpha, float* out) override {
    if (numExperts <= 0 || topK <= 0 || topK > numExperts || reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
    // The layer's expert table in GPU memory, built on first use (the caller keeps the experts where they are).
    ExpertTable& t = tables_[TableKey{experts, experts[0].gate.data, numExperts}];
    if (!t.built) {
      if (recordingHere()) flushRecorded();  // the upload below waits for the stream
      t.built = true;
      const WeightView& g0 = experts[0].gate;
      t.inter = g0.rows();
      t.hid = g0.cols();
      const DType dt = g0.dtype;
      const size_t es = dtypeSize(dt);
      auto fits = [&](const WeightView& w, int64_t rows, int64_t cols) {
        return w.data && w.dtype == dt && w.layout == Layout::Row && w.rows() == rows && w.cols() == cols &&
               reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
      };
      bool ok = (dt == DType::F32 || dt == DType::F16 || dt == DType::BF16) && t.inter % 8 == 0 && t.hid % 8 == 0 &&
                (size_t(t.inter) * es) % 16 == 0 && (size_t(t.hid) * es) % 16 == 0;
      std::vector<cuda::ExpertPtrs> ptrs(static_cast<size_t>(numExperts));
      for (int64_t e = 0; e < numExperts && ok; e++) {
        const ExpertCall& c = experts[e];
        ok = fits(c.gate, t.inter, t.hid) && fits(c.up, t.inter, t.hid) && fits(c.down, t.hid, t.inter);
        ptrs[size_t(e)] = cuda::ExpertPtrs{c.gate.data, c.up.data, c.down.data, 0.0f};
      }
      if (ok) {
        t.type = dt == DType::F32 ? cuda::kF32 : dt == DType::F16 ? cuda::kF16 : cuda::kBF16;
        ck(cudaMalloc(reinterpret_cast<void**>(&t.dev), ptrs.size() * sizeof(cuda::ExpertPtrs)), "cudaMalloc (experts)");
        ck(cudaMemcpyAsync(t.dev, ptrs.data(), ptrs.size() * sizeof(cuda::ExpertPtrs), cudaMemcpyHostToDevice,
                           stream_),
           "expert table upload");
        ck(cudaStreamSynchronize(stream_), "expert table upload: synchronize");
      }
    }
    if (!t.dev) return false;
    DeviceArray sel(*this, size_t(2 * topK));  // [K] indices (as int) then [K] weights
    DeviceArray act(*this, size_t(topK * t.inter));
    int* idx = reinterpret_cast<int*>(sel.data());
    float* wts = sel.data() + topK;
    cuda::MoeArgs m{};  // routed by the gate/up kernel itself (no separate routing launch)
    m.ex = t.dev;
    m.sel = idx;
    m.selW = wts;
    m.assign = false;  // out += (the residual stream)
    m.logits = logits;
    m.numExperts = int(numExperts);
    m.topK = int(topK);
    m.routeNorm = normTopk;
    ck(cuda::moeExperts(x, m, int(topK), t.type, t.inter, t.hid, limit, alpha, act.data(), out, stream_),
       "moeRoutedOnDevice");
    return true;
  }

  void gatherRows(const float* src, const int64_t* rows, int64_t count, int64_t dim, float* dst) override {
    if (count <= 0) return;
    check(count <= INT32_MAX, "gatherRows: {} rows", count);
    Uploads up(*this);
    const size_t oRows = up.add(rows, size_t(count) * sizeof(int64_t));
    const uint8_t* base = up.flush();
    ck(cuda::gatherRows(src, reinterpret_cast<const int64_t*>(base + oRows), count, dim, dst, stream_), "gatherRows");
  }
  void scatterAddRows(const float* src, const int64_t* rows, const float* w, int64_t count, int64_t dim,
                      float* dst) override {
    if (count <= 0) return;
    check(count <= INT32_MAX, "scatterAddRows: {} rows", count);
    Uploads up(*this);
    const size_t oRows = up.add(rows, size_t(count) * sizeof(int64_t));
    const size_t oW = up.add(w, size_t(count) * sizeof(float));
    const uint8_t* base = up.flush();
    ck(cuda::scatterAddRows(src, reinterpret_cast<const int64_t*>(base + oRows),
                            reinterpret_cast<const float*>(base + oW), count, dim, dst, stream_),
       "scatterAddRows");
  }

  // argmax's scratch for `rows` rows of n values (grown when needed) and device results [rows]; perBlock: candidates
  // each block keeps (sampling's top-k).
  struct PickBuffers {
    float* pv;
    int* pi;
    unsigned* counter;
    int32_t* res;
  };
  PickBuffers pickBuffers(int64_t n, int64_t rows, int perBlock = 1) {
    const size_t parts = size_t(rows) * size_t(cuda::argmaxBlocks(n)) * size_t(perBlock);
    if (parts > pick_.parts || size_t(rows) > pick_.rows) {  // grown (rarely): recorded ops may name the old one
      if (recordingHere()) flushRecorded();
      ck(cudaStreamSynchronize(stream_), "argmax: synchronize");
      pick_.reset();
      pick_.parts = std::max(parts, pick_.parts);
      pick_.rows = std::max(size_t(rows), pick_.rows);
      const size_t bytes = pick_.parts * (sizeof(float) + sizeof(int)) + pick_.rows * (sizeof(unsigned) + sizeof(int32_t));
      ck(cudaMalloc(&pick_.dev, bytes), "cudaMalloc (argmax)");
      ck(cudaMemsetAsync(pick_.dev, 0, bytes, stream_), "cudaMemsetAsync (argmax)");  // the counters start at zero
      ck(cudaHostAlloc(reinterpret_cast<void**>(&pick_.host), pick_.rows * sizeof(int32_t), cudaHostAllocPortable),
         "cudaHostAlloc (argmax)");
    }
    PickBuffers b;
    b.pv = static_cast<float*>(pick_.dev);
    b.pi = reinterpret_cast<int*>(b.pv + pick_.parts);
    b.counter = reinterpret_cast<unsigned*>(b.pi + pick_.parts);
    b.res = reinterpret_cast<int32_t*>(b.counter + pick_.rows);
    return b;
  }

  void argmax(const float* x, int64_t rows, int64_t n, int32_t* out) override {
    check(rows >= 0 && rows <= 65535 && n > 0 && n <= INT32_MAX, "argmax: {} rows of {} values", rows, n);
    if (rows == 0) return;
    const PickBuffers pb = pickBuffers(n, rows);
    ck(cuda::argmax(x, rows, n, pb.pv, pb.pi, pb.counter, pb.res, stream_), "argmax");
    if (recordingHere()) flushRecorded();  // the recorded step up to here, then the 4-byte answers
    ck(cudaMemcpyAsync(pick_.host, pb.res, size_t(rows) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
       "argmax: device-to-host copy");
    ck(cudaStreamSynchronize(stream_), "argmax: synchronize");
    std::memcpy(out, pick_.host, size_t(rows) * sizeof(int32_t));
  }

  void encodeKVBlock(const kv::BlockFormat& f, const float* k, const float* v, uint8_t* dst) override {
    ck(cuda::kvEncode(kvArgs(f), k, v, dst, stream_), "encodeKVBlock");
  }
  void decodeKVBlock(const kv::BlockFormat& f, const uint8_t* src, float* k, float* v) override {
    ck(cuda::kvDecode(kvArgs(f), src, k, v, stream_), "decodeKVBlock");
  }

  bool devicePicks() const override { return true; }
  int deviceSamplingTopK() const override { return cuda::kMaxSampleTopK; }
  void pickToDevice(const float* x, int64_t n, int32_t* dev, int slot, const DeviceSampling* sampling) override {
    check(slot == 0 || slot == 1, "pickToDevice: slot {} (0 or 1)", slot);
    check(n > 0 && n <= INT32_MAX, "pickToDevice: {} values", n);
    if (sampling) {
      check(sampling->temperature > 0 && sampling->topK >= 1 && sampling->topK <= cuda::kMaxSampleTopK &&
                sampling->topK <= n,
            "pickToDevice: sampling with temperature {} and top-k {} (device sampling needs temperature > 0 and "
            "top-k 1..{})",
            sampling->temperature, sampling->topK, std::min<int64_t>(n, cuda::kMaxSampleTopK));
      const PickBuffers pb = pickBuffers(n, 1, sampling->topK);
      const cuda::SampleArgs a{sampling->temperature, sampling->topK, sampling->topP, sampling->minP, sampling->u};
      ck(cuda::sample(x, n, a, pb.pv, pb.pi, pb.counter, dev, stream_), "pickToDevice (sampling)");
    } else {
      const PickBuffers pb = pickBuffers(n, 1);
      ck(cuda::argmax(x, 1, n, pb.pv, pb.pi, pb.counter, dev, stream_), "pickToDevice");
    }
    if (recordingHere()) flushRecorded();  // the recorded step up to here, then the 4-byte copy (no wait)
    if (!pickSlots_) {
      ck(cudaHostAlloc(reinterpret_cast<void**>(&pickSlots_), 2 * sizeof(int32_t), cudaHostAllocPortable),
         "cudaHostAlloc (picks)");
      for (auto& e : pickEvents_) ck(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate (picks)");
    }
    ck(cudaMemcpyAsync(pickSlots_ + slot, dev, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
       "pickToDevice: device-to-host copy");
    ck(cudaEventRecord(pickEvents_[slot], stream_), "pickToDevice: cudaEventRecord");
  }
  int32_t pickResult(int slot) override {
    check((slot == 0 || slot == 1) && pickSlots_, "pickResult: no pick in slot {}", slot);
    ck(cudaEventSynchronize(pickEvents_[slot]), "pickResult: wait");
    return pickSlots_[slot];
  }

  void swiglu(const float* gate, const float* up, int64_t n, float limit, float alpha, float* out) override {
    ck(cuda::swiglu(gate, up, n, limit, alpha, out, stream_), "swiglu");
  }
  void axpy(float a, const float* x, int64_t n, float* y) override { ck(cuda::axpy(a, x, n, y, stream_), "axpy"); }
  void fill(float* y, int64_t n, float value) override { ck(cuda::fill(y, n, value, stream_), "fill"); }

 private:
  struct CopyStream {
    std::thread::id thread;
    cudaStream_t stream;
    cudaEvent_t event;
    cudaEvent_t timing[3];  // --trace: before the wait for compute, after it, after the copy
  };

  CopyStream& copyStream() {
    std::lock_guard<std::mutex> lk(mu_);
    const auto id = std::this_thread::get_id();
    for (auto& c : copyStreams_)
      if (c.thread == id) return c;
    CopyStream c{id, nullptr, nullptr, {}};
    ck(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking), "cudaStreamCreate (copies)");
    ck(cudaEventCreateWithFlags(&c.event, cudaEventDisableTiming), "cudaEventCreate");
    for (auto& e : c.timing) ck(cudaEventCreate(&e), "cudaEventCreate");
    copyStreams_.push_back(c);
    return copyStreams_.back();
  }

  // matmulMany's one-launch case: one token, 1 to kMultiGemv row-layout f32/f16/bf16 matrices of one type and input
  // size (% 8), 16-byte aligned, no output aliasing x. Fills m and returns true when it applies.
  static bool multiGemv(const float* x, int64_t n, const MatmulOut* outs, int count, cuda::MultiGemv& m) {
    if (n != 1 || count < 1 || count > cuda::kMultiGemv || reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
    const DType dt = outs[0].w.dtype;
    const int64_t in = outs[0].w.cols();
    if (!(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16) || in % 8 != 0) return false;
    for (int j = 0; j < count; j++) {
      const WeightView& w = outs[j].w;
      if (!w.data || w.dtype != dt || w.layout != Layout::Row || w.cols() != in ||
          reinterpret_cast<uintptr_t>(w.data) % 16 != 0 || outs[j].y == x)
        return false;
      m.w[j] = w.data;
      m.bias[j] = outs[j].bias;
      m.y[j] = outs[j].y;
      m.out[j] = w.rows();
    }
    m.count = count;
    return true;
  }
  static cuda::KVBlockArgs kvArgs(const kv::BlockFormat& f) {
    cuda::KVBlockArgs a{};
    switch (f.dtype) {
      case KVDType::F32: a.type = cuda::kKVF32; break;
      case KVDType::F16: a.type = cuda::kKVF16; break;
      case KVDType::BF16: a.type = cuda::kKVBF16; break;
      case KVDType::Int8: a.type = cuda::kKVInt8; break;
    }
    a.rows = f.tokens * f.heads;
    a.kDim = f.kDim;
    a.vDim = f.vDim;
    a.vOffset = int64_t(f.vOffset());
    a.scaleOffset = int64_t(f.scaleOffset());
    return a;
  }
  static int multiType(DType dt) { return dt == DType::F32 ? cuda::kF32 : dt == DType::F16 ? cuda::kF16 : cuda::kBF16; }

  // What p points at: cudaMemoryTypeDevice / Managed (GPU memory), Host (pinned: cudaHostAlloc'ed or registered)
  // or Unregistered (pageable host memory).
  static cudaMemoryType memoryType(const void* p) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
      cudaGetLastError();
      return cudaMemoryTypeUnregistered;
    }
    return a.type;
  }
  static bool isDevice(cudaMemoryType t) { return t == cudaMemoryTypeDevice || t == cudaMemoryTypeManaged; }

  // Host arrays of one op, packed into one host buffer and uploaded with one copy into the scratch area.
  // add() returns an offset; flush() uploads and returns the device base the offsets are relative to.
  class Uploads {
   public:
    explicit Uploads(CudaBackend& b) : b_(b) {}
    size_t add(const void* host, size_t bytes) {
      const size_t off = (buf_.size() + 15) / 16 * 16;
      buf_.resize(off + std::max<size_t>(bytes, 1));
      if (bytes) std::memcpy(buf_.data() + off, host, bytes);
      return off;
    }
    const uint8_t* flush() {
      // Ops recorded for a graph may still read the scratch area: launch them before it is overwritten.
      if (b_.recordingHere()) b_.flushRecorded();
      b_.ensureScratch(buf_.size());
      ck(cudaMemcpyAsync(b_.scratch_, buf_.data(), buf_.size(), cudaMemcpyHostToDevice, b_.stream_), "upload");
      return b_.scratch_;
    }

   private:
    CudaBackend& b_;
    std::vector<uint8_t> buf_;
  };

  bool recordingHere() const { return graph_->recording() && std::this_thread::get_id() == owner_; }
  void flushRecorded() {
    graph_->flush();
    freeDeferred();
  }
  void freeDeferred() {
    for (void* p : deferredFrees_) ck(cudaFreeAsync(p, stream_), "cudaFreeAsync");
    deferredFrees_.clear();
  }

  void ensureScratch(size_t bytes) {
    if (bytes <= scratchBytes_) return;
    if (scratch_) {
      ck(cudaStreamSynchronize(stream_), "scratch: synchronize");
      ck(cudaFree(scratch_), "cudaFree (scratch)");
    }
    scratchBytes_ = std::max<size_t>(bytes * 2, 1 << 16);
    ck(cudaMalloc(reinterpret_cast<void**>(&scratch_), scratchBytes_), "cudaMalloc (scratch)");
  }

  struct TableKey {
    const void* calls;
    const void* first;
    int64_t count;
    bool operator<(const TableKey& o) const {
      return std::tie(calls, first, count) < std::tie(o.calls, o.first, o.count);
    }
  };
  struct ExpertTable {
    bool built = false;
    cuda::ExpertPtrs* dev = nullptr;
    int type = 0;
    int64_t inter = 0, hid = 0;
  };
  std::map<TableKey, ExpertTable> tables_;  // moeRoutedOnDevice's per-layer expert tables
  // argmax's buffers: device [parts] values, [parts] indices, [rows] counters, [rows] results; pinned [rows] results.
  struct Pick {
    void* dev = nullptr;
    int32_t* host = nullptr;
    size_t parts = 0, rows = 0;
    void reset() {
      if (dev) cudaFree(dev);
      if (host) cudaFreeHost(host);
      dev = nullptr;
      host = nullptr;
    }
  } pick_;
  int32_t* pickSlots_ = nullptr;      // pickToDevice's pinned results, [2]
  cudaEvent_t pickEvents_[2] = {};    // recorded after each slot's copy

  std::string name_;
  std::thread::id owner_;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;
  std::deque<CopyStream> copyStreams_;  // a deque: references handed out stay valid when another thread adds one
  cuda::PinnedMemory pinned_;           // the host tier's memory
  uint8_t* scratch_ = nullptr;
  size_t scratchBytes_ = 0;
  // Pinned buffer for device-to-host copies into pageable memory up to kStagingMax bytes.
  static constexpr size_t kStagingMax = size_t(16) << 20;
  std::mutex stagingMu_;
  void* staging_ = nullptr;
  size_t stagingBytes_ = 0;
  std::unique_ptr<cuda::GraphRecorder> graph_;
  std::unique_ptr<cuda::CublasGemm> blas_;  // prefill GEMMs (when libcublas loads)
  static constexpr int64_t kCublasMinRows = 9;  // from n rows on (past the GEMV's 8), matmul goes to cuBLAS
  bool graphs_ = true;                 // DOPPLER_CUDA_GRAPHS=0 turns step graphs off
  std::vector<void*> deferredFrees_;   // device memory released while recording
  // Scratch arena of recorded steps (allocateScratch): bump-allocated, started over at each step when nothing
  // in it is still in use, so the same step gets the same addresses.
  uint8_t* arena_ = nullptr;
  size_t arenaCap_ = 0, arenaTop_ = 0, arenaWant_ = 0;
  int64_t arenaLive_ = 0;
};

}  // namespace

std::unique_ptr<Backend> makeCudaBackend() { return std::make_unique<CudaBackend>(); }

}  // namespace doppler

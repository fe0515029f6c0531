// CUDA kernels: f32 activations, f32 accumulation, weights f32/f16/bf16 (row or column layout) and MXFP4 (row).
// Correctness first; the decode GEMV is the one tuned for bandwidth (one warp per output row, 16-byte loads).
// Decode steps run as CUDA graphs whose kernels overlap their neighbours (pdlBegin): a kernel reads its weights
// (norm weights into registers, GEMV rows into L2) before it waits for the previous kernel's results.
#include "backend/cuda/kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <tuple>
#include <type_traits>

namespace doppler::cuda {

namespace {

constexpr int kWarp = 32;

__device__ __forceinline__ float bf16ToF32(uint16_t u) { return __uint_as_float(uint32_t(u) << 16); }
__device__ __forceinline__ float f16ToF32(uint16_t u) { return __half2float(__ushort_as_half(u)); }

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Programmatic dependent launch (sm_90). In a step's graph every kernel follows the previous one over a
// programmatic edge (graph_recorder.cpp), so it may be scheduled while that one still runs: each kernel first lets
// its own successor be scheduled (launch_dependents), then waits until its predecessor has completed and its
// writes are visible (wait), before it reads activations or writes anything. Only weights, which no kernel
// writes, may be read (prefetched) before the wait. Launched without such an edge, both instructions return at once.
__device__ __forceinline__ void pdlBegin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Asks the copy engine to bring [p, p + bytes) into L2 (p 16-byte aligned, bytes a multiple of 16); no-op before
// sm_90. Used before pdlBegin() for the weights a block is about to stream, so that they arrive while the previous
// kernel finishes.
__device__ __forceinline__ void prefetchL2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Blocks that may still start before their predecessor finishes: the first waves (132 SMs x up to 8 blocks).
constexpr unsigned kPrefetchBlocks = 1056;

__constant__ float kE2M1[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

__device__ __forceinline__ float e8m0(uint8_t e) { return ldexpf(1.0f, int(e) - 127); }

// Element (o, i) of W[out, in], any type and layout (the slow, general path).
__device__ __forceinline__ float welem(const MatW& w, int64_t o, int64_t i) {
  if (w.type == kMXFP4) {  // row layout only (checked on the host)
    const uint8_t* blk = static_cast<const uint8_t*>(w.data) + (o * (w.in / 32) + i / 32) * 17;
    const int j = int(i % 32);
    const uint8_t b = blk[1 + j / 2];
    return kE2M1[(j & 1) ? (b >> 4) : (b & 0x0f)] * e8m0(blk[0]);
  }
  const int64_t idx = w.column ? i * w.out + o : o * w.in + i;
  switch (w.type) {
    case kF32: return static_cast<const float*>(w.data)[idx];
    case kF16: return f16ToF32(static_cast<const uint16_t*>(w.data)[idx]);
    default: return bf16ToF32(static_cast<const uint16_t*>(w.data)[idx]);
  }
}

// ---------------------------------------------------------------- GEMV, row layout (decode)

// 8 consecutive weights of type T at p (16-byte aligned for f16/bf16, 32 bytes for f32) as floats.
// 16 bytes of weights: read once per step, so they bypass L1 (no_allocate), which keeps the activations that
// every warp re-reads (x, the experts' act) there.
__device__ __forceinline__ uint4 ldWeights(const void* p) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p));
  return r;
}

template <int T>
__device__ __forceinline__ void load8(const void* p, float* f) {
  if constexpr (T == kF32) {
    const uint4 a = ldWeights(p);
    const uint4 b = ldWeights(static_cast<const uint8_t*>(p) + 16);
    f[0] = __uint_as_float(a.x); f[1] = __uint_as_float(a.y); f[2] = __uint_as_float(a.z); f[3] = __uint_as_float(a.w);
    f[4] = __uint_as_float(b.x); f[5] = __uint_as_float(b.y); f[6] = __uint_as_float(b.z); f[7] = __uint_as_float(b.w);
  } else {
    const uint4 u = ldWeights(p);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
      if constexpr (T == kBF16) {
        f[2 * k] = __uint_as_float(w[k] << 16);
        f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
      } else {
        f[2 * k] = f16ToF32(uint16_t(w[k] & 0xffff));
        f[2 * k + 1] = f16ToF32(uint16_t(w[k] >> 16));
      }
    }
  }
}

constexpr int kGemvWarps = 8;  // rows per block (one warp each)

// y[t, o] for t < n <= NT. VEC: in % 8 == 0 and W, x 16-byte aligned.
template <int T, int NT, bool VEC, bool ADD>
__global__ void __launch_bounds__(kGemvWarps * kWarp) gemvRow(const float* __restrict__ x, int n, const void* __restrict__ w,
                                                            int64_t out, int64_t in, const float* __restrict__ bias,
                                                            float* __restrict__ y) {
  constexpr int es = T == kF32 ? 4 : 2;
  if constexpr (VEC) {  // the block's rows are one contiguous range of 16-byte multiples
    const int64_t o0 = int64_t(blockIdx.x) * kGemvWarps;
    if (threadIdx.x == 0 && blockIdx.x < kPrefetchBlocks)
      prefetchL2(static_cast<const uint8_t*>(w) + o0 * in * es, uint32_t(min(int64_t(kGemvWarps), out - o0) * in * es));
  }
  pdlBegin();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t o = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (o >= out) return;
  float acc[NT], prev[NT];  // prev: y's values to add to (loaded now, used at the end)
#pragma unroll
  for (int t = 0; t < NT; t++) {
    acc[t] = 0.0f;
    prev[t] = ADD && lane == 0 && t < n ? y[t * out + o] : 0.0f;
  }
  const uint8_t* row = static_cast<const uint8_t*>(w) + o * in * es;
  if constexpr (VEC) {
#pragma unroll 4
    for (int64_t i = int64_t(lane) * 8; i < in; i += kWarp * 8) {
      float f[8];
      load8<T>(row + i * es, f);
#pragma unroll
      for (int t = 0; t < NT; t++) {
        if (t < n) {
          const float4 a = __ldg(reinterpret_cast<const float4*>(x + t * in + i));
          const float4 b = __ldg(reinterpret_cast<const float4*>(x + t * in + i) + 1);
          acc[t] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z +
                    f[7] * b.w;
        }
      }
    }
  } else {
    for (int64_t i = lane; i < in; i += kWarp) {
      float wv;
      if constexpr (T == kF32) wv = reinterpret_cast<const float*>(row)[i];
      else if constexpr (T == kF16) wv = f16ToF32(reinterpret_cast<const uint16_t*>(row)[i]);
      else wv = bf16ToF32(reinterpret_cast<const uint16_t*>(row)[i]);
#pragma unroll
      for (int t = 0; t < NT; t++)
        if (t < n) acc[t] += wv * x[t * in + i];
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    if (t < n) {
      const float s = warpSum(acc[t]) + (bias ? bias[o] : 0.0f);
      if (lane == 0) y[t * out + o] = ADD ? prev[t] + s : s;
    }
  }
}

// Several row-layout matrices with the same input, one token (attention's q, k, v in one launch): the grid is the
// concatenation of each matrix's gemvRow grid; the block's matrix is the last one whose first block it reaches.
template <int T>
__global__ void __launch_bounds__(kGemvWarps * kWarp) gemvRowMulti(const float* __restrict__ x, int64_t in,
                                                                 const __grid_constant__ MultiGemv m) {
  constexpr int es = T == kF32 ? 4 : 2;
  int j = 0;
  while (j + 1 < m.count && int64_t(blockIdx.x) >= m.firstBlock[j + 1]) j++;
  const int64_t o0 = (int64_t(blockIdx.x) - m.firstBlock[j]) * kGemvWarps;
  if (threadIdx.x == 0 && blockIdx.x < kPrefetchBlocks)  // rows of 16-byte multiples (matmulMany's condition)
    prefetchL2(static_cast<const uint8_t*>(m.w[j]) + o0 * in * es,
               uint32_t(min(int64_t(kGemvWarps), m.out[j] - o0) * in * es));
  pdlBegin();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t o = o0 + warp;
  if (o >= m.out[j]) return;
  const uint8_t* row = static_cast<const uint8_t*>(m.w[j]) + o * in * es;
  float acc = 0.0f;
#pragma unroll 4
  for (int64_t i = int64_t(lane) * 8; i < in; i += kWarp * 8) {
    float f[8];
    load8<T>(row + i * es, f);
    const float4 a = __ldg(reinterpret_cast<const float4*>(x + i));
    const float4 b = __ldg(reinterpret_cast<const float4*>(x + i) + 1);
    acc += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
  }
  const float s = warpSum(acc);
  if (lane == 0) m.y[j][o] = s + (m.bias[j] ? m.bias[j][o] : 0.0f);
}

// MXFP4 rows: in / 32 blocks of 17 bytes; one block per lane per step.
template <int NT>
__global__ void __launch_bounds__(kGemvWarps * kWarp) gemvMxfp4(const float* __restrict__ x, int n,
                                                              const uint8_t* __restrict__ w, int64_t out, int64_t in,
                                                              const float* __restrict__ bias, float* __restrict__ y,
                                                              bool add) {
  pdlBegin();
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t o = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (o >= out) return;
  const int64_t nb = in / 32;
  const uint8_t* row = w + o * nb * 17;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  for (int64_t b = lane; b < nb; b += kWarp) {
    const uint8_t* blk = row + b * 17;
    const float sc = e8m0(blk[0]);
    float v[32];
#pragma unroll
    for (int k = 0; k < 16; k++) {
      const uint8_t c = blk[1 + k];
      v[2 * k] = kE2M1[c & 0x0f];
      v[2 * k + 1] = kE2M1[c >> 4];
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
      if (t < n) {
        const float* xv = x + t * in + b * 32;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 32; k++) s += v[k] * xv[k];
        acc[t] += s * sc;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) {
    if (t < n) {
      const float s = warpSum(acc[t]) + (bias ? bias[o] : 0.0f);
      if (lane == 0) y[t * out + o] = add ? y[t * out + o] + s : s;
    }
  }
}

// ---------------------------------------------------------------- GEMV, column layout

constexpr int kColOut = 32, kColSlices = 8;

// Block: 32 consecutive outputs (one per lane, coalesced along the contiguous column) x 8 slices of `in`.
template <int NT>
__global__ void __launch_bounds__(kColOut * kColSlices) gemvCol(const float* __restrict__ x, int n, MatW w,
                                                               const float* __restrict__ bias, float* __restrict__ y,
                                                               bool add) {
  pdlBegin();
  __shared__ float part[NT][kColSlices][kColOut];
  const int lane = threadIdx.x % kColOut, slice = threadIdx.x / kColOut;
  const int64_t o = int64_t(blockIdx.x) * kColOut + lane;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; t++) acc[t] = 0.0f;
  if (o < w.out) {
    for (int64_t i = slice; i < w.in; i += kColSlices) {
      const float wv = welem(w, o, i);
#pragma unroll
      for (int t = 0; t < NT; t++)
        if (t < n) acc[t] += wv * x[t * w.in + i];
    }
  }
#pragma unroll
  for (int t = 0; t < NT; t++) part[t][slice][lane] = acc[t];
  __syncthreads();
  if (slice == 0 && o < w.out) {
#pragma unroll
    for (int t = 0; t < NT; t++) {
      if (t < n) {
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < kColSlices; k++) s += part[t][k][lane];
        s += bias ? bias[o] : 0.0f;
        y[t * w.out + o] = add ? y[t * w.out + o] + s : s;
      }
    }
  }
}

// ---------------------------------------------------------------- GEMM (prefill)

constexpr int kBM = 64, kBN = 64, kBK = 16;

// y[n, out] = x[n, in] · Wᵀ: 64 x 64 tiles, 256 threads, 4 x 4 outputs per thread, weights converted on load.
template <bool COL>
__global__ void __launch_bounds__(256) gemmTiled(const float* __restrict__ x, int64_t n, MatW w,
                                                 const float* __restrict__ bias, float* __restrict__ y) {
  pdlBegin();
  __shared__ float As[kBK][kBM + 4];
  __shared__ float Bs[kBK][kBN + 4];
  const int tid = threadIdx.x;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int ty = tid / 16, tx = tid % 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < w.in; k0 += kBK) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int e = tid + j * 256;
      const int k = e % kBK, m = e / kBK;  // x rows contiguous along k
      const int64_t gm = m0 + m, gk = k0 + k;
      As[k][m] = (gm < n && gk < w.in) ? x[gm * w.in + gk] : 0.0f;
      int kk, nn;
      if (COL) { nn = e % kBN; kk = e / kBN; }  // column layout: contiguous along out
      else { kk = e % kBK; nn = e / kBK; }
      const int64_t go = n0 + nn, gk2 = k0 + kk;
      Bs[kk][nn] = (go < w.out && gk2 < w.in) ? welem(w, go, gk2) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kBK; k++) {
      float a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; r++) a[r] = As[k][ty * 4 + r];
#pragma unroll
      for (int c = 0; c < 4; c++) b[c] = Bs[k][tx * 4 + c];
#pragma unroll
      for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] += a[r] * b[c];
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; r++) {
    const int64_t gm = m0 + ty * 4 + r;
    if (gm >= n) continue;
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const int64_t go = n0 + tx * 4 + c;
      if (go < w.out) y[gm * w.out + go] = acc[r][c] + (bias ? bias[go] : 0.0f);
    }
  }
}

// ---------------------------------------------------------------- small ops

constexpr int kRowPer = 16;  // values per thread a row kernel keeps in registers (rows up to 16 x blockDim)

__global__ void embedKernel(MatW t, const __grid_constant__ EmbedArgs e, int64_t dim, float* __restrict__ out) {
  const int64_t i = blockIdx.x;
  if (e.inl && dim <= int64_t(kRowPer) * blockDim.x) {  // the token is known: read its row before the wait
    float v[kRowPer];
#pragma unroll
    for (int k = 0; k < kRowPer; k++) {
      const int64_t c = threadIdx.x + int64_t(k) * blockDim.x;
      v[k] = c < dim ? welem(t, e.idsInl[i], c) : 0.0f;
    }
    pdlBegin();
#pragma unroll
    for (int k = 0; k < kRowPer; k++) {
      const int64_t c = threadIdx.x + int64_t(k) * blockDim.x;
      if (c < dim) out[i * dim + c] = v[k];
    }
    return;
  }
  pdlBegin();
  const int64_t id = e.inl ? e.idsInl[i] : e.ids[i];
  if (id < 0 || id >= t.out) {  // ids from device memory are not checked on the host: a row of NaN, never a wild read
    for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) out[i * dim + c] = NAN;
    return;
  }
#pragma unroll 4
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) out[i * dim + c] = welem(t, id, c);
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ float blockSum(float v, float* red) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, nw = blockDim.x / kWarp;
  v = warpSum(v);
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.0f;
  for (int k = 0; k < nw; k++) s += red[k];
  return s;
}

// add != nullptr: x += add first (the residual add fused into the next norm), x written back. A row of up to
// kRowPer x blockDim values is held in registers: the norm weights are read before the wait, the row's loads are
// all issued before its first store (loads and stores through pointers that may alias would otherwise take one
// memory round trip each).
__global__ void rmsNormKernel(float* x, const float* add, int64_t dim, const float* w, float eps, float* y) {
  __shared__ float red[32];
  float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = y + int64_t(blockIdx.x) * dim;
  const float* ar = add ? add + int64_t(blockIdx.x) * dim : nullptr;
  if (dim <= int64_t(kRowPer) * blockDim.x) {
    float wv[kRowPer], v[kRowPer];
#pragma unroll
    for (int k = 0; k < kRowPer; k++) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      wv[k] = i < dim ? w[i] : 0.0f;
    }
    pdlBegin();
#pragma unroll
    for (int k = 0; k < kRowPer; k++) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      v[k] = i >= dim ? 0.0f : ar ? xr[i] + ar[i] : xr[i];
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kRowPer; k++) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      if (i < dim && ar) xr[i] = v[k];
      ss += v[k] * v[k];
    }
    ss = blockSum(ss, red);
    const float inv = 1.0f / sqrtf(ss / float(dim) + eps);
#pragma unroll
    for (int k = 0; k < kRowPer; k++) {
      const int64_t i = threadIdx.x + int64_t(k) * blockDim.x;
      if (i < dim) yr[i] = (v[k] * inv) * wv[k];
    }
    return;
  }
  pdlBegin();
  float ss = 0.0f;
  if (ar) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {  // each thread reads back only what it wrote
      const float v = xr[i] + ar[i];
      xr[i] = v;
      ss += v * v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  }
  ss = blockSum(ss, red);
  const float inv = 1.0f / sqrtf(ss / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = (xr[i] * inv) * w[i];
}

__global__ void layerNormKernel(const float* x, int64_t dim, const float* w, const float* b, float eps, float* y) {
  pdlBegin();
  __shared__ float red[32];
  const float* xr = x + int64_t(blockIdx.x) * dim;
  float* yr = y + int64_t(blockIdx.x) * dim;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
  const float mean = blockSum(s, red) / float(dim);
  float v = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) v += (xr[i] - mean) * (xr[i] - mean);
  const float var = blockSum(v, red) / float(dim);
  const float inv = 1.0f / sqrtf(var + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = (xr[i] - mean) * inv * w[i] + (b ? b[i] : 0.0f);
}

__global__ void ropeKernel(float* x, int64_t n, int64_t heads, int64_t headDim, const __grid_constant__ RopeArgs r,
                           int64_t half, float scale, bool interleaved) {
  pdlBegin();
  const int64_t* positions = r.inl ? r.posInl : r.pos;
  const float* invFreq = r.inl ? r.invInl : r.inv;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n * heads * half) return;
  const int64_t j = idx % half, h = (idx / half) % heads, i = idx / (half * heads);
  const float ang = invFreq[j] * float(positions[i]);
  const float c = cosf(ang) * scale, s = sinf(ang) * scale;
  float* v = x + (i * heads + h) * headDim;
  const int64_t a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * c - x1 * s;
  v[b] = x1 * c + x0 * s;
}

// q/k RMSNorm per head (when qNorm) and rope, fused: grid (qHeads + kHeads, n), one block per head of one token.
// The head is normalised into shared memory, then each rotated pair is read from there and written back (the
// same arithmetic as rmsNormKernel followed by ropeKernel).
__global__ void qkNormRopeKernel(float* q, float* k, int64_t qHeads, int64_t kHeads, int64_t headDim,
                                 const float* qNorm, const float* kNorm, float eps,
                                 const __grid_constant__ RopeArgs r, int64_t half, float scale, bool interleaved) {
  pdlBegin();
  extern __shared__ float hv[];  // [headDim]
  __shared__ float red[32];
  const int64_t i = blockIdx.y, hh = blockIdx.x;
  const bool isQ = hh < qHeads;
  float* v = isQ ? q + (i * qHeads + hh) * headDim : k + (i * kHeads + (hh - qHeads)) * headDim;
  const float* w = isQ ? qNorm : kNorm;
  float inv = 1.0f;
  if (w) {
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x) ss += v[d] * v[d];
    ss = blockSum(ss, red);
    inv = 1.0f / sqrtf(ss / float(headDim) + eps);
  }
  for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x) hv[d] = w ? (v[d] * inv) * w[d] : v[d];
  __syncthreads();
  const int64_t* positions = r.inl ? r.posInl : r.pos;
  const float* invFreq = r.inl ? r.invInl : r.inv;
  for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x) {
    if (d >= 2 * half) {  // past the rotated dims: the normalised value
      v[d] = hv[d];
      continue;
    }
    // d is element a or b of pair j
    const int64_t j = interleaved ? d / 2 : (d < half ? d : d - half);
    const bool first = interleaved ? d % 2 == 0 : d < half;
    const int64_t a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
    const float ang = invFreq[j] * float(positions[i]);
    const float c = cosf(ang) * scale, s = sinf(ang) * scale;
    v[d] = first ? hv[a] * c - hv[b] * s : hv[b] * c + hv[a] * s;
  }
}

constexpr int kAttnWarps = 16;  // keys split over 16 warps: decode has one block per head only

// One block per (head, query): each warp runs an online softmax over every 16th key, then the warps merge.
// Shared memory: q [D], then per warp acc [VD]. PER > 0 (D, VD <= 32 * PER): each lane keeps its PER elements of q
// and of the accumulator in registers and loads a key's k and v together (one memory round trip per key); PER == 0
// is the general path through shared memory.
template <int PER>
__global__ void __launch_bounds__(kAttnWarps * kWarp) attentionKernel(const float* q, const __grid_constant__ AttnArgs a,
                                                                     float* out) {
  pdlBegin();
  const int64_t* positions = a.inl ? a.posInl : a.pos;
  const DevChunk* chunks = a.inl ? a.chunkInl : a.chunks;
  const int64_t numChunks = a.numChunks;
  extern __shared__ float sm[];
  __shared__ float wm[kAttnWarps], wl[kAttnWarps];
  const int64_t h = blockIdx.x, i = blockIdx.y, H = a.numHeads, D = a.headDim, VD = a.vDim;
  const int64_t kvh = h / (H / a.numKvHeads), KVH = a.numKvHeads;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  float* qs = sm;
  float* acc = sm + D + warp * VD;
  const float* qv = q + (i * H + h) * D;
  const int64_t pos = positions[i];
  const int64_t lo = a.window > 0 ? pos - a.window + 1 : 0;
  float m = -INFINITY, l = 0.0f;
  if constexpr (PER > 0) {
    float qr[PER], ar[PER];
#pragma unroll
    for (int k = 0; k < PER; k++) {
      const int64_t d = lane + int64_t(k) * kWarp;
      qr[k] = d < D ? qv[d] : 0.0f;
      ar[k] = 0.0f;
    }
    for (int64_t c = 0; c < numChunks; c++) {
      const DevChunk ch = chunks[c];
      const int64_t t0 = max(ch.t0, lo), t1 = min(ch.t1, pos + 1);
      for (int64_t t = t0 + warp; t < t1; t += kAttnWarps) {
        const float* kp = ch.k + ((t - ch.t0) * KVH + kvh) * D;
        const float* vp = ch.v + ((t - ch.t0) * KVH + kvh) * VD;
        float kr[PER], vr[PER];
#pragma unroll
        for (int k = 0; k < PER; k++) {
          const int64_t d = lane + int64_t(k) * kWarp;
          kr[k] = d < D ? kp[d] : 0.0f;
          vr[k] = d < VD ? vp[d] : 0.0f;
        }
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < PER; k++) s += qr[k] * kr[k];
        s = warpSum(s) * a.scale;
        if (s > m) {
          const float corr = expf(m - s);
          l *= corr;
#pragma unroll
          for (int k = 0; k < PER; k++) ar[k] *= corr;
          m = s;
        }
        const float wgt = expf(s - m);
        l += wgt;
#pragma unroll
        for (int k = 0; k < PER; k++) ar[k] += wgt * vr[k];
      }
    }
#pragma unroll
    for (int k = 0; k < PER; k++) {
      const int64_t d = lane + int64_t(k) * kWarp;
      if (d < VD) acc[d] = ar[k];
    }
  } else {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = qv[d];
    for (int64_t d = lane; d < VD; d += kWarp) acc[d] = 0.0f;
    __syncthreads();
    for (int64_t c = 0; c < numChunks; c++) {
      const DevChunk ch = chunks[c];
      const int64_t t0 = max(ch.t0, lo), t1 = min(ch.t1, pos + 1);
      for (int64_t t = t0 + warp; t < t1; t += kAttnWarps) {
        const float* kp = ch.k + ((t - ch.t0) * KVH + kvh) * D;
        float s = 0.0f;
        for (int64_t d = lane; d < D; d += kWarp) s += qs[d] * kp[d];
        s = warpSum(s) * a.scale;
        const float* vp = ch.v + ((t - ch.t0) * KVH + kvh) * VD;
        if (s > m) {
          const float corr = expf(m - s);
          l *= corr;
          for (int64_t d = lane; d < VD; d += kWarp) acc[d] *= corr;
          m = s;
        }
        const float wgt = expf(s - m);
        l += wgt;
        for (int64_t d = lane; d < VD; d += kWarp) acc[d] += wgt * vp[d];
      }
    }
  }
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
  __syncthreads();
  float M = -INFINITY;
  for (int k = 0; k < kAttnWarps; k++) M = fmaxf(M, wm[k]);
  float L = 0.0f, f[kAttnWarps];
  for (int k = 0; k < kAttnWarps; k++) {
    f[k] = wm[k] == -INFINITY ? 0.0f : expf(wm[k] - M);
    L += wl[k] * f[k];
  }
  float sinkCorr = 1.0f;
  if (a.sinks) {  // an extra logit that takes probability mass but adds no value
    const float s = a.sinks[h];
    if (s > M) {
      sinkCorr = M == -INFINITY ? 0.0f : expf(M - s);
      L *= sinkCorr;
      M = s;
    }
    L += expf(s - M);
  }
  const float inv = L > 0 ? 1.0f / L : 0.0f;
  float* o = out + (i * H + h) * VD;
  for (int64_t d = threadIdx.x; d < VD; d += blockDim.x) {
    float v = 0.0f;
    for (int k = 0; k < kAttnWarps; k++) v += sm[D + k * VD + d] * f[k];
    o[d] = v * sinkCorr * inv;
  }
}

__global__ void swigluKernel(const float* gate, const float* up, int64_t n, float limit, float alpha, float* out) {
  pdlBegin();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (limit > 0) {
    const float g = fminf(gate[i], limit);
    const float u = fminf(fmaxf(up[i], -limit), limit);
    out[i] = g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
  } else {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// Device-to-device copy as a kernel: in a step's graph it is one more kernel node on the programmatic chain (a
// memcpy node would end it). vec: dst, src and bytes multiples of 16.
__global__ void copyKernel(uint8_t* dst, const uint8_t* src, int64_t bytes, bool vec) {
  pdlBegin();
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  if (vec) {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < bytes / 16; i += stride)
      reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(src)[i];
  } else {
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < bytes; i += stride) dst[i] = src[i];
  }
}

__global__ void axpyKernel(float a, const float* x, int64_t n, float* y) {
  pdlBegin();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}

__global__ void fillKernel(float* y, int64_t n, float v) {
  pdlBegin();
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = v;
}

// ---------------------------------------------------------------- greedy pick (argmax)

// (v, i) beats (bv, bi): larger value, ties to the lower index. NaN compares false, so it never beats anything.
__device__ __forceinline__ bool beats(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

__device__ __forceinline__ void warpBest(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (beats(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// The best (v, i) of the block's threads (blockDim.x a multiple of 32, at most 1024), valid in thread 0.
__device__ void blockBest(float& v, int& i) {
  __shared__ float sv[32];
  __shared__ int si[32];
  warpBest(v, i);
  if (threadIdx.x % kWarp == 0) {
    sv[threadIdx.x / kWarp] = v;
    si[threadIdx.x / kWarp] = i;
  }
  __syncthreads();
  if (threadIdx.x < kWarp) {
    const bool has = threadIdx.x < blockDim.x / kWarp;
    v = has ? sv[threadIdx.x] : -INFINITY;
    i = has ? si[threadIdx.x] : INT_MAX;
    warpBest(v, i);
  }
}

// grid (B, rows): block b of row r takes x[r, b*256 + t + k*B*256], writes its best to pv/pi[r*B + b]; the row's
// last block to finish (counter[r], zero between launches: the last block resets it) reduces the B candidates
// into out[r]. Result: the first maximum, as std::max_element (all NaN, or NaN at index 0: index 0).
__global__ void __launch_bounds__(256) argmaxKernel(const float* __restrict__ x, int64_t n, float* pv, int* pi,
                                                     unsigned* counter, int32_t* out) {
  pdlBegin();
  const float* row = x + int64_t(blockIdx.y) * n;
  const int B = int(gridDim.x);
  float v = -INFINITY;
  int i = INT_MAX;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += int64_t(B) * blockDim.x) {
    const float e = row[k];
    if (beats(e, int(k), v, i)) {
      v = e;
      i = int(k);
    }
  }
  blockBest(v, i);
  __shared__ bool last;
  if (threadIdx.x == 0) {
    pv[blockIdx.y * B + blockIdx.x] = v;
    pi[blockIdx.y * B + blockIdx.x] = i;
    __threadfence();  // the candidate is visible before the counter says so
    last = atomicAdd(&counter[blockIdx.y], 1u) == unsigned(B - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  v = -INFINITY;
  i = INT_MAX;
  for (int b = threadIdx.x; b < B; b += blockDim.x) {
    const float cv = static_cast<volatile float*>(pv)[blockIdx.y * B + b];
    const int ci = static_cast<volatile int*>(pi)[blockIdx.y * B + b];
    if (beats(cv, ci, v, i)) {
      v = cv;
      i = ci;
    }
  }
  blockBest(v, i);
  if (threadIdx.x == 0) {
    out[blockIdx.y] = (i == INT_MAX || isnan(row[0])) ? 0 : i;
    counter[blockIdx.y] = 0;
  }
}

// ---------------------------------------------------------------- sampling (engine/sampler.cpp's steps)

// The best (v, i) among the `count` entries [k0, count) stepping by `step` of (value(k), index(k)) that rank strictly
// below (lv, li) in the order of beats(), valid in thread 0; every thread must call it.
template <class Get>
__device__ void bestBelow(int64_t k0, int64_t count, int64_t step, float lv, int li, const Get& get, float& v, int& i) {
  v = -INFINITY;
  i = INT_MAX;
  for (int64_t k = k0; k < count; k += step) {
    float e;
    int ei;
    get(k, e, ei);
    if (beats(lv, li, e, ei) && beats(e, ei, v, i)) {
      v = e;
      i = ei;
    }
  }
  blockBest(v, i);
}

// The block's K best (v, i) of get() over its entries, in order, into cv / ci [K] (ci = INT_MAX past the valid
// ones): K rounds, each taking the best entry ranked below the previous round's.
template <class Get>
__device__ void blockTopK(int64_t k0, int64_t count, int64_t step, int K, const Get& get, float* cv, int* ci) {
  __shared__ float wv;
  __shared__ int wi;
  float lv = INFINITY;
  int li = -1;
  for (int r = 0; r < K; r++) {
    float v;
    int i;
    bestBelow(k0, count, step, lv, li, get, v, i);
    if (threadIdx.x == 0) {
      cv[r] = wv = v;
      ci[r] = wi = i;
    }
    __syncthreads();
    lv = wv;
    li = wi;
  }
}

// grid (B): Sampler::sample for one row of logits x[0, n) with temperature > 0 and 1 <= topK <= kMaxSampleTopK:
// block b's topK best of x[k] / temperature (k = b*256 + t + j*B*256; ties to the lower index) go to pv / pi
// [b * topK ...]; the last block to finish (counter, zero between launches) takes the topK best of those, then
// thread 0 runs the sampler's double-precision softmax, top-p, min-p and draw (u) over them in its order.
__global__ void __launch_bounds__(256) sampleKernel(const float* __restrict__ x, int64_t n, SampleArgs s, float* pv,
                                                     int* pi, unsigned* counter, int32_t* out) {
  pdlBegin();
  const int B = int(gridDim.x), K = s.topK;
  __shared__ float cv[kMaxSampleTopK];
  __shared__ int ci[kMaxSampleTopK];
  blockTopK(int64_t(blockIdx.x) * blockDim.x + threadIdx.x, n, int64_t(B) * blockDim.x, K,
            [&](int64_t k, float& e, int& ei) {
              e = x[k] / s.temperature;
              ei = int(k);
            },
            pv + int64_t(blockIdx.x) * K, pi + int64_t(blockIdx.x) * K);
  __shared__ bool last;
  if (threadIdx.x == 0) {
    __threadfence();  // the candidates are visible before the counter says so
    last = atomicAdd(counter, 1u) == unsigned(B - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const volatile float* vpv = pv;
  const volatile int* vpi = pi;
  blockTopK(threadIdx.x, int64_t(B) * K, blockDim.x, K,
            [&](int64_t k, float& e, int& ei) {
              e = vpv[k];
              ei = vpi[k];
            },
            cv, ci);
  if (threadIdx.x != 0) return;
  *counter = 0;
  int kept = 0;
  while (kept < K && ci[kept] != INT_MAX) kept++;
  if (kept == 0) {  // every logit NaN
    *out = 0;
    return;
  }
  double p[kMaxSampleTopK];
  const float m = cv[0];
  double sum = 0;
  for (int j = 0; j < kept; j++) sum += (p[j] = exp(double(cv[j] - m)));
  for (int j = 0; j < kept; j++) p[j] /= sum;
  int cnt = kept;
  if (s.topP < 1.0f) {  // smallest prefix with mass >= top_p
    double cum = 0;
    int j = 0;
    while (j < cnt) {
      cum += p[j++];
      if (cum >= s.topP) break;
    }
    cnt = j;
  }
  if (s.minP > 0) {
    const double thr = s.minP * p[0];
    int j = 1;
    while (j < cnt && p[j] >= thr) j++;
    cnt = j;
  }
  double total = 0;
  for (int j = 0; j < cnt; j++) total += p[j];
  double r = s.u * total;
  for (int j = 0; j < cnt; j++) {
    r -= p[j];
    if (r < 0) {
      *out = ci[j];
      return;
    }
  }
  *out = ci[cnt - 1];
}

// ---------------------------------------------------------------- cuBLAS prefill helpers

__device__ __forceinline__ uint16_t bf16Round(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

__global__ void splitBf16x3Kernel(const float* __restrict__ x, int64_t count, uint16_t* __restrict__ parts) {
  pdlBegin();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const uint16_t a = bf16Round(v);
    const float r = v - bf16ToF32(a);  // exact (Sterbenz)
    const uint16_t b = bf16Round(r);
    parts[i] = a;
    parts[count + i] = b;
    parts[2 * count + i] = bf16Round(r - bf16ToF32(b));
  }
}

__global__ void sumPartsKernel(const float* __restrict__ p, int64_t count, int64_t out, const float* __restrict__ bias,
                               float* __restrict__ y) {
  pdlBegin();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = (p[2 * count + i] + p[count + i]) + p[i];
    y[i] = bias ? v + bias[i % out] : v;
  }
}

__global__ void initRowsKernel(float* __restrict__ y, int64_t n, int64_t out, const float* __restrict__ bias) {
  pdlBegin();
  const int64_t total = n * out;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bias ? bias[i % out] : 0.0f;
}

// ---------------------------------------------------------------- MoE prefill: token rows to and from experts

// grid (count, column blocks): row i of dst from row rows[i] of src.
__global__ void gatherRowsKernel(const float* __restrict__ src, const int64_t* __restrict__ rows, int64_t dim,
                                 float* __restrict__ dst) {
  pdlBegin();
  const int64_t i = blockIdx.x, c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c < dim) dst[i * dim + c] = src[rows[i] * dim + c];
}

__global__ void scatterAddRowsKernel(const float* __restrict__ src, const int64_t* __restrict__ rows,
                                     const float* __restrict__ w, int64_t dim, float* __restrict__ dst) {
  pdlBegin();
  const int64_t i = blockIdx.x, c = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c < dim) dst[rows[i] * dim + c] += w[i] * src[i * dim + c];
}

__device__ __forceinline__ float swigluOne(float g, float u, float limit, float alpha) {
  if (limit > 0) {
    g = fminf(g, limit);
    u = fminf(fmaxf(u, -limit), limit);
    return g / (1.0f + expf(-alpha * g)) * (u + 1.0f);
  }
  return g / (1.0f + expf(-g)) * u;
}

// Routing of one token by the whole block (blockDim.x a multiple of 32): p = softmax(logits) as the CPU computes it
// (max subtracted, expf, divided by the sum); the K largest p, ties to the lower index, go to idx/w in descending
// order (w renormalised to sum 1 when norm). Each thread ranks its experts against all E at once (rank = how many
// come before it in that order), so there are no K sequential rounds. p: [E] shared memory; idx and w: shared or
// global, complete when this returns (the block synchronises).
__device__ void routeTopK(const float* logits, int E, int K, bool norm, float* p, int* idx, float* w) {
  __shared__ float red[32];
  __shared__ float mx;
  float m = -INFINITY;
  for (int e = threadIdx.x; e < E; e += blockDim.x) m = fmaxf(m, logits[e]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (threadIdx.x % kWarp == 0) red[threadIdx.x / kWarp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = -INFINITY;
    for (int k = 0; k < int(blockDim.x / kWarp); k++) v = fmaxf(v, red[k]);
    mx = v;
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) {  // every slot valid even when NaN logits leave ranks unfilled
    idx[k] = 0;
    w[k] = 0.0f;
  }
  __syncthreads();
  float s = 0.0f;
  for (int e = threadIdx.x; e < E; e += blockDim.x) s += (p[e] = expf(logits[e] - mx));
  const float sum = blockSum(s, red);
  for (int e = threadIdx.x; e < E; e += blockDim.x) p[e] /= sum;
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    const float pe = p[e];
    int rank = 0;
    for (int f = 0; f < E; f++) {
      const float pf = p[f];
      rank += (pf > pe) | ((pf == pe) & (f < e));
    }
    if (rank < K) {
      idx[rank] = e;
      w[rank] = pe;
    }
  }
  __syncthreads();
  if (norm) {
    __shared__ float ksum;
    if (threadIdx.x == 0) {
      float t = 0.0f;
      for (int k = 0; k < K; k++) t += w[k];  // descending order, as the sequential pick added them
      ksum = t;
    }
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += blockDim.x) w[k] /= ksum;
    __syncthreads();
  }
}

// grid (rows / 8, experts): one warp per row r of expert j's gate and up. With m.logits the block routes the token
// itself first (routeTopK; every block gets the same answer) and block (0, 0) stores the choice in m.sel / m.selW
// for the down kernel. Dynamic shared memory: [E] floats + [K] ints + [K] floats when routing.
template <int T>
__global__ void __launch_bounds__(kGemvWarps * kWarp) moeGateUp(const float* __restrict__ x, const __grid_constant__ MoeArgs m,
                                                              int64_t inter, int64_t hid, float limit, float alpha,
                                                              float* __restrict__ act) {
  extern __shared__ float routeSm[];
  pdlBegin();
  const ExpertPtrs* ex = m.inl ? m.exInl : m.ex;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x) * kGemvWarps + warp;
  const int j = blockIdx.y;
  int e = m.sel ? -1 : j;
  if (m.logits) {
    int* sIdx = reinterpret_cast<int*>(routeSm + m.numExperts);
    float* sW = routeSm + m.numExperts + m.topK;
    routeTopK(m.logits, m.numExperts, m.topK, m.routeNorm, routeSm, sIdx, sW);
    if (blockIdx.x == 0 && blockIdx.y == 0) {
      for (int k = threadIdx.x; k < m.topK; k += blockDim.x) {
        m.sel[k] = sIdx[k];
        m.selW[k] = sW[k];
      }
    }
    e = sIdx[j];
  } else if (m.sel) {
    e = m.sel[j];
  }
  if (r >= inter) return;
  const ExpertPtrs& ep = ex[e];
  constexpr int es = T == kF32 ? 4 : 2;
  const uint8_t* gr = static_cast<const uint8_t*>(ep.gate) + r * hid * es;
  const uint8_t* ur = static_cast<const uint8_t*>(ep.up) + r * hid * es;
  float g = 0.0f, u = 0.0f;
#pragma unroll 2
  for (int64_t i = int64_t(lane) * 8; i < hid; i += kWarp * 8) {
    float fg[8], fu[8];
    load8<T>(gr + i * es, fg);
    load8<T>(ur + i * es, fu);
    const float4 a = __ldg(reinterpret_cast<const float4*>(x + i));
    const float4 b = __ldg(reinterpret_cast<const float4*>(x + i) + 1);
    g += fg[0] * a.x + fg[1] * a.y + fg[2] * a.z + fg[3] * a.w + fg[4] * b.x + fg[5] * b.y + fg[6] * b.z + fg[7] * b.w;
    u += fu[0] * a.x + fu[1] * a.y + fu[2] * a.z + fu[3] * a.w + fu[4] * b.x + fu[5] * b.y + fu[6] * b.z + fu[7] * b.w;
  }
  g = warpSum(g);
  u = warpSum(u);
  if (lane == 0) act[int64_t(j) * inter + r] = swigluOne(g, u, limit, alpha);
}

// Selected expert j's share of output row h of the down projection: weight_j * (down_j[h, :] . act[j, :]), summed
// over one warp (every lane returns the sum).
template <int T>
__device__ __forceinline__ float downRowTerm(const float* __restrict__ act, const MoeArgs& m, const ExpertPtrs* ex,
                                             int j, int64_t h, int64_t inter, int lane) {
  constexpr int es = T == kF32 ? 4 : 2;
  const ExpertPtrs& e = ex[m.sel ? m.sel[j] : j];
  const float wj = m.sel ? m.selW[j] : e.weight;
  const uint8_t* dr = static_cast<const uint8_t*>(e.down) + h * inter * es;
  const float* aj = act + int64_t(j) * inter;
  float s = 0.0f;
#pragma unroll 4
  for (int64_t i = int64_t(lane) * 8; i < inter; i += kWarp * 8) {
    float f[8];
    load8<T>(dr + i * es, f);
    const float4 a = *reinterpret_cast<const float4*>(aj + i);
    const float4 b = *(reinterpret_cast<const float4*>(aj + i) + 1);
    s += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
  }
  return wj * warpSum(s);
}

// Few experts (count < 4, e.g. Mixtral's 2 large ones): grid (hid / 8), one warp per output row h over every
// selected expert's down row (all 8 warps of a block busy).
template <int T>
__global__ void __launch_bounds__(kGemvWarps * kWarp) moeDownRows(const float* __restrict__ act,
                                                                const __grid_constant__ MoeArgs m, int count,
                                                                int64_t inter, int64_t hid, float* __restrict__ out) {
  pdlBegin();
  const ExpertPtrs* ex = m.inl ? m.exInl : m.ex;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t h = int64_t(blockIdx.x) * kGemvWarps + warp;
  if (h >= hid) return;
  const float prev = m.assign || lane != 0 ? 0.0f : out[h];  // loaded now, added at the end
  float total = 0.0f;
  for (int j = 0; j < count; j++)
    total += downRowTerm<T>(act, m, ex, j, h, inter, lane);
  if (lane == 0) out[h] = prev + total;
}

// Many experts: grid (hid): one block per output row h, warp w takes experts w, w + 8, ...; the 8 partial sums are added in a
// fixed order (deterministic). At most 40 registers (6 blocks per SM instead of 5 at its natural 48: the Qwen3 shape's
// 2048 blocks take fewer waves; measured faster on the H200, docs/benchmarks.md "Session 7"; 8 blocks spill).
template <int T>
__global__ void __launch_bounds__(kGemvWarps * kWarp, 6) moeDown(const float* __restrict__ act, const __grid_constant__ MoeArgs m,
                                                            int count, int64_t inter, int64_t hid,
                                                            float* __restrict__ out) {
  __shared__ float part[kGemvWarps];
  pdlBegin();
  const ExpertPtrs* ex = m.inl ? m.exInl : m.ex;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t h = blockIdx.x;
  const float prev = m.assign || threadIdx.x != 0 ? 0.0f : out[h];  // loaded now, added at the end
  float total = 0.0f;
  for (int j = warp; j < count; j += kGemvWarps)
    total += downRowTerm<T>(act, m, ex, j, h, inter, lane);
  if (lane == 0) part[warp] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
#pragma unroll
    for (int k = 0; k < kGemvWarps; k++) t += part[k];
    out[h] = prev + t;
  }
}

// ---------------------------------------------------------------- KV cache blocks (kv/kv_codec.h)

// The calling warp's row of a block (one warp per row: K rows [0, rows), then V rows [rows, 2 rows)): its index r
// (also its scale's), length, first element in its f32 tensor and first payload byte. False when the warp has none.
__device__ __forceinline__ bool kvWarpRow(const KVBlockArgs& a, int64_t* r, int64_t* dim, int64_t* elem0,
                                          int64_t* payload0) {
  *r = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (*r >= (a.vDim > 0 ? 2 : 1) * a.rows) return false;
  const bool isV = *r >= a.rows;
  const int64_t rr = isV ? *r - a.rows : *r;
  *dim = isV ? a.vDim : a.kDim;
  *elem0 = rr * *dim;
  const int es = a.type == kKVF32 ? 4 : a.type == kKVInt8 ? 1 : 2;
  *payload0 = (isV ? a.vOffset : 0) + rr * *dim * es;
  return true;
}

__device__ __forceinline__ uint16_t bf16Bits(float f) {  // core/dtype.h's f32ToBf16
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// One warp per row (K rows, then V rows).
__global__ void kvEncodeKernel(const KVBlockArgs a, const float* __restrict__ k, const float* __restrict__ v,
                               uint8_t* __restrict__ dst) {
  pdlBegin();
  int64_t r, dim, e0, p0;
  if (!kvWarpRow(a, &r, &dim, &e0, &p0)) return;
  const int lane = threadIdx.x % kWarp;
  const float* x = (r >= a.rows ? v : k) + e0;
  uint8_t* out = dst + p0;
  switch (a.type) {
    case kKVF32:
      for (int64_t d = lane; d < dim; d += kWarp) reinterpret_cast<float*>(out)[d] = x[d];
      break;
    case kKVF16:
      for (int64_t d = lane; d < dim; d += kWarp) reinterpret_cast<__half*>(out)[d] = __float2half_rn(x[d]);
      break;
    case kKVBF16:
      for (int64_t d = lane; d < dim; d += kWarp) reinterpret_cast<uint16_t*>(out)[d] = bf16Bits(x[d]);
      break;
    default: {  // int8, symmetric per row
      float amax = 0.0f;
      for (int64_t d = lane; d < dim; d += kWarp) amax = fmaxf(amax, fabsf(x[d]));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const float scale = amax / 127.0f;
      const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
      for (int64_t d = lane; d < dim; d += kWarp)
        reinterpret_cast<int8_t*>(out)[d] = int8_t(fminf(fmaxf(rintf(x[d] * inv), -127.0f), 127.0f));
      if (lane == 0) {  // the scales' offset need not be 4-byte aligned
        const uint32_t bits = __float_as_uint(scale);
        uint8_t* sp = dst + a.scaleOffset + r * 4;
        for (int b = 0; b < 4; b++) sp[b] = uint8_t(bits >> (8 * b));
      }
    }
  }
}

__global__ void kvDecodeKernel(const KVBlockArgs a, const uint8_t* __restrict__ src, float* __restrict__ k,
                               float* __restrict__ v) {
  pdlBegin();
  int64_t r, dim, e0, p0;
  if (!kvWarpRow(a, &r, &dim, &e0, &p0)) return;
  const int lane = threadIdx.x % kWarp;
  float* y = (r >= a.rows ? v : k) + e0;
  const uint8_t* in = src + p0;
  switch (a.type) {
    case kKVF32:
      for (int64_t d = lane; d < dim; d += kWarp) y[d] = reinterpret_cast<const float*>(in)[d];
      break;
    case kKVF16:
      for (int64_t d = lane; d < dim; d += kWarp) y[d] = __half2float(reinterpret_cast<const __half*>(in)[d]);
      break;
    case kKVBF16:
      for (int64_t d = lane; d < dim; d += kWarp) y[d] = bf16ToF32(reinterpret_cast<const uint16_t*>(in)[d]);
      break;
    default: {
      const uint8_t* sp = src + a.scaleOffset + r * 4;
      const float scale = __uint_as_float(uint32_t(sp[0]) | uint32_t(sp[1]) << 8 | uint32_t(sp[2]) << 16 |
                                          uint32_t(sp[3]) << 24);
      for (int64_t d = lane; d < dim; d += kWarp) y[d] = float(reinterpret_cast<const int8_t*>(in)[d]) * scale;
    }
  }
}

unsigned blocksFor(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

thread_local LaunchSink* tSink = nullptr;

// Every kernel launch goes through here: cudaLaunchKernel, or the calling thread's LaunchSink (graph recording)
// with the same arguments. The arguments are converted to the kernel's parameter types first, so that the sink
// sees exactly the bytes the kernel would get.
template <typename... P, typename... A>
void launch(void (*f)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A&&... a) {
  static_assert(sizeof...(P) == sizeof...(A), "launch: argument count differs from the kernel's");
  std::tuple<std::decay_t<P>...> v{static_cast<std::decay_t<P>>(a)...};
  std::apply(
      [&](auto&... e) {
        void* args[] = {static_cast<void*>(&e)...};
        if (tSink) {
          const size_t sizes[] = {sizeof(e)...};
          tSink->kernel(reinterpret_cast<const void*>(f), grid, block, smem, args, sizes, int(sizeof...(P)));
        } else {
          cudaLaunchKernel(reinterpret_cast<const void*>(f), grid, block, args, smem, s);
        }
      },
      v);
}

template <int NT>
void launchGemvRow(const float* x, int n, const MatW& w, const float* bias, float* y, bool add, bool vec,
                   cudaStream_t s) {
  const dim3 grid(unsigned((w.out + kGemvWarps - 1) / kGemvWarps)), block(kGemvWarps * kWarp);
#define DOPPLER_GEMV(T)                                                                                       \
  if (vec && add) launch(gemvRow<T, NT, true, true>, grid, block, 0, s, x, n, w.data, w.out, w.in, bias, y);     \
  else if (vec) launch(gemvRow<T, NT, true, false>, grid, block, 0, s, x, n, w.data, w.out, w.in, bias, y);      \
  else if (add) launch(gemvRow<T, NT, false, true>, grid, block, 0, s, x, n, w.data, w.out, w.in, bias, y);      \
  else launch(gemvRow<T, NT, false, false>, grid, block, 0, s, x, n, w.data, w.out, w.in, bias, y);
  switch (w.type) {
    case kF32: DOPPLER_GEMV(kF32) break;
    case kF16: DOPPLER_GEMV(kF16) break;
    case kBF16: DOPPLER_GEMV(kBF16) break;
    case kMXFP4:
      launch(gemvMxfp4<NT>, grid, block, 0, s, x, n, static_cast<const uint8_t*>(w.data), w.out, w.in, bias, y, add);
      break;
  }
#undef DOPPLER_GEMV
}

template <int NT>
void launchGemvCol(const float* x, int n, const MatW& w, const float* bias, float* y, bool add, cudaStream_t s) {
  launch(gemvCol<NT>, unsigned((w.out + kColOut - 1) / kColOut), kColOut * kColSlices, 0, s, x, n, w, bias, y, add);
}

}  // namespace

void setLaunchSink(LaunchSink* sink) { tSink = sink; }

cudaError_t matmul(const float* x, int64_t n, const MatW& w, const float* bias, float* y, cudaStream_t s, bool add) {
  if (n <= 0 || w.out <= 0) return cudaSuccess;
  if (n <= 8) {
    const int ni = int(n);
    if (!w.column) {
      const int es = w.type == kF32 ? 4 : 2;
      const bool vec = w.type != kMXFP4 && w.in % 8 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(x) % 16 == 0 && (w.in * es) % 16 == 0;
      if (n == 1) launchGemvRow<1>(x, ni, w, bias, y, add, vec, s);
      else if (n == 2) launchGemvRow<2>(x, ni, w, bias, y, add, vec, s);
      else if (n <= 4) launchGemvRow<4>(x, ni, w, bias, y, add, vec, s);
      else launchGemvRow<8>(x, ni, w, bias, y, add, vec, s);
    } else {
      if (n == 1) launchGemvCol<1>(x, ni, w, bias, y, add, s);
      else if (n <= 4) launchGemvCol<4>(x, ni, w, bias, y, add, s);
      else launchGemvCol<8>(x, ni, w, bias, y, add, s);
    }
  } else {
    if (add) return cudaErrorInvalidValue;  // the GEMV's store only (the caller adds a GEMM's product itself)
    const dim3 grid(unsigned((w.out + kBN - 1) / kBN), unsigned((n + kBM - 1) / kBM));
    if (w.column) launch(gemmTiled<true>, grid, 256, 0, s, x, n, w, bias, y);
    else launch(gemmTiled<false>, grid, 256, 0, s, x, n, w, bias, y);
  }
  return cudaGetLastError();
}

cudaError_t matmulMany(const float* x, int64_t in, int type, MultiGemv m, cudaStream_t s) {
  int64_t blocks = 0;
  for (int j = 0; j < m.count; j++) {
    m.firstBlock[j] = blocks;
    blocks += (m.out[j] + kGemvWarps - 1) / kGemvWarps;
  }
  if (blocks <= 0) return cudaSuccess;
  const dim3 grid{unsigned(blocks)}, block{unsigned(kGemvWarps * kWarp)};
  switch (type) {
    case kF32: launch(gemvRowMulti<kF32>, grid, block, 0, s, x, in, m); break;
    case kF16: launch(gemvRowMulti<kF16>, grid, block, 0, s, x, in, m); break;
    default: launch(gemvRowMulti<kBF16>, grid, block, 0, s, x, in, m); break;
  }
  return cudaGetLastError();
}

cudaError_t embed(const MatW& table, const EmbedArgs& e, int64_t n, float* out, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  launch(embedKernel, unsigned(n), 256, 0, s, table, e, table.in, out);
  return cudaGetLastError();
}

cudaError_t rmsNorm(float* x, const float* add, int64_t rows, int64_t dim, const float* w, float eps, float* y,
                    cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  launch(rmsNormKernel, unsigned(rows), dim >= 1024 ? 512 : 128, 0, s, x, add, dim, w, eps, y);
  return cudaGetLastError();
}

cudaError_t layerNorm(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, float eps, float* y,
                      cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  launch(layerNormKernel, unsigned(rows), dim >= 1024 ? 512 : 128, 0, s, x, dim, w, b, eps, y);
  return cudaGetLastError();
}

cudaError_t rope(float* x, int64_t n, int64_t heads, int64_t headDim, const RopeArgs& r, int64_t rotDim,
                 float attentionScale, bool interleaved, cudaStream_t s) {
  const int64_t half = rotDim / 2, total = n * heads * half;
  if (total <= 0) return cudaSuccess;
  launch(ropeKernel, blocksFor(total, 256), 256, 0, s, x, n, heads, headDim, r, half, attentionScale,
                                                    interleaved);
  return cudaGetLastError();
}

cudaError_t qkNormRope(float* q, float* k, int64_t n, int64_t qHeads, int64_t kHeads, int64_t headDim,
                       const float* qNorm, const float* kNorm, float eps, const RopeArgs& r, int64_t rotDim,
                       float attentionScale, bool interleaved, cudaStream_t s) {
  if (n <= 0 || qHeads + kHeads <= 0) return cudaSuccess;
  const unsigned threads = unsigned(std::min<int64_t>(1024, std::max<int64_t>(32, (headDim + 31) / 32 * 32)));
  launch(qkNormRopeKernel, dim3(unsigned(qHeads + kHeads), unsigned(n)), threads, size_t(headDim) * sizeof(float),
         s, q, k, qHeads, kHeads, headDim, qNorm, kNorm, eps, r, rotDim / 2, attentionScale, interleaved);
  return cudaGetLastError();
}

cudaError_t attention(const float* q, int64_t n, const AttnArgs& a, float* out, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  const size_t smem = size_t(a.headDim + kAttnWarps * a.vDim) * sizeof(float);
  auto run = [&](auto kernel) {
    if (smem > 48 * 1024) {
      cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
      if (e != cudaSuccess) return e;
    }
    launch(kernel, dim3(unsigned(a.numHeads), unsigned(n)), kAttnWarps * kWarp, smem, s, q, a, out);
    return cudaSuccess;
  };
  const bool regs = a.headDim <= 4 * kWarp && a.vDim <= 4 * kWarp;  // head dims up to 128: the register path
  const cudaError_t e = regs ? run(attentionKernel<4>) : run(attentionKernel<0>);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

cudaError_t moeExperts(const float* x, const MoeArgs& experts, int count, int type, int64_t inter, int64_t hidden,
                       float limit, float alpha, float* act, float* out, cudaStream_t s) {
  if (count <= 0) return cudaSuccess;
  const dim3 g1(unsigned((inter + kGemvWarps - 1) / kGemvWarps), unsigned(count));
  const bool rows = count < 4;
  const unsigned g2 = rows ? unsigned((hidden + kGemvWarps - 1) / kGemvWarps) : unsigned(hidden);
  const size_t smem = experts.logits ? size_t(experts.numExperts + 2 * experts.topK) * sizeof(float) : 0;
#define DOPPLER_MOE(T)                                                                                        \
  launch(moeGateUp<T>, g1, kGemvWarps * kWarp, smem, s, x, experts, inter, hidden, limit, alpha, act);   \
  if (rows) launch(moeDownRows<T>, g2, kGemvWarps * kWarp, 0, s, act, experts, count, inter, hidden, out); \
  else launch(moeDown<T>, g2, kGemvWarps * kWarp, 0, s, act, experts, count, inter, hidden, out);
  switch (type) {
    case kF32: DOPPLER_MOE(kF32) break;
    case kF16: DOPPLER_MOE(kF16) break;
    default: DOPPLER_MOE(kBF16) break;
  }
#undef DOPPLER_MOE
  return cudaGetLastError();
}

cudaError_t splitBf16x3(const float* x, int64_t count, uint16_t* parts, cudaStream_t s) {
  if (count <= 0) return cudaSuccess;
  launch(splitBf16x3Kernel, unsigned(std::min<int64_t>(blocksFor(count, 256), 4096)), 256, 0, s, x, count, parts);
  return cudaGetLastError();
}

cudaError_t sumParts(const float* p, int64_t count, int64_t out, const float* bias, float* y, cudaStream_t s) {
  if (count <= 0) return cudaSuccess;
  launch(sumPartsKernel, unsigned(std::min<int64_t>(blocksFor(count, 256), 4096)), 256, 0, s, p, count, out, bias, y);
  return cudaGetLastError();
}

cudaError_t initRows(float* y, int64_t n, int64_t out, const float* bias, cudaStream_t s) {
  if (n <= 0 || out <= 0) return cudaSuccess;
  launch(initRowsKernel, unsigned(std::min<int64_t>(blocksFor(n * out, 256), 4096)), 256, 0, s, y, n, out, bias);
  return cudaGetLastError();
}

cudaError_t gatherRows(const float* src, const int64_t* rows, int64_t count, int64_t dim, float* dst, cudaStream_t s) {
  if (count <= 0 || dim <= 0) return cudaSuccess;
  launch(gatherRowsKernel, dim3(unsigned(count), blocksFor(dim, 256)), 256, 0, s, src, rows, dim, dst);
  return cudaGetLastError();
}

cudaError_t scatterAddRows(const float* src, const int64_t* rows, const float* w, int64_t count, int64_t dim,
                           float* dst, cudaStream_t s) {
  if (count <= 0 || dim <= 0) return cudaSuccess;
  launch(scatterAddRowsKernel, dim3(unsigned(count), blocksFor(dim, 256)), 256, 0, s, src, rows, w, dim, dst);
  return cudaGetLastError();
}

int argmaxBlocks(int64_t n) { return int(std::clamp<int64_t>((n + 2047) / 2048, 1, kArgmaxMaxBlocks)); }

cudaError_t argmax(const float* x, int64_t rows, int64_t n, float* pv, int* pi, unsigned* counter, int32_t* out,
                   cudaStream_t s) {
  if (rows <= 0 || n <= 0) return cudaSuccess;
  launch(argmaxKernel, dim3(unsigned(argmaxBlocks(n)), unsigned(rows)), 256, 0, s, x, n, pv, pi, counter, out);
  return cudaGetLastError();
}

cudaError_t sample(const float* x, int64_t n, const SampleArgs& a, float* pv, int* pi, unsigned* counter,
                   int32_t* out, cudaStream_t s) {
  if (n <= 0 || a.topK < 1 || a.topK > kMaxSampleTopK || !(a.temperature > 0)) return cudaErrorInvalidValue;
  launch(sampleKernel, unsigned(argmaxBlocks(n)), 256, 0, s, x, n, a, pv, pi, counter, out);
  return cudaGetLastError();
}

cudaError_t kvEncode(const KVBlockArgs& a, const float* k, const float* v, uint8_t* dst, cudaStream_t s) {
  const int64_t rows = (a.vDim > 0 ? 2 : 1) * a.rows;
  if (rows <= 0) return cudaSuccess;
  launch(kvEncodeKernel, blocksFor(rows, 8), 256, 0, s, a, k, v, dst);
  return cudaGetLastError();
}

cudaError_t kvDecode(const KVBlockArgs& a, const uint8_t* src, float* k, float* v, cudaStream_t s) {
  const int64_t rows = (a.vDim > 0 ? 2 : 1) * a.rows;
  if (rows <= 0) return cudaSuccess;
  launch(kvDecodeKernel, blocksFor(rows, 8), 256, 0, s, a, src, k, v);
  return cudaGetLastError();
}

cudaError_t swiglu(const float* gate, const float* up, int64_t n, float limit, float alpha, float* out,
                   cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  launch(swigluKernel, blocksFor(n, 256), 256, 0, s, gate, up, n, limit, alpha, out);
  return cudaGetLastError();
}

cudaError_t copyDevice(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  if (bytes == 0) return cudaSuccess;
  const bool vec = (reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src) | bytes) % 16 == 0;
  const int64_t units = vec ? int64_t(bytes / 16) : int64_t(bytes);
  launch(copyKernel, unsigned(std::min<int64_t>(blocksFor(units, 256), 1024)), 256, 0, s,
         static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), int64_t(bytes), vec);
  return cudaGetLastError();
}

cudaError_t axpy(float a, const float* x, int64_t n, float* y, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  launch(axpyKernel, blocksFor(n, 256), 256, 0, s, a, x, n, y);
  return cudaGetLastError();
}

cudaError_t fill(float* y, int64_t n, float v, cudaStream_t s) {
  if (n <= 0) return cudaSuccess;
  launch(fillKernel, blocksFor(n, 256), 256, 0, s, y, n, v);
  return cudaGetLastError();
}

}  // namespace doppler::cuda

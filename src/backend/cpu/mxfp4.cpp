#include "backend/cpu/mxfp4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace doppler::cpu {

const float kE2M1Values[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                               -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

namespace {
constexpr int64_t kBlock = 32;      // values per block
constexpr int64_t kBlockBytes = 17; // scale byte + 16 bytes of codes
}  // namespace

float e8m0Scale(uint8_t e) { return std::ldexp(1.0f, int(e) - 127); }

void dequantizeMxfp4Block(const uint8_t* block, float* out) {
  const float s = e8m0Scale(block[0]);
  for (int i = 0; i < 16; i++) {
    const uint8_t b = block[1 + i];
    out[2 * i] = kE2M1Values[b & 0x0f] * s;
    out[2 * i + 1] = kE2M1Values[b >> 4] * s;
  }
}

void dequantizeMxfp4(const void* w, int64_t rows, int64_t cols, float* out) {
  check(cols % kBlock == 0, "mxfp4: a row of {} values is not a whole number of 32-value blocks", cols);
  const auto* p = static_cast<const uint8_t*>(w);
  const int64_t blocks = rows * (cols / kBlock);
  for (int64_t b = 0; b < blocks; b++) dequantizeMxfp4Block(p + b * kBlockBytes, out + b * kBlock);
}

namespace {
// Nearest E2M1 code for v (already divided by the block scale); ties go to the even code.
uint8_t encodeE2M1(float v) {
  const float a = std::fabs(v);
  int best = 0;
  float bestErr = INFINITY;
  for (int c = 0; c < 8; c++) {
    const float err = std::fabs(a - kE2M1Values[c]);
    if (err < bestErr || (err == bestErr && c % 2 == 0)) {
      best = c;
      bestErr = err;
    }
  }
  return uint8_t(best | (std::signbit(v) && best != 0 ? 8 : 0));
}
}  // namespace

void quantizeMxfp4(const float* x, int64_t rows, int64_t cols, uint8_t* out) {
  check(cols % kBlock == 0, "mxfp4: a row of {} values is not a whole number of 32-value blocks", cols);
  const int64_t blocks = rows * (cols / kBlock);
  for (int64_t b = 0; b < blocks; b++) {
    const float* v = x + b * kBlock;
    uint8_t* o = out + b * kBlockBytes;
    float amax = 0;
    for (int64_t i = 0; i < kBlock; i++) amax = std::max(amax, std::fabs(v[i]));
    int e = 0;  // biased E8M0 exponent
    if (amax > 0 && std::isfinite(amax)) e = std::clamp(int(std::floor(std::log2(amax))) - 2 + 127, 0, 254);
    o[0] = uint8_t(e);
    const float inv = 1.0f / e8m0Scale(uint8_t(e));
    for (int i = 0; i < 16; i++)
      o[1 + i] = uint8_t(encodeE2M1(v[2 * i] * inv) | (encodeE2M1(v[2 * i + 1] * inv) << 4));
  }
}

namespace {

// dot(x[0..32), block values) without the scale.
inline float blockDot(const uint8_t* codes, const float* x) {
  float acc[4] = {0, 0, 0, 0};
  for (int i = 0; i < 16; i += 2) {
    const uint8_t b0 = codes[i], b1 = codes[i + 1];
    acc[0] += kE2M1Values[b0 & 0x0f] * x[2 * i];
    acc[1] += kE2M1Values[b0 >> 4] * x[2 * i + 1];
    acc[2] += kE2M1Values[b1 & 0x0f] * x[2 * i + 2];
    acc[3] += kE2M1Values[b1 >> 4] * x[2 * i + 3];
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

bool overlaps(const void* a, size_t abytes, const void* b, size_t bbytes) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bbytes && pb < pa + abytes;
}

}  // namespace

void matmulMxfp4(const float* x, int64_t n, const WeightView& w, const float* bias, float* y, ThreadPool& pool) {
  check(w.dtype == DType::MXFP4, "matmul mxfp4: weight dtype is {}, expected mxfp4", dtypeName(w.dtype));
  check(w.shape.size() == 2, "matmul mxfp4: weight shape {} is not a matrix", shapeString(w.shape));
  check(w.layout == Layout::Row, "matmul mxfp4: weight [{}, {}] is column-major; mxfp4 weights are row-major only",
        w.rows(), w.cols());
  const int64_t out = w.rows(), in = w.cols();
  check(out > 0 && in > 0 && in % kBlock == 0,
        "matmul mxfp4: weight shape [{}, {}] needs positive dims and an input dim that is a multiple of 32", out,
        in);
  check(n >= 0, "matmul mxfp4: x has {} rows, expected >= 0", n);
  if (n == 0) return;
  check(x && w.data && y, "matmul mxfp4: null x, weight or y");
  check(!overlaps(y, size_t(n * out) * 4, x, size_t(n * in) * 4), "matmul mxfp4: y [{}, {}] overlaps x [{}, {}]", n,
        out, n, in);
  const auto* W = static_cast<const uint8_t*>(w.data);
  const int64_t blocksPerRow = in / kBlock, rowBytes = blocksPerRow * kBlockBytes;

  if (n == 1) {  // GEMV: stream each row's blocks once
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / in);
    pool.parallelFor(
        out,
        [&](int64_t o0, int64_t o1) {
          for (int64_t o = o0; o < o1; o++) {
            const uint8_t* row = W + o * rowBytes;
            float acc = 0;
            for (int64_t b = 0; b < blocksPerRow; b++) {
              const uint8_t* blk = row + b * kBlockBytes;
              acc += e8m0Scale(blk[0]) * blockDot(blk + 1, x + b * kBlock);
            }
            y[o] = acc + (bias ? bias[o] : 0.0f);
          }
        },
        grain);
    return;
  }

  // GEMM: each thread dequantises one weight row at a time into f32 and reuses it for all n rows of x.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / (in * n));
  pool.parallelFor(
      out,
      [&](int64_t o0, int64_t o1) {
        std::vector<float> wr(static_cast<size_t>(in));  // [in]
        for (int64_t o = o0; o < o1; o++) {
          dequantizeMxfp4(W + o * rowBytes, 1, in, wr.data());
          const float b = bias ? bias[o] : 0.0f;
          for (int64_t r = 0; r < n; r++) {
            const float* xr = x + r * in;
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            int64_t i = 0;
            for (; i + 8 <= in; i += 8)
              for (int k = 0; k < 8; k++) acc[k] += wr[size_t(i + k)] * xr[i + k];
            float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            for (; i < in; i++) s += wr[size_t(i)] * xr[i];
            y[r * out + o] = s + b;
          }
        }
      },
      grain);
}

}  // namespace doppler::cpu

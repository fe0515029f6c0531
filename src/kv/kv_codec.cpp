#include "kv/kv_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kv/kv_codec_internal.h"

namespace doppler::kv {

size_t BlockFormat::elemSize() const {
  switch (dtype) {
    case KVDType::F32: return 4;
    case KVDType::F16: return 2;
    case KVDType::BF16: return 2;
    case KVDType::Int8: return 1;
  }
  return 4;
}

namespace {

// One tensor (K or V) of a block: x [T, H, dim] f32 <-> payload.
void encodeTensor(KVDType dt, const float* x, int64_t T, int64_t H, int64_t dim, uint8_t* payload, float* scales) {
  const size_t n = size_t(T * H * dim);
  switch (dt) {
    case KVDType::F32:
      std::memcpy(payload, x, n * 4);
      return;
    case KVDType::F16:
      f32ToF16Array(x, reinterpret_cast<uint16_t*>(payload), n);
      return;
    case KVDType::BF16: {
      auto* d = reinterpret_cast<uint16_t*>(payload);
      for (size_t i = 0; i < n; i++) d[i] = f32ToBf16(x[i]);
      return;
    }
    case KVDType::Int8: {
      auto* q = reinterpret_cast<int8_t*>(payload);
      for (int64_t th = 0; th < T * H; th++) {  // one scale per (token, head) row
        const float* r = x + th * dim;
        float amax = 0;
        for (int64_t d = 0; d < dim; d++) amax = std::max(amax, std::fabs(r[d]));
        const float scale = amax / 127.0f;
        scales[th] = scale;
        const float inv = scale > 0 ? 1.0f / scale : 0.0f;
        int8_t* o = q + th * dim;
        for (int64_t d = 0; d < dim; d++) o[d] = int8_t(std::clamp(std::nearbyint(r[d] * inv), -127.0f, 127.0f));
      }
      return;
    }
  }
}

void decodeTensor(KVDType dt, const uint8_t* payload, const float* scales, int64_t T, int64_t H, int64_t dim,
                  float* x) {
  const size_t n = size_t(T * H * dim);
  switch (dt) {
    case KVDType::F32:
      std::memcpy(x, payload, n * 4);
      return;
    case KVDType::F16:
      f16ToF32Array(reinterpret_cast<const uint16_t*>(payload), x, n);
      return;
    case KVDType::BF16: {
      const auto* s = reinterpret_cast<const uint16_t*>(payload);
      for (size_t i = 0; i < n; i++) {
        uint32_t u = uint32_t(s[i]) << 16;
        std::memcpy(x + i, &u, 4);
      }
      return;
    }
    case KVDType::Int8: {
      const auto* q = reinterpret_cast<const int8_t*>(payload);
      for (int64_t th = 0; th < T * H; th++) {
        const float s = scales[th];
        const int8_t* r = q + th * dim;
        float* o = x + th * dim;
        for (int64_t d = 0; d < dim; d++) o[d] = float(r[d]) * s;
      }
      return;
    }
  }
}

}  // namespace

void encodeBlock(const BlockFormat& f, const float* k, const float* v, uint8_t* dst) {
  std::vector<float> scales(f.scaleCount());
  float* sc = f.scaleCount() ? scales.data() : nullptr;
  const int64_t rows = f.tokens * f.heads;
  encodeTensor(f.dtype, k, f.tokens, f.heads, f.kDim, dst, sc);
  if (f.vDim > 0) encodeTensor(f.dtype, v, f.tokens, f.heads, f.vDim, dst + f.vOffset(), sc ? sc + rows : nullptr);
  if (sc) std::memcpy(dst + f.scaleOffset(), sc, f.scaleCount() * sizeof(float));
}

void decodeBlock(const BlockFormat& f, const uint8_t* src, float* k, float* v) {
  std::vector<float> scales(f.scaleCount());
  float* sc = nullptr;
  if (f.scaleCount()) {  // the payload offset of the scales need not be 4-byte aligned: copy them out
    std::memcpy(scales.data(), src + f.scaleOffset(), f.scaleCount() * sizeof(float));
    sc = scales.data();
  }
  const int64_t rows = f.tokens * f.heads;
  decodeTensor(f.dtype, src, sc, f.tokens, f.heads, f.kDim, k);
  if (f.vDim > 0) decodeTensor(f.dtype, src + f.vOffset(), sc ? sc + rows : nullptr, f.tokens, f.heads, f.vDim, v);
}

}  // namespace doppler::kv

// Storage formats of one KV block and the conversions between them and f32.
//
// A block of B tokens of one layer (H kv heads, key dim D, value dim VD) is one byte buffer:
//   K payload [B, H, D] in the element type, then V payload [B, H, VD], then for int8
//   K scales [B, H] f32 and V scales [B, H] f32 (absent when VD == 0).
// int8 is symmetric per token and head within the block: scale[t, h] = max |x[t, h, :]| / 127,
// q = round(x / scale) in [-127, 127], x' = q * scale. (One scale per block and head was measured first: its
// worst logit error on the qwen3_moe fixture was 6.7e-2, over the 5e-2 bound; per token it costs 4 bytes per
// head_dim bytes.)
#pragma once
#include <cstddef>
#include <cstdint>

#include "kv/kv_cache.h"

namespace doppler::kv {

struct BlockFormat {
  KVDType dtype = KVDType::F32;
  int64_t tokens = 0, heads = 0, kDim = 0, vDim = 0;

  size_t elemSize() const;                 // 4, 2, 2, 1
  size_t kElems() const { return size_t(tokens * heads * kDim); }
  size_t vElems() const { return size_t(tokens * heads * vDim); }
  size_t vOffset() const { return kElems() * elemSize(); }
  size_t scaleOffset() const { return vOffset() + vElems() * elemSize(); }
  size_t scaleCount() const { return dtype == KVDType::Int8 ? size_t(tokens * heads) * (vDim > 0 ? 2 : 1) : 0; }
  size_t bytes() const { return scaleOffset() + scaleCount() * sizeof(float); }
};

// k [tokens, H, D] and v [tokens, H, VD] (f32) -> dst (fmt.bytes() bytes). v may be null when VD == 0.
void encodeBlock(const BlockFormat& fmt, const float* k, const float* v, uint8_t* dst);
// src (fmt.bytes() bytes) -> k [tokens, H, D], v [tokens, H, VD] (f32).
void decodeBlock(const BlockFormat& fmt, const uint8_t* src, float* k, float* v);

}  // namespace doppler::kv

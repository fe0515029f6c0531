// The KV cache interface the model writes to and attention reads from. Attention consumes the cache as a
// list of contiguous chunks, so a paged or tiered cache (blocks in device memory, spilled blocks in host
// RAM, compressed blocks decoded into scratch) implements the same interface.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace doppler {

struct KVLayerShape {
  int64_t kvHeads = 0;
  int64_t headDim = 0;  // key dim per head
  int64_t vDim = 0;     // value dim per head
};

class KVCache {
 public:
  virtual ~KVCache() = default;
  virtual int64_t capacity() const = 0;  // tokens
  // Store keys k [n, kvHeads, headDim] and values v [n, kvHeads, vDim] of `layer` for positions [pos, pos + n).
  virtual void write(int layer, int64_t pos, int64_t n, const float* k, const float* v) = 0;
  // Chunks covering positions [0, end) of `layer`, in position order, valid until the next write.
  virtual void chunks(int layer, int64_t end, std::vector<KVChunk>& out) = 0;
};

// One contiguous array per layer and per K/V, sized for `capacity` tokens, in the backend's device tier.
std::unique_ptr<KVCache> makeContiguousKVCache(Backend& backend, const std::vector<KVLayerShape>& layers,
                                               int64_t capacity);

}  // namespace doppler

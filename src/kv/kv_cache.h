// The KV cache interface the model writes to and attention reads from. Attention consumes the cache as a
// list of contiguous f32 chunks with an online softmax, so a paged or tiered cache (blocks in device memory,
// spilled blocks in host RAM, compressed blocks decoded into scratch) implements the same interface.
//
// Two implementations:
//   makeContiguousKVCache: one f32 array per layer sized for the whole context (the original cache).
//   makePagedKVCache:      fixed-size blocks of tokens per layer with a block table, a device-tier budget
//                          (the most recent blocks), spill of the oldest blocks to a host-tier budget,
//                          sliding-window freeing, and f32 / f16 / bf16 / int8 storage (docs/kv-cache.md).
#pragma once
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/backend.h"

namespace doppler {

struct KVLayerShape {
  int64_t kvHeads = 0;
  int64_t headDim = 0;  // key dim per head
  int64_t vDim = 0;     // value dim per head (0: the layer stores keys only, e.g. deepseek MLA's latent)
  int64_t window = 0;   // sliding window of this layer in tokens (query p sees keys (p - window, p]); 0 = full
};

// Storage format of KV blocks. int8: symmetric, one f32 scale per token and kv head for K and one for V.
enum class KVDType : uint8_t { F32, F16, BF16, Int8 };
std::string_view kvDTypeName(KVDType t);  // "f32" | "f16" | "bf16" | "int8"
// Parses "f32" | "f16" | "bf16" | "int8"; Error naming `what` (e.g. "--kv-dtype") and the choices otherwise.
KVDType parseKVDType(std::string_view s, std::string_view what = "kv dtype");

// Which blocks are stored in the KV dtype: all sealed (full) blocks, or only the ones spilled to the host
// (device blocks then stay f32). The block being filled is always f32 on the device.
enum class KVCompress : uint8_t { All, Spilled };
std::string_view kvCompressName(KVCompress c);  // "all" | "spilled"
KVCompress parseKVCompress(std::string_view s, std::string_view what = "kv compress");

inline constexpr uint64_t kKVUnlimited = UINT64_MAX;

struct PagedKVOptions {
  int64_t blockTokens = 16;              // tokens per block
  uint64_t deviceBytes = kKVUnlimited;   // device-tier budget for KV blocks (--kv-vram)
  uint64_t hostBytes = kKVUnlimited;     // host-tier budget for spilled blocks (--kv-ram); 0 = no spill
  KVDType dtype = KVDType::F32;          // --kv-dtype
  KVCompress compress = KVCompress::All; // --kv-compress
};

// Bytes one token occupies in a sealed block of `dtype`, summed over layers: sum of
// kvHeads * (headDim + vDim) * size(dtype), plus for int8 the scales (kvHeads * (1 + (vDim > 0)) * 4 per layer).
double kvBytesPerToken(const std::vector<KVLayerShape>& layers, KVDType dtype, int64_t blockTokens);

struct KVTierStats {
  int64_t blocks = 0;      // live blocks in the tier
  int64_t tokens = 0;      // tokens those blocks hold
  uint64_t bytes = 0;      // bytes those blocks occupy (counted against the tier's budget)
  uint64_t peakBytes = 0;  // largest `bytes` seen
};

// Counters of one paged cache, or shared by every cache an Engine makes (then blocks/tokens/bytes are the
// sum over live caches and the transfer counters accumulate over all of them).
struct KVStats {
  // configuration (set by the cache that uses these stats)
  int64_t blockTokens = 0;
  KVDType dtype = KVDType::F32;
  KVCompress compress = KVCompress::All;
  uint64_t deviceBudget = kKVUnlimited, hostBudget = kKVUnlimited;
  double deviceBytesPerToken = 0, hostBytesPerToken = 0;  // sealed blocks in each tier (kvBytesPerToken)

  KVTierStats device, host;
  int64_t spilledBlocks = 0;        // device -> host moves
  uint64_t spilledBytes = 0;        // bytes written to the host tier by those moves
  int64_t restoredBlocks = 0;       // host blocks streamed back to the device for attention
  uint64_t restoredBytes = 0;       // bytes copied host -> device for that
  int64_t decodedBlocks = 0;        // compressed blocks decoded to f32 for attention (either tier)
  int64_t windowFreedBlocks = 0;    // blocks freed because they left a sliding window
  uint64_t stagingBytes = 0;        // device scratch for restored / decoded blocks (not in the budget)
  uint64_t peakStagingBytes = 0;
};

// {"block_tokens", "dtype", "compress", "device": {budget_bytes, blocks, tokens, bytes, peak_bytes,
//  bytes_per_token}, "host": {...}, "spilled_blocks", "spilled_bytes", "spill_restored_blocks",
//  "spill_restored_bytes", "decoded_blocks", "window_freed_blocks", "staging_bytes", "peak_staging_bytes"}.
// Unlimited budgets are null.
nlohmann::json kvStatsJson(const KVStats& s);

class KVCache {
 public:
  virtual ~KVCache() = default;
  virtual int64_t capacity() const = 0;  // tokens
  // Store keys k [n, kvHeads, headDim] and values v [n, kvHeads, vDim] of `layer` for positions [pos, pos + n).
  // The paged cache needs pos <= the layer's current length (pos < length rewinds: later tokens are dropped).
  virtual void write(int layer, int64_t pos, int64_t n, const float* k, const float* v) = 0;
  // write() without the copy: stores positions [pos, pos + n) of `layer` and sets *k, *v to the device rows
  // [n, kvHeads, headDim] and [n, kvHeads, vDim] that hold them; the caller's next ops must fill them (in the
  // backend's issue order) before anything reads the layer. False, with nothing changed, when those rows are not
  // two plain f32 ranges (then use write()). The default: false.
  virtual bool writeInPlace(int layer, int64_t pos, int64_t n, float** k, float** v) { return false; }
  // Chunks covering positions [0, end) of `layer`, in position order (a sliding-window layer may leave out
  // blocks that left the window), valid until the next write() or chunks() call.
  virtual void chunks(int layer, int64_t end, std::vector<KVChunk>& out) = 0;
  // Tokens stored for `layer` (the paged cache; -1 when the implementation does not track it).
  virtual int64_t length(int layer) const { return -1; }
  // The cache's counters, or nullptr when it keeps none.
  virtual const KVStats* stats() const { return nullptr; }
};

// One contiguous array per layer and per K/V, sized for `capacity` tokens, in the backend's device tier.
std::unique_ptr<KVCache> makeContiguousKVCache(Backend& backend, const std::vector<KVLayerShape>& layers,
                                               int64_t capacity);

// The paged, tiered cache (docs/kv-cache.md). `stats` may be shared between caches (an Engine's
// aggregate); nullptr gives the cache its own. Error on bad options (block size < 1, shapes <= 0).
// Writes that find no room in any tier throw Error naming the context length reached and the budgets.
std::unique_ptr<KVCache> makePagedKVCache(Backend& backend, const std::vector<KVLayerShape>& layers,
                                          int64_t capacity, const PagedKVOptions& opts,
                                          std::shared_ptr<KVStats> stats = nullptr);

}  // namespace doppler

// Tier statistics as the CLI prints them (--stats) and writes them (--stats-json); docs/tiers.md documents
// every key.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>

namespace doppler {

struct TierStats {
  uint64_t budgetBytes = 0;    // the tier's budget
  uint64_t peakBytes = 0;      // high-water mark of the tier's pool (its allocator's own count)
  uint64_t residentBytes = 0;  // bytes held now
  uint64_t hits = 0;           // requests served by this tier without a load from the slower one
  uint64_t misses = 0;         // requests that needed a load from the slower tier
  uint64_t bytesIn = 0;        // bytes copied into this tier (from the slower tier)
  uint64_t bytesOut = 0;       // bytes this tier supplied to the faster tier
  uint64_t evictions = 0;      // units dropped to make room
  nlohmann::json toJson() const;
};

struct PrefetchStats {
  uint64_t issued = 0;     // loads started by a prefetch (not already resident)
  uint64_t used = 0;       // prefetched units acquired before being evicted
  uint64_t wasted = 0;     // prefetched units evicted without being used
  uint64_t pending = 0;    // prefetched units not used yet (neither used nor wasted)
  uint64_t dropped = 0;    // prefetch requests not issued (stale, or no room without evicting hotter units)
  uint64_t late = 0;       // prefetched units still loading when acquired (the compute thread waited)
  // Router-based prediction of the next layer's experts, scored against the experts the layer then used.
  uint64_t predicted = 0;         // (layer, expert) pairs predicted
  uint64_t predictedCorrect = 0;  // of those, used by that layer
  uint64_t actual = 0;            // (layer, expert) pairs used in layers that had a prediction
  nlohmann::json toJson() const;  // adds precision = correct/predicted, recall = correct/actual
};

}  // namespace doppler

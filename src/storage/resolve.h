// MODEL arguments served by the store (engine/model_source.cpp asks here first):
//   http(s)://.../manifest.json (or the directory URL)  pulled into the cache the first time; later runs use
//                                                       the cache alone (no request to the origin) and fetch
//                                                       only files that are missing or fail verification
//   ID or ID@REV                                        a model pulled before (`doppler cache ls`)
// A lazy resolution (runs that page weights) fetches the tokenizer files and the shards that hold dense
// tensors up front, and every other shard (routed experts only) on its first use, through the returned fetcher.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "format/rdrr_reader.h"
#include "storage/swarm.h"

namespace doppler {

// True for a URL, or for a non-empty argument that is not an existing path (then a cache id).
bool isStoreModelArg(const std::string& arg);

struct LazyFetchStats {
  std::atomic<uint64_t> shards{0}, bytes{0};  // expert shards fetched on first use
  std::atomic<uint64_t> deferred{0};          // shards left for later when the model was opened
};

struct StoreModel {
  std::string dir;                        // the model's RDRR directory inside <cacheRoot>/store
  ShardFetcher fetcher;                   // lazy: fetches a missing shard into the store (else null)
  std::shared_ptr<LazyFetchStats> stats;  // lazy: what the fetcher did (else null)
};

// Resolves to the model's RDRR directory inside <cacheRoot>/store, pulling or healing what is missing (lazy:
// only the dense shards and tokenizer files; see above). The model stays leased (gc will not evict it) until
// the process exits. quiet: no progress on stderr. Error if an id is unknown ("<arg>: no such model
// directory, and no model '<arg>' in the cache (...)").
// swarm: with peers (or LSD/DHT), files (dense shards now, experts on first use) come from the swarm first and
// from the model's origin after, unless noOrigin (docs/swarm.md); the swarm session lives as long as the fetcher.
struct StoreSwarmOptions {
  SwarmOptions swarm;
  bool noOrigin = false;
  bool enabled() const { return !swarm.peers.empty() || swarm.lsd || swarm.dht; }
};
StoreModel resolveStoreModel(const std::string& arg, const std::string& cacheRoot, bool quiet, bool lazy = false,
                             const StoreSwarmOptions& swarm = {});

// The shards that hold at least one tensor other than a routed expert's (the ones a lazy pull fetches first).
std::vector<bool> denseShards(const Manifest& m);

}  // namespace doppler

// Where a model comes from: an RDRR directory, a Hugging Face checkpoint directory (converted once into the
// cache and reused), or nothing (the embedded default model).
#pragma once
#include <memory>
#include <string>

#include "format/rdrr_reader.h"
#include "storage/resolve.h"

namespace doppler {

// The cache root: `override` if non-empty, else $DOPPLER_CACHE, else $XDG_CACHE_HOME/doppler, else
// ~/.cache/doppler.
std::string cacheRoot(const std::string& override = "");

// The embedded default model (a small trained Qwen3-MoE code model shipped in the repository's models/).
std::string defaultModelDir();

// Resolves a MODEL argument to an RDRR directory: an RDRR dir is returned as is; a Hugging Face dir
// (config.json + safetensors) is converted into <cacheRoot>/converted/<key>.rdrr the first time (key:
// hash of its absolute path, file sizes and modification times) and reused after; "" means the default
// model. `log` receives one line when a conversion happens. Errors name the path and what is missing.
std::string resolveModel(const std::string& arg, const std::string& cacheDir, bool quiet = false);

// The same, and for a model served by the shard store with `lazy` (runs that page weights), only the dense
// shards are fetched now: `fetcher` fetches the others on first use (storage/resolve.h).
struct ResolvedModel {
  std::string dir;
  ShardFetcher fetcher;                   // null unless lazy and served by the store
  std::shared_ptr<LazyFetchStats> lazy;   // what the fetcher did
};
ResolvedModel resolveModelLazily(const std::string& arg, const std::string& cacheDir, bool quiet, bool lazy,
                                 const StoreSwarmOptions& swarm = {});

bool isRdrrDir(const std::string& dir);
bool isHfDir(const std::string& dir);

}  // namespace doppler

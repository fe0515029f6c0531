// An opened model ready to run: RDRR reader + weights provider + backend + model forward.
// Every command that runs a model (run, eval, later serve/bench) opens it through here, so options such as
// budgets apply the same way everywhere.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "format/rdrr_reader.h"
#include "kv/kv_cache.h"
#include "loader/weights.h"
#include "model/model.h"
#include "storage/resolve.h"

namespace doppler {

struct EngineOptions {
  std::string cacheDir;  // "" = default cache root (engine/model_source.h)
  int threads = 0;       // 0 = one per core
  bool quiet = false;    // no progress lines on stderr
  // --backend (issue #8): "cpu", "cuda" or "auto" (cuda when a GPU is usable). On cuda every weight lives in
  // the device tier: resident when it fits (--vram defaults to the GPU's free memory), else paged.
  std::string backend = "cpu";
  // KV cache (issue #7, docs/kv-cache.md): paged blocks, device budget, spill to host, compression.
  uint64_t kvVram = kKVUnlimited;          // --kv-vram: device-tier bytes for KV blocks
  uint64_t kvRam = kKVUnlimited;           // --kv-ram: host-tier bytes for spilled KV blocks (0 = no spill)
  KVDType kvDtype = KVDType::F32;          // --kv-dtype
  KVCompress kvCompress = KVCompress::All; // --kv-compress
  int64_t kvBlock = 16;                    // --kv-block: tokens per KV block
  // Weight tiers (issue #4, docs/tiers.md). With neither budget every weight stays resident (mmap), no paging;
  // with either, weights are paged through budgeted tiers (the other budget defaults from detected capacity).
  std::optional<uint64_t> vram;            // --vram: bytes of weights in the device tier
  std::optional<uint64_t> ram;             // --ram: bytes of weights in the host tier
  bool prefetch = true;                    // asynchronous loads of needed/predicted experts and the next layer
  // Hybrid expert execution (issue #8, docs/tiers.md): on a GPU with paged experts, the host CPU computes some of
  // the missed experts straight from host RAM while the GPU copies and runs the rest (--no-hybrid: copy all).
  bool hybrid = true;
  bool printStats = false;                 // --stats: print the run statistics (stderr) after the command
  std::string statsJson;                   // --stats-json PATH: write them as JSON
  std::string tracePath;                   // --trace PATH: a timeline of the run (core/trace.h), written at the end
  // The swarm tier (issue #6, docs/swarm.md): peers for a model served by the store (--peer, --no-origin, ...).
  StoreSwarmOptions swarm;
};

class TieredWeights;
struct ForwardCounters;
struct LazyFetchStats;

class Engine {
 public:
  // MODEL: RDRR dir, Hugging Face dir (converted once into the cache) or "" (the embedded default model).
  static std::unique_ptr<Engine> open(const std::string& modelArg, const EngineOptions& opts);
  ~Engine();

  const std::string& dir() const { return dir_; }
  const RdrrModel& rdrr() const { return *rdrr_; }
  const ModelConfig& config() const { return rdrr_->config(); }
  Model& model() { return *model_; }
  Backend& backend() { return *backend_; }
  // A paged KV cache with the options' budgets; its counters add up in stats()["kv"].
  std::unique_ptr<KVCache> newKVCache(int64_t capacityTokens);
  // Run statistics: "tiers" {device, host, disk}, "prefetch", "stall_seconds", "placement", "weights",
  // "tokens", "forward_seconds", "tokens_per_second" (docs/tiers.md), "kv" (kvStatsJson: blocks/tokens/bytes per
  // tier, spill counters), "store" (lazily pulled models: shards deferred and fetched on first use).
  nlohmann::json stats() const;
  // The tiered weight provider, nullptr when weights are resident (no budgets given).
  TieredWeights* tiers() const { return tiered_; }

 private:
  Engine() = default;
  std::string dir_;
  std::unique_ptr<RdrrModel> rdrr_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Backend> hostBackend_;     // hybrid execution: the CPU beside a GPU backend
  std::unique_ptr<WeightProvider> weights_;
  std::unique_ptr<Model> model_;
  EngineOptions opts_;
  std::shared_ptr<KVStats> kvStats_ = std::make_shared<KVStats>();
  TieredWeights* tiered_ = nullptr;          // weights_ when it is tiered
  std::shared_ptr<LazyFetchStats> lazy_;     // shards fetched on first use (a lazily pulled model), else null
  std::shared_ptr<ForwardCounters> speed_;  // tokens and seconds spent in Model::forward
};

}  // namespace doppler

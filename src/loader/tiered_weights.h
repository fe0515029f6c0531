// WeightProvider over an RDRR model with budgeted tiers (issue #4, docs/tiers.md): the placement plan
// (loader/placement.h) decides what is resident in the device tier; routed experts, and the dense layers when
// they do not fit, are paged through the tier cache (loader/tier_cache.h). Weights are read with pread into
// budgeted buffers, never mmapped, so the process's memory stays within the budgets.
#pragma once
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "format/rdrr_reader.h"
#include "loader/placement.h"
#include "loader/tier_cache.h"
#include "loader/weights.h"

namespace doppler {

struct TieredOptions {
  uint64_t deviceBudget = 0;  // bytes of weights in the device tier (--vram)
  uint64_t hostBudget = 0;    // bytes of weights in the host tier (--ram)
  uint64_t diskBudget = 0;    // reported only (the RDRR shards are the disk tier)
  bool prefetch = true;       // asynchronous loads of needed and predicted experts / the next streamed layer
  bool hybrid = false;        // splitExperts may give experts in host RAM to the host CPU (GPU backends)
  // With hybrid execution, predicted experts are not copied ahead (a wrong guess, ~40 % of them on random
  // routing, holds the link that the layer's own misses need, while the CPU could have computed them);
  // DOPPLER_HYBRID_PREDICT=1 turns the predictions back on.
  bool hybridPredict = false;
  // With hybrid execution, an expert may also run jointly: gate/up on the CPU while down is copied and run on the
  // device (DOPPLER_HYBRID_JOINT=0 turns it off).
  bool hybridJoint = true;
  double halfLifeSteps = 0;   // see TierCacheOptions
  // See TierCacheOptions::hostReserveBytes; -1: 1 GiB on a backend with its own device memory (pinned host
  // memory is slow to get), none on a host-visible one.
  int64_t hostReserveBytes = -1;
};

class TieredWeights final : public WeightProvider {
 public:
  // Plans placement (Error when a budget is below the minimum working set) and loads the resident weights.
  TieredWeights(const RdrrModel& model, Backend& backend, const TieredOptions& opts);
  ~TieredWeights() override;

  bool has(const std::string& name) const override { return model_.has(name); }
  WeightView tensor(const std::string& name) override;
  ExpertLease acquireExpert(int layer, int expert) override;
  void prefetchExperts(int layer, std::span<const int64_t> experts, PrefetchHint hint) override;
  // Hybrid execution: experts in device memory (or on their way) stay on the device; of those only in host RAM,
  // the hottest are copied and the rest computed by the host CPU, so that the copies (at the measured
  // host-to-device rate) and the CPU (at its measured rate) finish together. Experts only on disk are loaded.
  ExpertSplit splitExperts(int layer, std::span<const int64_t> experts) override;
  void reportHostCompute(uint64_t experts, uint64_t bytes, double seconds) override;
  bool wantsExpertPredictions() const override {
    return opts_.prefetch && !allExpertsLoaded_ && (!opts_.hybrid || opts_.hybridPredict);
  }
  // Loads every routed expert into the device tier now (Error when they do not fit); afterwards nothing is
  // paged, so no predictions are asked for. The GPU engine calls it when the device budget holds everything.
  void loadAllExperts();
  bool expertsResident() const override { return allExpertsLoaded_; }
  bool allResident() const override { return !plan_.denseStreamed && (plan_.expertCount == 0 || allExpertsLoaded_); }
  LayerLease acquireLayer(int layer) override;
  void prefetchLayer(int layer) override;

  const TierPlan& plan() const { return plan_; }
  TierCache& cache() { return *cache_; }
  TierCacheStats cacheStats() const { return cache_->stats(); }
  // {"tiers": {"device": {...}, "host": {...}, "disk": {...}}, "prefetch": {...}, "stall_seconds": s,
  //  "placement": {...}} (docs/tiers.md lists the keys).
  nlohmann::json stats() const;

 private:
  WeightView viewOf(const Unit& u, const UnitTensor& t, const uint8_t* base) const;
  ExpertLease leaseOf(int unit, const uint8_t* base, WeightPin pin) const;
  void scorePrediction(int layer, std::span<const int64_t> experts);  // a Needed list against the last prediction
  int expertUnit(int layer, int expert) const;

  const RdrrModel& model_;
  TieredOptions opts_;
  TierPlan plan_;
  std::unique_ptr<TierCache> cache_;
  mutable std::mutex mu_;
  std::vector<std::vector<std::string>> requested_;  // [layer] streamed matrices the model asked for
  // Prediction scoring: what was predicted for each layer in the current pass.
  std::vector<std::set<int64_t>> predicted_;
  std::vector<bool> hasPrediction_;
  bool allExpertsLoaded_ = false;
  struct Hybrid {
    uint64_t hostExperts = 0, hostBytes = 0;  // computed by the host CPU
    double hostSeconds = 0;
    double hostRate = 0;                      // bytes/s, smoothed (0: not measured yet)
    uint64_t hostCalls = 0;                   // reportHostCompute calls
    uint64_t copiedExperts = 0;               // host-RAM misses the split sent to the device (copies)
    uint64_t diskExperts = 0;                 // misses only on disk (loaded for the device)
    uint64_t jointExperts = 0;                // gate/up on the host CPU, down copied and run on the device
  } hybrid_;
  std::vector<std::array<const UnitTensor*, 6>> expertTensors_;  // [unit] gate/up/down weight, gate/up/down bias
};

}  // namespace doppler

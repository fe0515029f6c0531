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
  double halfLifeSteps = 0;   // see TierCacheOptions
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
  bool wantsExpertPredictions() const override { return opts_.prefetch && !allExpertsLoaded_; }
  // Loads every routed expert into the device tier now (Error when they do not fit); afterwards nothing is
  // paged, so no predictions are asked for. The GPU engine calls it when the device budget holds everything.
  void loadAllExperts();
  bool expertsResident() const override { return allExpertsLoaded_; }
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
  int expertUnit(int layer, int expert) const;

  const RdrrModel& model_;
  TieredOptions opts_;
  TierPlan plan_;
  std::unique_ptr<TierCache> cache_;
  std::mutex mu_;
  std::vector<std::vector<std::string>> requested_;  // [layer] streamed matrices the model asked for
  // Prediction scoring: what was predicted for each layer in the current pass.
  std::vector<std::set<int64_t>> predicted_;
  std::vector<bool> hasPrediction_;
  bool allExpertsLoaded_ = false;
  std::vector<std::array<const UnitTensor*, 6>> expertTensors_;  // [unit] gate/up/down weight, gate/up/down bias
};

}  // namespace doppler

// Placement: which units stay resident in the device tier for the whole run and which are paged, decided up
// front from the budgets (docs/tiers.md):
//   - embeddings, head, final norm and every layer's dense group (attention, router, norms, shared experts,
//     dense FFN) go to the device tier when they fit beside a working set of top-k experts; routed experts
//     are paged at expert granularity;
//   - otherwise the dense groups are streamed layer by layer (at least one layer slot; with room for two, the
//     next layer loads while the current one computes) and only the small tensors (norms, biases, routers)
//     plus embeddings/head stay resident;
//   - a budget below the minimum working set is an Error stating how much is needed.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "format/rdrr_reader.h"
#include "loader/units.h"

namespace doppler {

struct TierPlan {
  bool denseStreamed = false;
  std::vector<Unit> units;
  std::vector<bool> resident;                 // per unit: pinned in the device tier for the whole run
  std::vector<int> denseUnit;                 // [layer] -> streamed dense unit, -1 when resident
  std::vector<std::vector<int>> expertUnit;   // [layer][expert] -> unit, -1 when absent
  std::map<std::string, std::pair<int, int>> byName;  // logical name -> (unit, tensor index); resident first
  int numLayers = 0;
  int64_t topK = 0;

  // Sizes (bytes as the pools account them).
  uint64_t residentBytes = 0;        // device bytes pinned for the whole run in the chosen mode
  uint64_t maxExpertBytes = 0, expertTotalBytes = 0, expertCount = 0;
  uint64_t maxDenseBytes = 0, denseTotalBytes = 0;
  uint64_t deviceMinimumResident = 0;  // working set with the dense groups resident
  uint64_t deviceMinimumStreamed = 0;  // working set with the dense groups streamed (the absolute minimum)
  uint64_t deviceMinimum = 0;          // of the chosen mode
  uint64_t hostMinimum = 0;            // the largest paged unit (staged through host RAM)
  uint64_t deviceCacheBytes = 0;       // device budget left for paged units
  std::string minimumBreakdown;        // how deviceMinimumStreamed is made up, for messages

  // One-line human summary ("dense resident in device (12.0 MiB), 24 experts of 1.1 MiB paged ...").
  std::string summary() const;
};

// Plans placement for the budgets. Error (one line, naming --vram / --ram and the bytes needed) when a budget
// is below the minimum working set; with check == false it plans whatever fits best and never fails (for
// `doppler info --tiers`).
TierPlan planTiers(const RdrrModel& m, uint64_t deviceBudget, uint64_t hostBudget, bool check = true);

}  // namespace doppler

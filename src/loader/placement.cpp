#include "loader/placement.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "core/size.h"
#include "memory/pool.h"

namespace doppler {

namespace {

struct GroupInfo {
  std::string name;
  UnitKind kind;
  int layer = -1, expert = -1;
};

// "layer.L.expert.E" / "layer.L.dense" / anything else (global).
GroupInfo classify(const std::string& g) {
  GroupInfo gi{g, UnitKind::Global};
  int L = -1, E = -1, n = 0;
  if (std::sscanf(g.c_str(), "layer.%d.expert.%d%n", &L, &E, &n) == 2 && size_t(n) == g.size()) {
    gi.kind = UnitKind::Expert;
    gi.layer = L;
    gi.expert = E;
  } else if (std::sscanf(g.c_str(), "layer.%d.dense%n", &L, &n) == 1 && size_t(n) == g.size()) {
    gi.kind = UnitKind::Dense;
    gi.layer = L;
  }
  return gi;
}

// Small tensors stay resident even when their layer streams: 1-D tensors (norms, biases, sinks, score
// biases) and routers (the prefetcher applies the next layer's router before that layer is loaded).
bool isSmall(const RdrrModel& m, const std::string& name) {
  const RdrrModel::Logical& l = m.logical(name);
  return l.shape.size() <= 1 || l.entries.front()->role == TensorRole::Router;
}

uint64_t acc(uint64_t b) { return TierPool::accounted(b); }

uint64_t mibCeil(uint64_t b) { return (b + (uint64_t(1) << 20) - 1) >> 20; }

}  // namespace

std::string TierPlan::summary() const {
  std::string s = denseStreamed
                      ? fmt::format("dense layers streamed ({} x {} per layer)", numLayers,
                                    formatSize(maxDenseBytes))
                      : fmt::format("dense weights resident in the device tier ({})", formatSize(denseTotalBytes));
  s += fmt::format("; {} resident in all", formatSize(residentBytes));
  if (expertCount)
    s += fmt::format("; {} routed experts of {} paged (device cache {}, about {} experts)", expertCount,
                     formatSize(maxExpertBytes), formatSize(deviceCacheBytes),
                     maxExpertBytes ? deviceCacheBytes / maxExpertBytes : 0);
  return s;
}

TierPlan planTiers(const RdrrModel& m, uint64_t deviceBudget, uint64_t hostBudget, bool checkBudgets) {
  const ModelConfig& cfg = m.config();
  TierPlan p;
  p.numLayers = int(cfg.numLayers);
  p.topK = cfg.numExperts > 0 ? cfg.topK : 0;

  std::vector<GroupInfo> groups;
  for (const auto& [g, _] : m.manifest().groups) groups.push_back(classify(g));

  // Sizes of both modes.
  uint64_t globals = 0, smallStreamed = 0, smallExperts = 0;
  std::vector<std::string> smallNamesStreamed, smallNamesExperts;
  for (const auto& gi : groups) {
    if (gi.kind == UnitKind::Global) globals += acc(makeGroupUnit(m, gi.name, gi.kind, -1, -1).bytes);
    if (gi.kind == UnitKind::Dense || gi.kind == UnitKind::Expert)
      for (const auto& n : groupTensorNames(m, gi.name))
        if (isSmall(m, n)) {
          if (gi.kind == UnitKind::Dense) smallNamesStreamed.push_back(n);
          else smallNamesExperts.push_back(n);
        }
    if (gi.kind == UnitKind::Dense) {
      uint64_t b = acc(makeGroupUnit(m, gi.name, gi.kind, gi.layer, -1).bytes);
      p.maxDenseBytes = std::max(p.maxDenseBytes, b);
      p.denseTotalBytes += b;
    } else if (gi.kind == UnitKind::Expert) {
      uint64_t b = acc(makeGroupUnit(m, gi.name, gi.kind, gi.layer, gi.expert).bytes);
      p.maxExpertBytes = std::max(p.maxExpertBytes, b);
      p.expertTotalBytes += b;
      p.expertCount++;
    }
  }
  if (!smallNamesExperts.empty())
    smallExperts = acc(makeTensorUnit(m, smallNamesExperts, UnitKind::Small, "small").bytes);
  {
    std::vector<std::string> all = smallNamesStreamed;
    all.insert(all.end(), smallNamesExperts.begin(), smallNamesExperts.end());
    if (!all.empty()) smallStreamed = acc(makeTensorUnit(m, all, UnitKind::Small, "small").bytes);
  }
  const uint64_t expertWorkingSet = uint64_t(p.topK) * p.maxExpertBytes;
  // One layer slot is the minimum (the next layer then loads after the current one is released); a second
  // slot, when the budget has room for it, lets the next layer's copy overlap the current layer's compute.
  const uint64_t slots = 1;
  const uint64_t residentA = globals + p.denseTotalBytes + smallExperts;
  const uint64_t residentB = globals + smallStreamed;
  p.deviceMinimumResident = residentA + expertWorkingSet;
  p.deviceMinimumStreamed = residentB + slots * p.maxDenseBytes + expertWorkingSet;
  p.minimumBreakdown = fmt::format("{} resident (embeddings, head, norms, routers) + {} streamed layer slot x {}",
                                   formatSize(residentB), slots, formatSize(p.maxDenseBytes));
  if (p.topK > 0)
    p.minimumBreakdown += fmt::format(" + top-{} experts x {}", p.topK, formatSize(p.maxExpertBytes));

  p.denseStreamed = deviceBudget < p.deviceMinimumResident && p.denseTotalBytes > 0;
  p.deviceMinimum = p.denseStreamed ? p.deviceMinimumStreamed : p.deviceMinimumResident;
  p.residentBytes = p.denseStreamed ? residentB : residentA;
  p.hostMinimum = std::max<uint64_t>({p.maxExpertBytes, p.denseStreamed ? p.maxDenseBytes : 0, uint64_t(64) << 10});
  if (checkBudgets) {
    check(deviceBudget >= p.deviceMinimum,
          "device budget (--vram) {} is below the minimum working set of {} ({} bytes): {}; give --vram {}M or more",
          formatSize(deviceBudget), formatSize(p.deviceMinimum), p.deviceMinimum, p.minimumBreakdown,
          mibCeil(p.deviceMinimum));
    check(hostBudget >= p.hostMinimum,
          "host budget (--ram) {} is below the minimum of {} ({} bytes): the largest paged unit ({}) is staged "
          "through host RAM; give --ram {}M or more",
          formatSize(hostBudget), formatSize(p.hostMinimum), p.hostMinimum,
          p.denseStreamed && p.maxDenseBytes >= p.maxExpertBytes ? "one layer's dense weights" : "one expert",
          mibCeil(p.hostMinimum));
  }
  p.deviceCacheBytes = deviceBudget > p.residentBytes ? deviceBudget - p.residentBytes : 0;

  // Units.
  p.denseUnit.assign(size_t(p.numLayers), -1);
  p.expertUnit.assign(size_t(p.numLayers), std::vector<int>(size_t(std::max<int64_t>(0, cfg.numExperts)), -1));
  auto add = [&](Unit u, bool resident) {
    p.units.push_back(std::move(u));
    p.resident.push_back(resident);
    return int(p.units.size()) - 1;
  };
  // Resident units first, so that byName prefers them for names held twice (small tensors of streamed groups).
  for (const auto& gi : groups)
    if (gi.kind == UnitKind::Global) add(makeGroupUnit(m, gi.name, gi.kind, -1, -1), true);
  {
    std::vector<std::string> small = p.denseStreamed ? smallNamesStreamed : std::vector<std::string>{};
    small.insert(small.end(), smallNamesExperts.begin(), smallNamesExperts.end());
    if (!small.empty()) add(makeTensorUnit(m, small, UnitKind::Small, "small"), true);
  }
  for (const auto& gi : groups) {
    if (gi.kind == UnitKind::Dense) {
      check(gi.layer >= 0 && gi.layer < p.numLayers, "{}: group {} is outside the model's {} layers", m.dir(),
            gi.name, p.numLayers);
      int id = add(makeGroupUnit(m, gi.name, gi.kind, gi.layer, -1), !p.denseStreamed);
      if (p.denseStreamed) p.denseUnit[size_t(gi.layer)] = id;
    }
  }
  for (const auto& gi : groups) {
    if (gi.kind == UnitKind::Expert) {
      check(gi.layer >= 0 && gi.layer < p.numLayers && gi.expert >= 0 && gi.expert < cfg.numExperts,
            "{}: group {} is outside the model's {} layers x {} experts", m.dir(), gi.name, p.numLayers,
            cfg.numExperts);
      p.expertUnit[size_t(gi.layer)][size_t(gi.expert)] = add(makeGroupUnit(m, gi.name, gi.kind, gi.layer, gi.expert), false);
    }
  }
  for (size_t u = 0; u < p.units.size(); u++)
    for (size_t t = 0; t < p.units[u].tensors.size(); t++) p.byName.emplace(p.units[u].tensors[t].name, std::pair{int(u), int(t)});
  return p;
}

}  // namespace doppler

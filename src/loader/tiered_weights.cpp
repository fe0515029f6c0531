#include "loader/tiered_weights.h"

#include <algorithm>

#include "core/error.h"

namespace doppler {

TieredWeights::TieredWeights(const RdrrModel& model, Backend& backend, const TieredOptions& opts)
    : model_(model), opts_(opts), plan_(planTiers(model, opts.deviceBudget, opts.hostBudget)) {
  TierCacheOptions co;
  co.prefetch = opts.prefetch;
  co.halfLifeSteps = opts.halfLifeSteps;
  co.diskBudget = opts.diskBudget;
  cache_ = std::make_unique<TierCache>(model_, backend, plan_, opts.deviceBudget, opts.hostBudget, co);
  requested_.resize(size_t(plan_.numLayers));
  // Each routed expert's tensors, looked up once: gate/up/down weights (required) and biases (optional).
  expertTensors_.resize(plan_.units.size());
  static const char* kSuffix[6] = {"gate.weight", "up.weight", "down.weight", "gate.bias", "up.bias", "down.bias"};
  for (int l = 0; l < plan_.numLayers; l++)
    for (size_t x = 0; x < plan_.expertUnit[size_t(l)].size(); x++) {
      const int ui = plan_.expertUnit[size_t(l)][x];
      if (ui < 0) continue;
      const std::string p = fmt::format("layers.{}.experts.{}.", l, x);
      for (int k = 0; k < 6; k++) {
        const UnitTensor* t = plan_.units[size_t(ui)].find(p + kSuffix[k]);
        check(t || k >= 3, "{}: expert {} of layer {} has no tensor {}{}", model_.dir(), x, l, p, kSuffix[k]);
        expertTensors_[size_t(ui)][size_t(k)] = t;
      }
    }
  predicted_.resize(size_t(plan_.numLayers));
  hasPrediction_.assign(size_t(plan_.numLayers), false);
}

TieredWeights::~TieredWeights() = default;

WeightView TieredWeights::viewOf(const Unit& u, const UnitTensor& t, const uint8_t* base) const {
  return WeightView{base ? base + t.offset : nullptr, t.dtype, t.shape, t.layout};
}

WeightView TieredWeights::tensor(const std::string& name) {
  auto it = plan_.byName.find(name);
  check(it != plan_.byName.end(), "{}: model has no tensor '{}'", model_.dir(), name);
  const auto [ui, ti] = it->second;
  const Unit& u = plan_.units[size_t(ui)];
  const UnitTensor& t = u.tensors[size_t(ti)];
  if (plan_.resident[size_t(ui)]) return viewOf(u, t, cache_->residentData(ui));
  if (u.kind == UnitKind::Dense) {
    std::lock_guard<std::mutex> lk(mu_);
    auto& req = requested_[size_t(u.layer)];
    if (std::find(req.begin(), req.end(), name) == req.end()) req.push_back(name);
    return viewOf(u, t, nullptr);  // bound per layer through acquireLayer
  }
  fail("tensor {} belongs to routed expert {} of layer {}, which the tier manager pages: acquire it with "
       "acquireExpert",
       name, u.expert, u.layer);
}

int TieredWeights::expertUnit(int layer, int expert) const {
  check(layer >= 0 && layer < plan_.numLayers, "{}: layer {} out of range (the model has {})", model_.dir(), layer,
        plan_.numLayers);
  const auto& row = plan_.expertUnit[size_t(layer)];
  check(expert >= 0 && size_t(expert) < row.size() && row[size_t(expert)] >= 0,
        "{}: layer {} has no routed expert {} ({} experts)", model_.dir(), layer, expert, row.size());
  return row[size_t(expert)];
}

ExpertLease TieredWeights::acquireExpert(int layer, int expert) {
  const int ui = expertUnit(layer, expert);
  cache_->advance(layer);
  const uint8_t* base = cache_->acquire(ui);
  ExpertLease e;
  e.pin = WeightPin([c = cache_.get(), ui] { c->release(ui); });
  const Unit& u = plan_.units[size_t(ui)];
  const auto& t = expertTensors_[size_t(ui)];  // found once at construction (names are not formatted per use)
  WeightView* views[6] = {&e.gate, &e.up, &e.down, &e.gateBias, &e.upBias, &e.downBias};
  for (int k = 0; k < 6; k++)
    if (t[size_t(k)]) *views[k] = viewOf(u, *t[size_t(k)], base);
  return e;
}

void TieredWeights::loadAllExperts() {
  for (int l = 0; l < plan_.numLayers; l++)
    for (size_t x = 0; x < plan_.expertUnit[size_t(l)].size(); x++)
      if (plan_.expertUnit[size_t(l)][x] >= 0) acquireExpert(l, int(x));  // loaded, then unpinned
  allExpertsLoaded_ = true;
}

void TieredWeights::prefetchExperts(int layer, std::span<const int64_t> experts, PrefetchHint hint) {
  if (layer < 0 || layer >= plan_.numLayers) return;
  if (hint == PrefetchHint::Needed) {
    cache_->advance(layer);
    if (hasPrediction_[size_t(layer)]) {
      uint64_t correct = 0;
      for (int64_t e : experts) correct += predicted_[size_t(layer)].count(e);
      cache_->recordPrediction(predicted_[size_t(layer)].size(), correct, experts.size());
      hasPrediction_[size_t(layer)] = false;
      predicted_[size_t(layer)].clear();
    }
  } else {
    predicted_[size_t(layer)] = std::set<int64_t>(experts.begin(), experts.end());
    hasPrediction_[size_t(layer)] = true;
  }
  if (!opts_.prefetch) return;
  std::vector<int> units;
  for (int64_t e : experts) units.push_back(expertUnit(layer, int(e)));
  cache_->prefetch(units, hint, layer);
}

LayerLease TieredWeights::acquireLayer(int layer) {
  check(layer >= 0 && layer < plan_.numLayers, "{}: layer {} out of range (the model has {})", model_.dir(), layer,
        plan_.numLayers);
  const int ui = plan_.denseUnit[size_t(layer)];
  if (ui < 0) return {};
  cache_->advance(layer);
  const uint8_t* base = cache_->acquire(ui);
  WeightPin pin([c = cache_.get(), ui] { c->release(ui); });
  const Unit& u = plan_.units[size_t(ui)];
  std::map<std::string, WeightView> views;
  for (const auto& t : u.tensors) views.emplace(t.name, viewOf(u, t, base));
  std::vector<std::string> required;
  {
    std::lock_guard<std::mutex> lk(mu_);
    required = requested_[size_t(layer)];
  }
  return LayerLease(layer, std::move(views), std::move(required), std::move(pin));
}

void TieredWeights::prefetchLayer(int layer) {
  if (!opts_.prefetch || layer < 0 || layer >= plan_.numLayers) return;
  const int ui = plan_.denseUnit[size_t(layer)];
  if (ui < 0) return;
  cache_->prefetchLayerUnit(ui, layer);
}

nlohmann::json TieredWeights::stats() const {
  TierCacheStats s = cache_->stats();
  nlohmann::json j;
  j["tiers"] = {{"device", s.device.toJson()}, {"host", s.host.toJson()}, {"disk", s.disk.toJson()}};
  j["prefetch"] = s.prefetch.toJson();
  j["stall_seconds"] = s.stallSeconds;
  auto gbps = [](uint64_t bytes, double sec) { return sec > 0 ? double(bytes) / sec / 1e9 : 0.0; };
  j["transfer"] = {{"host_to_device_seconds", s.copySeconds},
                   {"host_to_device_gb_per_s", gbps(s.copyBytes, s.copySeconds)},
                   {"disk_read_seconds", s.readSeconds},
                   {"disk_read_gb_per_s", gbps(s.readBytes, s.readSeconds)}};
  j["placement"] = {{"dense", plan_.denseStreamed ? "streamed" : "resident"},
                    {"resident_bytes", plan_.residentBytes},
                    {"device_minimum_bytes", plan_.deviceMinimum},
                    {"host_minimum_bytes", plan_.hostMinimum},
                    {"expert_bytes", plan_.maxExpertBytes},
                    {"experts", plan_.expertCount},
                    {"experts_on_device", s.deviceUnits},
                    {"units_on_host", s.hostUnits}};
  return j;
}

}  // namespace doppler

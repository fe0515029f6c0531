#include "loader/tiered_weights.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/trace.h"

namespace doppler {

TieredWeights::TieredWeights(const RdrrModel& model, Backend& backend, const TieredOptions& opts)
    : model_(model), opts_(opts), plan_(planTiers(model, opts.deviceBudget, opts.hostBudget)) {
  TierCacheOptions co;
  co.prefetch = opts.prefetch;
  co.halfLifeSteps = opts.halfLifeSteps;
  co.diskBudget = opts.diskBudget;
  co.hostReserveBytes = opts.hostReserveBytes >= 0 ? uint64_t(opts.hostReserveBytes)
                        : backend.hostVisible()    ? 0
                                                   : uint64_t(1) << 30;
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
  return leaseOf(ui, base, WeightPin([c = cache_.get(), ui] { c->release(ui); }));
}

ExpertLease TieredWeights::leaseOf(int ui, const uint8_t* base, WeightPin pin) const {
  ExpertLease e;
  e.pin = std::move(pin);
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
  if (!plan_.denseStreamed) cache_->releaseHostTier();  // nothing is paged from now on
}

void TieredWeights::scorePrediction(int layer, std::span<const int64_t> experts) {
  cache_->advance(layer);
  if (hasPrediction_[size_t(layer)]) {
    uint64_t correct = 0;
    for (int64_t e : experts) correct += predicted_[size_t(layer)].count(e);
    cache_->recordPrediction(predicted_[size_t(layer)].size(), correct, experts.size());
    hasPrediction_[size_t(layer)] = false;
    predicted_[size_t(layer)].clear();
  }
}

ExpertSplit TieredWeights::splitExperts(int layer, std::span<const int64_t> experts) {
  if (!opts_.hybrid || allExpertsLoaded_ || layer < 0 || layer >= plan_.numLayers)
    return WeightProvider::splitExperts(layer, experts);
  trace::Scope span("split experts", "hybrid");
  scorePrediction(layer, experts);
  ExpertSplit out;
  std::vector<int64_t> loading, disk;
  std::vector<std::pair<double, int64_t>> inHost;  // (heat, expert)
  double pending = 0;                              // bytes already queued for the link
  for (int64_t e : experts) {
    const int ui = expertUnit(layer, int(e));
    switch (cache_->where(ui)) {
      case TierCache::Where::Device: out.device.push_back(e); break;
      case TierCache::Where::Loading: loading.push_back(e); pending += double(plan_.units[size_t(ui)].bytes); break;
      case TierCache::Where::Host: inHost.emplace_back(cache_->heat(ui), e); break;
      case TierCache::Where::Disk: disk.push_back(e); pending += double(plan_.units[size_t(ui)].bytes); break;
    }
  }
  out.deviceReady = out.device.size();
  for (int64_t e : out.device) out.readyLeases.push_back(acquireExpert(layer, int(e)));  // pinned: at hand, no wait
  // Rates: host-to-device from the loader's copies so far (25 GB/s before the first), the CPU's from its expert
  // computations so far; until the CPU is measured, twice the link's, so that it gets experts and is measured.
  const double measured = cache_->copyRate();  // not stats(): that walks every unit and shard, once per layer here
  const double link = measured > 0 ? measured : 25e9;
  double cpu;
  {
    std::lock_guard<std::mutex> lk(mu_);
    cpu = hybrid_.hostRate > 0 ? hybrid_.hostRate : 2 * link;
  }
  // Hottest first to the device (they are likely to be used again there). Each expert takes the way that ends the
  // layer's work soonest, given what the link (tLink) and the CPU (tCpu) already have: copied whole, computed by
  // the CPU, or run jointly (gate/up on the CPU while down crosses the link; on Mixtral's shape, where the CPU reads
  // about twice as fast as the link copies, both sides then take about as long).
  std::stable_sort(inHost.begin(), inHost.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  double tLink = pending / link, tCpu = 0;
  std::vector<int64_t> copies;
  for (const auto& [heat, e] : inHost) {
    const int ui = expertUnit(layer, int(e));
    const Unit& unit = plan_.units[size_t(ui)];
    const double b = double(unit.bytes);
    const auto& tensors = expertTensors_[size_t(ui)];  // biases (gpt_oss) never reach the hybrid path; checked anyway
    const UnitTensor* down = tensors[2];
    const bool canJoin = opts_.hybridJoint && !tensors[3] && !tensors[4] && !tensors[5];
    const double bd = canJoin ? double(viewOf(unit, *down, nullptr).bytes()) : 0.0;
    const double viaLink = std::max(tLink + b / link, tCpu), viaCpu = std::max(tLink, tCpu + b / cpu);
    const double viaBoth = bd > 0 ? std::max(tLink + bd / link, tCpu + (b - bd) / cpu) : INFINITY;
    if (viaLink <= viaCpu && viaLink <= viaBoth) {
      copies.push_back(e);
      tLink += b / link;
      continue;
    }
    const uint8_t* base = cache_->acquireHost(ui);
    if (!base) {  // evicted from host RAM meanwhile: load it
      disk.push_back(e);
      continue;
    }
    if (viaCpu <= viaBoth) {
      out.host.push_back(e);
      out.hostLeases.push_back(leaseOf(ui, base, WeightPin([c = cache_.get(), ui] { c->releaseHost(ui); })));
      tCpu += b / cpu;
      continue;
    }
    int ticket;
    try {
      ticket = cache_->loadPart(ui, down->offset, uint64_t(bd));
    } catch (...) {
      cache_->releaseHost(ui);
      throw;
    }
    TierCache* c = cache_.get();
    JointExpert j;
    j.expert = e;
    j.host = leaseOf(ui, base, WeightPin([c, ui, ticket] {
                       c->releasePart(ticket);
                       c->releaseHost(ui);
                     }));
    j.down = [c, ticket, view = viewOf(unit, *down, nullptr)]() mutable {
      view.data = c->acquirePart(ticket);
      return view;
    };
    out.joint.push_back(std::move(j));
    tLink += bd / link;
    tCpu += (b - bd) / cpu;
  }
  for (auto* v : {&loading, &copies, &disk}) out.device.insert(out.device.end(), v->begin(), v->end());
  span.arg("on_device", double(out.deviceReady));
  span.arg("loading", double(loading.size()));
  span.arg("copied", double(copies.size()));
  span.arg("cpu", double(out.host.size()));
  span.arg("disk", double(disk.size()));
  span.arg("joint", double(out.joint.size()));
  {
    std::lock_guard<std::mutex> lk(mu_);
    hybrid_.jointExperts += out.joint.size();
    hybrid_.copiedExperts += copies.size();
    hybrid_.diskExperts += disk.size();
  }
  if (opts_.prefetch && out.device.size() > out.deviceReady) {
    std::vector<int> units;
    for (size_t i = out.deviceReady; i < out.device.size(); i++)
      units.push_back(expertUnit(layer, int(out.device[i])));
    cache_->prefetch(units, PrefetchHint::Needed, layer);
  }
  return out;
}

void TieredWeights::reportHostCompute(uint64_t experts, uint64_t bytes, double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  hybrid_.hostExperts += experts;
  hybrid_.hostBytes += bytes;
  hybrid_.hostSeconds += seconds;
  // The first computation pays for warm-up (threads, first touches): not a rate.
  if (seconds > 0 && bytes > 0 && hybrid_.hostCalls++ > 0) {
    const double r = double(bytes) / seconds;
    hybrid_.hostRate = hybrid_.hostRate > 0 ? 0.7 * hybrid_.hostRate + 0.3 * r : r;
  }
}

void TieredWeights::prefetchExperts(int layer, std::span<const int64_t> experts, PrefetchHint hint) {
  if (layer < 0 || layer >= plan_.numLayers) return;
  if (hint == PrefetchHint::Needed) {
    scorePrediction(layer, experts);
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
  if (opts_.hybrid) {
    std::lock_guard<std::mutex> lk(mu_);
    j["hybrid"] = {{"host_experts", hybrid_.hostExperts},
                   {"host_bytes", hybrid_.hostBytes},
                   {"host_seconds", hybrid_.hostSeconds},
                   {"host_gb_per_s", gbps(hybrid_.hostBytes, hybrid_.hostSeconds)},
                   {"copied_experts", hybrid_.copiedExperts},
                   {"disk_experts", hybrid_.diskExperts},
                   {"joint_experts", hybrid_.jointExperts}};
  }
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

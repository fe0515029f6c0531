#include "loader/weights.h"

#include <algorithm>
#include <fmt/format.h>

#include "core/error.h"

namespace doppler {

ExpertLease WeightProvider::acquireExpert(int layer, int expert) {
  const std::string p = fmt::format("layers.{}.experts.{}.", layer, expert);
  ExpertLease e;
  e.gate = tensor(p + "gate.weight");
  e.up = tensor(p + "up.weight");
  e.down = tensor(p + "down.weight");
  if (has(p + "gate.bias")) e.gateBias = tensor(p + "gate.bias");
  if (has(p + "up.bias")) e.upBias = tensor(p + "up.bias");
  if (has(p + "down.bias")) e.downBias = tensor(p + "down.bias");
  return e;
}

ExpertSplit WeightProvider::splitExperts(int layer, std::span<const int64_t> experts) {
  prefetchExperts(layer, experts, PrefetchHint::Needed);
  ExpertSplit s;
  s.device.assign(experts.begin(), experts.end());
  return s;
}

LayerLease::~LayerLease() {
  unbind();
  pin_.reset();
}

LayerLease& LayerLease::operator=(LayerLease&& o) noexcept {
  if (this != &o) {
    unbind();
    pin_.reset();
    layer_ = o.layer_;
    views_ = std::move(o.views_);
    required_ = std::move(o.required_);
    bound_ = std::move(o.bound_);
    o.bound_.clear();
    pin_ = std::move(o.pin_);
  }
  return *this;
}

void LayerLease::unbind() {
  for (auto& [v, name] : bound_) v->data = nullptr;
  bound_.clear();
}

void LayerLease::bind(WeightView& v, const std::string& name) const {
  auto it = views_.find(name);
  check(it != views_.end(), "layer {}: '{}' is not a streamed tensor of this layer", layer_, name);
  const WeightView& d = it->second;
  check(d.shape == v.shape && d.dtype == v.dtype && d.layout == v.layout,
        "layer {}: tensor {}: the model holds {} {} but the streamed copy is {} {}", layer_, name, shapeString(v.shape),
        dtypeName(v.dtype), shapeString(d.shape), dtypeName(d.dtype));
  v.data = d.data;
  bound_.emplace_back(&v, name);
}

void LayerLease::checkAllBound() const {
  for (const auto& name : required_) {
    bool ok = std::any_of(bound_.begin(), bound_.end(), [&](const auto& b) { return b.second == name; });
    check(ok,
          "layer {}: tensor {} is streamed but the model did not bind it (the architecture must bind it in "
          "bindLayer)",
          layer_, name);
  }
}

}  // namespace doppler

// What model code sees of the weights: ready views by canonical tensor name (see docs/rdrr.md for the
// naming). Model code never knows which tier or file a view came from.
//
// Paging (issue #4, docs/tiers.md): a tiered provider keeps routed experts, and the dense weights of layers
// that do not fit the device tier, in slower tiers and loads them on use. Model code therefore
//   - acquires each routed expert through acquireExpert(layer, expert): the lease pins the expert in the device
//     tier (it cannot be evicted) until the lease is destroyed;
//   - hints what it will need with prefetchExperts (the experts a layer routed to, and the predicted experts
//     of the next layer) so that loads overlap compute;
//   - acquires each layer through acquireLayer(layer) before running it: when the layer is streamed, the lease
//     pins the layer's dense matrices in the device tier and the model binds its views to them (tensor() gave
//     those views with data == nullptr). A resident provider returns an empty lease (nothing to do).
// The resident provider (loader/rdrr_weights.h) implements the defaults below: everything is always there.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace doppler {

// A pin on paged weights: released (the unit becomes evictable again) when destroyed or reset.
class WeightPin {
 public:
  WeightPin() = default;
  explicit WeightPin(std::function<void()> release) : release_(std::move(release)) {}
  ~WeightPin() { reset(); }
  WeightPin(WeightPin&& o) noexcept : release_(std::exchange(o.release_, nullptr)) {}
  WeightPin& operator=(WeightPin&& o) noexcept {
    if (this != &o) {
      reset();
      release_ = std::exchange(o.release_, nullptr);
    }
    return *this;
  }
  WeightPin(const WeightPin&) = delete;
  WeightPin& operator=(const WeightPin&) = delete;
  void reset() {
    if (auto r = std::exchange(release_, nullptr)) r();
  }
  explicit operator bool() const { return bool(release_); }

 private:
  std::function<void()> release_;
};

// One routed expert's weights, ready in the device tier for as long as the lease lives.
struct ExpertLease {
  WeightView gate, up, down;              // gate/up [I, hidden], down [hidden, I]
  WeightView gateBias, upBias, downBias;  // [I], [I], [hidden]; data == nullptr when the model has none
  WeightPin pin;
};

// The dense matrices of one streamed layer, pinned in the device tier while the lease lives.
class LayerLease {
 public:
  LayerLease() = default;
  LayerLease(int layer, std::map<std::string, WeightView> views, std::vector<std::string> required, WeightPin pin)
      : layer_(layer), views_(std::move(views)), required_(std::move(required)), pin_(std::move(pin)) {}
  ~LayerLease();  // unbinds (data = nullptr) every view bind() touched, then releases the pin
  LayerLease(LayerLease&&) noexcept = default;
  LayerLease& operator=(LayerLease&&) noexcept;
  LayerLease(const LayerLease&) = delete;
  LayerLease& operator=(const LayerLease&) = delete;

  // False for a resident layer (views already valid; nothing to bind).
  bool streamed() const { return bool(pin_); }
  int layer() const { return layer_; }
  // Points `v` (the view tensor(name) gave) at the device copy of `name`. Error when `name` is not a streamed
  // tensor of this layer, or its shape/dtype/layout differ from v's.
  void bind(WeightView& v, const std::string& name) const;
  // Error naming the first streamed tensor the model loaded (through tensor()) but did not bind: an
  // architecture that keeps matrices outside the standard LayerWeights fields must bind them itself.
  void checkAllBound() const;

 private:
  void unbind();
  int layer_ = -1;
  std::map<std::string, WeightView> views_;  // by logical name: device copies
  std::vector<std::string> required_;        // streamed tensors the model asked for
  mutable std::vector<std::pair<WeightView*, std::string>> bound_;
  WeightPin pin_;
};

enum class PrefetchHint : uint8_t {
  Needed,    // the layer routed to these experts and is about to run them (load them in this order)
  Predicted  // a prediction (the next layer's router applied to this layer's hidden state)
};

// A joint expert, run by both sides: the host CPU computes act = silu(gate x) * (up x) from host RAM while down's bytes are
// copied to the device, which then computes down act.
struct JointExpert {
  int64_t expert = 0;
  ExpertLease host;                  // views of the host-RAM copy; its pin also gives down's device copy back
  std::function<WeightView()> down;  // waits for down's device copy; valid while `host` is held
};

// Hybrid execution (issue #8, docs/tiers.md): which of a layer's selected experts the device runs, which the host
// CPU runs straight from host RAM, and which they run jointly.
struct ExpertSplit {
  std::vector<int64_t> device;  // run on the device: resident there, on their way, or queued for a copy now
  size_t deviceReady = 0;       // how many of `device` (its first entries) are in device memory already
  std::vector<ExpertLease> readyLeases;  // [deviceReady] those, pinned there (loads for the others evict nothing they need)
  std::vector<int64_t> host;    // run by the host CPU, from hostLeases
  std::vector<ExpertLease> hostLeases;  // [host.size()] views of the host-RAM copies (pinned there meanwhile)
  std::vector<JointExpert> joint;
};

class WeightProvider {
 public:
  virtual ~WeightProvider() = default;
  virtual bool has(const std::string& name) const = 0;
  // A view valid for the provider's lifetime. Throws Error naming the tensor when it is missing. A tiered
  // provider returns a streamed layer's matrices with data == nullptr (bind them through acquireLayer) and
  // throws for routed expert matrices (acquire them through acquireExpert).
  virtual WeightView tensor(const std::string& name) = 0;

  // Routed expert `expert` of `layer` ("layers.L.experts.E.{gate,up,down}.{weight,bias}"), pinned in the
  // device tier until the lease is destroyed. Default: views of tensor().
  virtual ExpertLease acquireExpert(int layer, int expert);
  // Asynchronous loads of experts the model expects to need (no-op for a resident provider).
  virtual void prefetchExperts(int layer, std::span<const int64_t> experts, PrefetchHint hint) {}
  // Decode with a host CPU beside the device: like prefetchExperts(layer, experts, Needed), but the provider may
  // give some of the experts to the host CPU (those in host RAM, when copying them would take longer than the CPU
  // computing them); it queues loads only for the device side. Default: everything on the device.
  virtual ExpertSplit splitExperts(int layer, std::span<const int64_t> experts);
  // The host CPU computed `bytes` of expert weights in `seconds` (feeds the split's cost model and the stats).
  virtual void reportHostCompute(uint64_t experts, uint64_t bytes, double seconds) {}
  // True when expert predictions are worth computing (the provider pages experts and prefetches).
  virtual bool wantsExpertPredictions() const { return false; }
  // True when every routed expert is in the device tier for good (nothing is paged), so model code may keep
  // expert leases for the whole run and route on the device.
  virtual bool expertsResident() const { return false; }
  // True when nothing is loaded, evicted or streamed during a forward (every weight stays where it is), so a
  // decode step may be replayed as a graph (Backend::beginStep).
  virtual bool allResident() const { return false; }
  // Pins layer `layer`'s streamed dense matrices (empty lease when the layer is resident), and a hint that
  // `layer` comes next.
  virtual LayerLease acquireLayer(int layer) { return {}; }
  virtual void prefetchLayer(int layer) {}
};

}  // namespace doppler

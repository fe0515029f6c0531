#include "loader/rdrr_weights.h"

#include "core/error.h"

namespace doppler {

WeightView ResidentRdrrWeights::tensor(const std::string& name) {
  std::lock_guard<std::mutex> lk(mu_);
  if (auto it = views_.find(name); it != views_.end()) return it->second;
  check(model_.has(name), "{}: model has no tensor '{}'", model_.dir(), name);
  WeightView v;
  if (auto mapped = model_.view(name)) {
    v = *mapped;
  } else {
    auto& buf = owned_[name] = model_.readTensor(name);
    v = WeightView{buf.data(), model_.dtype(name), model_.shape(name), model_.layout(name)};
  }
  views_[name] = v;
  return v;
}

}  // namespace doppler

// WeightProvider over an RDRR model with every tensor resident in host memory: zero-copy views into the
// mapped shards where the bytes lie contiguous, owned buffers (read once) otherwise. The tiered provider
// (expert paging) replaces this for budgeted runs.
#pragma once
#include <map>
#include <mutex>
#include <vector>

#include "format/rdrr_reader.h"
#include "loader/weights.h"

namespace doppler {

class ResidentRdrrWeights final : public WeightProvider {
 public:
  explicit ResidentRdrrWeights(const RdrrModel& model) : model_(model) {}
  bool has(const std::string& name) const override { return model_.has(name); }
  WeightView tensor(const std::string& name) override;
  bool allResident() const override { return true; }

 private:
  const RdrrModel& model_;
  std::mutex mu_;
  std::map<std::string, WeightView> views_;
  std::map<std::string, std::vector<uint8_t>> owned_;
};

}  // namespace doppler

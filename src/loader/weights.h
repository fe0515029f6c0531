// What model code sees of the weights: ready views by canonical tensor name (see docs/rdrr.md for the
// naming). Model code never knows which tier or file a view came from. The tiered implementation
// (expert paging, issue #4) implements the same interface.
#pragma once
#include <string>

#include "core/tensor.h"

namespace doppler {

class WeightProvider {
 public:
  virtual ~WeightProvider() = default;
  virtual bool has(const std::string& name) const = 0;
  // A view valid for the provider's lifetime (or until the next call for paged experts).
  // Throws Error naming the tensor when it is missing.
  virtual WeightView tensor(const std::string& name) = 0;
};

}  // namespace doppler

#include "core/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace doppler {

std::string_view layoutName(Layout l) { return l == Layout::Row ? "row" : "column"; }

std::string shapeString(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace doppler

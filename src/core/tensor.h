// Views of weights and activations. A view never owns memory.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace doppler {

// How a 2-D weight W[out, in] (the Hugging Face nn.Linear convention) lies in memory.
//   Row:    W[o * in + i]   (rows contiguous; the Hugging Face order)
//   Column: W[i * out + o]  (columns contiguous; a column slice W[:, a:b] is one contiguous byte range)
enum class Layout : uint8_t { Row, Column };
std::string_view layoutName(Layout l);  // "row" | "column"

struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // logical shape, e.g. [out, in] for a matrix, whatever the layout
  Layout layout = Layout::Row;

  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  size_t bytes() const { return size_t(dtypeBytes(dtype, uint64_t(numel()))); }  // block types too
  int64_t rows() const { return shape.empty() ? 0 : shape[0]; }              // out
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }          // in
};

std::string shapeString(const std::vector<int64_t>& shape);  // "[4096, 4096]"

}  // namespace doppler

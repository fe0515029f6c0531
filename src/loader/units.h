// Units of residency: the pieces of a model the tier manager places and moves whole. A unit is one buffer
// laid out as [bytes read from the shards][tensors reassembled from row-layout TP slices]; its tensors are views
// at fixed offsets inside it, so a unit copied to any tier is usable as is.
//   - a group unit is one RDRR group ("layer.L.expert.E", "layer.L.dense", "embedding", ...): ONE contiguous
//     pread of the group's span (an expert is read in one go; only its bytes);
//   - a tensor unit gathers chosen tensors (the small ones kept resident while their layers stream), one pread
//     per stored piece.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "format/rdrr_reader.h"

namespace doppler {

struct UnitTensor {
  std::string name;            // logical name
  uint64_t offset = 0;         // byte offset inside the unit buffer
  uint64_t bytes = 0;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;  // logical shape
  Layout layout = Layout::Row;
};

struct UnitRead {  // one pread: shard bytes [fileOffset, fileOffset + size) -> unit bytes [unitOffset, ...)
  int shard = 0;
  uint64_t fileOffset = 0, size = 0, unitOffset = 0;
};

struct UnitGather {  // rows copied inside the unit buffer (row-layout TP slice -> whole tensor)
  uint64_t src = 0, dst = 0;            // offsets of row 0
  uint64_t rows = 0, rowBytes = 0;
  uint64_t srcStride = 0, dstStride = 0;
};

enum class UnitKind : uint8_t {
  Global,  // embedding / head / final norm
  Small,   // small tensors kept resident: norms, biases, routers (when their layers stream)
  Dense,   // one layer's dense group (attention, router, shared experts, dense FFN, norms)
  Expert   // one routed expert
};
std::string_view unitKindName(UnitKind k);  // "global" | "small" | "dense" | "expert"

struct Unit {
  UnitKind kind = UnitKind::Global;
  int layer = -1, expert = -1;
  std::string label;             // group name, or "small"
  uint64_t bytes = 0;            // buffer size
  uint64_t readBytes = 0;        // bytes read from disk to fill it
  std::vector<UnitRead> reads;
  std::vector<UnitGather> gathers;
  std::vector<UnitTensor> tensors;
  const UnitTensor* find(const std::string& name) const;
};

// Logical tensor names stored in a group (fused tensors by their parts' names and their own).
std::vector<std::string> groupTensorNames(const RdrrModel& m, const std::string& group);
// The unit of a whole group.
Unit makeGroupUnit(const RdrrModel& m, const std::string& group, UnitKind kind, int layer, int expert);
// A unit holding the given logical tensors (each read on its own).
Unit makeTensorUnit(const RdrrModel& m, const std::vector<std::string>& names, UnitKind kind, const std::string& label);

// Fills a unit buffer in host memory: its reads (pread, cut into about one piece per reader of a pool of 8, at
// most pieceBytes each) and gathers. buf: [u.bytes]. The first failing piece's Error is thrown once every reader has stopped.
void readUnit(const RdrrModel& m, const Unit& u, uint8_t* buf, uint64_t pieceBytes = uint64_t(2) << 20);

}  // namespace doppler

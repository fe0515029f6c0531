// libFuzzer target: the safetensors header parser on arbitrary bytes (the input is the whole "file").
// Only doppler::Error may escape the parser; anything else (another exception, a sanitizer report, a trap on
// a broken invariant) is a finding.
#include <cstddef>
#include <cstdint>

#include "core/error.h"
#include "format/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    doppler::SafetensorsHeader h = doppler::parseSafetensorsHeader(data, size, "fuzz-input");
    // What the reader relies on after a successful parse: every range inside the input, ascending, disjoint,
    // and exactly numel * dtype size bytes long.
    if (h.dataStart < 8 || h.dataStart > size) __builtin_trap();
    uint64_t maxEnd = 0;
    for (const auto& t : h.tensors) {
      if (t.begin > t.end || t.end > size - h.dataStart) __builtin_trap();
      if (t.begin < maxEnd) __builtin_trap();
      if (t.end > maxEnd) maxEnd = t.end;
      uint64_t n = doppler::dtypeSize(t.dtype);
      for (int64_t d : t.shape) {
        if (d < 0) __builtin_trap();
        n *= uint64_t(d);
      }
      if (n != t.bytes()) __builtin_trap();
    }
  } catch (const doppler::Error&) {
  }
  return 0;
}

// libFuzzer target: the RDRR manifest parser (format/rdrr_manifest.h) on arbitrary bytes.
// Only doppler::Error may escape; anything else (another exception, a sanitizer report, a trap on a broken
// invariant below) is a finding. Seeds: fuzz/corpus/fuzz_manifest/ (manifests of converted fixture models).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "format/rdrr_manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    doppler::Manifest m = doppler::parseManifest(text, "fuzz-manifest");
    // What the reader relies on after a successful parse.
    for (const auto& [name, t] : m.tensors) {
      if (t.shard < 0 || size_t(t.shard) >= m.shards.size()) __builtin_trap();
      const auto& s = m.shards[size_t(t.shard)];
      if (t.offset > s.size || t.size > s.size - t.offset) __builtin_trap();
      uint64_t n = doppler::dtypeSize(t.dtype);
      for (int64_t d : t.shape) {
        if (d < 0) __builtin_trap();
        n *= uint64_t(d);
      }
      if (n != t.size) __builtin_trap();
      if (t.sliceCount < 1 || t.sliceIdx < 0 || t.sliceIdx >= t.sliceCount) __builtin_trap();
      if (!doppler::isSafeFileName(s.filename)) __builtin_trap();
    }
    // Serialising and parsing again gives the same manifest.
    std::string again = doppler::manifestToJson(m);
    doppler::Manifest m2 = doppler::parseManifest(again, "fuzz-manifest (re-serialised)");
    if (doppler::manifestToJson(m2) != again) __builtin_trap();
  } catch (const doppler::Error&) {
  }
  return 0;
}

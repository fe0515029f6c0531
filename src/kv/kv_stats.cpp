// KV dtype / compress names, bytes per token, the statistics JSON, and the f16 array dispatch.
#include <string>

#include "core/dtype.h"
#include "core/error.h"
#include "kv/kv_cache.h"
#include "kv/kv_codec.h"
#include "kv/kv_codec_internal.h"

namespace doppler {

std::string_view kvDTypeName(KVDType t) {
  switch (t) {
    case KVDType::F32: return "f32";
    case KVDType::F16: return "f16";
    case KVDType::BF16: return "bf16";
    case KVDType::Int8: return "int8";
  }
  return "?";
}

KVDType parseKVDType(std::string_view s, std::string_view what) {
  for (KVDType t : {KVDType::F32, KVDType::F16, KVDType::BF16, KVDType::Int8})
    if (s == kvDTypeName(t)) return t;
  fail("{}: unknown KV dtype '{}' (expected f32, f16, bf16 or int8)", what, std::string(s));
}

std::string_view kvCompressName(KVCompress c) { return c == KVCompress::All ? "all" : "spilled"; }

KVCompress parseKVCompress(std::string_view s, std::string_view what) {
  if (s == "all") return KVCompress::All;
  if (s == "spilled") return KVCompress::Spilled;
  fail("{}: unknown value '{}' (expected all or spilled)", what, std::string(s));
}

double kvBytesPerToken(const std::vector<KVLayerShape>& layers, KVDType dtype, int64_t blockTokens) {
  double total = 0;
  for (const auto& s : layers) {
    kv::BlockFormat f{dtype, blockTokens, s.kvHeads, s.headDim, s.vDim};
    total += double(f.bytes()) / double(blockTokens);
  }
  return total;
}

nlohmann::json kvStatsJson(const KVStats& s) {
  auto budget = [](uint64_t b) { return b == kKVUnlimited ? nlohmann::json(nullptr) : nlohmann::json(b); };
  auto tier = [&](const KVTierStats& t, uint64_t b, double bpt) {
    return nlohmann::json{{"budget_bytes", budget(b)}, {"blocks", t.blocks},       {"tokens", t.tokens},
                          {"bytes", t.bytes},          {"peak_bytes", t.peakBytes}, {"bytes_per_token", bpt}};
  };
  return nlohmann::json{{"block_tokens", s.blockTokens},
                        {"dtype", std::string(kvDTypeName(s.dtype))},
                        {"compress", std::string(kvCompressName(s.compress))},
                        {"device", tier(s.device, s.deviceBudget, s.deviceBytesPerToken)},
                        {"host", tier(s.host, s.hostBudget, s.hostBytesPerToken)},
                        {"spilled_blocks", s.spilledBlocks},
                        {"spilled_bytes", s.spilledBytes},
                        {"spill_restored_blocks", s.restoredBlocks},
                        {"spill_restored_bytes", s.restoredBytes},
                        {"decoded_blocks", s.decodedBlocks},
                        {"window_freed_blocks", s.windowFreedBlocks},
                        {"staging_bytes", s.stagingBytes},
                        {"peak_staging_bytes", s.peakStagingBytes}};
}

namespace kv {

bool cpuHasF16c() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}

void f32ToF16Array(const float* x, uint16_t* y, size_t n) {
  if (cpuHasF16c()) return f32ToF16ArrayF16c(x, y, n);
  for (size_t i = 0; i < n; i++) y[i] = f32ToF16(x[i]);
}

void f16ToF32Array(const uint16_t* x, float* y, size_t n) {
  if (cpuHasF16c()) return f16ToF32ArrayF16c(x, y, n);
  for (size_t i = 0; i < n; i++) y[i] = f16ToF32(x[i]);
}

}  // namespace kv

}  // namespace doppler

#include "memory/stats.h"

namespace doppler {

nlohmann::json TierStats::toJson() const {
  return nlohmann::json{{"budget_bytes", budgetBytes}, {"peak_bytes", peakBytes},   {"resident_bytes", residentBytes},
                        {"hits", hits},                {"misses", misses},          {"bytes_in", bytesIn},
                        {"bytes_out", bytesOut},       {"evictions", evictions}};
}

nlohmann::json PrefetchStats::toJson() const {
  auto ratio = [](uint64_t a, uint64_t b) { return b ? double(a) / double(b) : 0.0; };
  return nlohmann::json{{"issued", issued},
                        {"used", used},
                        {"wasted", wasted},
                        {"pending", pending},
                        {"dropped", dropped},
                        {"late", late},
                        {"predicted", predicted},
                        {"predicted_correct", predictedCorrect},
                        {"actual", actual},
                        {"precision", ratio(predictedCorrect, predicted)},
                        {"recall", ratio(predictedCorrect, actual)}};
}

}  // namespace doppler

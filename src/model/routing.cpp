#include "model/routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace doppler {

void routeTopK(const ModelConfig& cfg, const float* logits, const float* scoreBias, int64_t* idx, float* weight) {
  const int64_t E = cfg.numExperts, K = cfg.topK;
  switch (cfg.routing) {
    case RoutingType::SoftmaxTopK: {
      // softmax over all experts (f32), top-k, renormalise when norm_topk_prob
      float m = *std::max_element(logits, logits + E);
      std::vector<float> p(static_cast<size_t>(E));
      float sum = 0;
      for (int64_t e = 0; e < E; e++) sum += (p[size_t(e)] = std::exp(logits[e] - m));
      for (auto& v : p) v /= sum;
      std::vector<int64_t> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
        return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b);
      });
      float ksum = 0;
      for (int64_t i = 0; i < K; i++) ksum += p[size_t(order[size_t(i)])];
      for (int64_t i = 0; i < K; i++) {
        idx[i] = order[size_t(i)];
        weight[i] = cfg.normTopkProb ? p[size_t(idx[i])] / ksum : p[size_t(idx[i])];
      }
      return;
    }
    default:
      fail("routing '{}' is not implemented yet", int(cfg.routing));
  }
}

}  // namespace doppler

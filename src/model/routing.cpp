#include "model/routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace doppler {

namespace {

// Indices of the k largest values of v[0..n) (ties: lower index first), in descending order of value.
std::vector<int64_t> topIndices(const float* v, int64_t n, int64_t k) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  order.resize(size_t(k));
  return order;
}

// Index of the first maximum of v[0..n) (as torch.max(dim) returns it).
int64_t argmaxFirst(const float* v, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; i++)
    if (v[i] > v[best]) best = i;
  return best;
}

// One stage of phimoe's sparsemixer at inference. candidates: [E] logits with already chosen experts at -inf;
// logits: [E] the raw router logits. Picks the best candidate; its weight is its probability under a softmax over
// the candidates whose relative distance to it, (max - s) / max(|s|, max), is at most 2 * jitter.
void sparseMixerStage(const float* candidates, const float* logits, int64_t E, double jitter, int64_t& idx,
                      float& weight) {
  idx = argmaxFirst(candidates, E);
  const float top = candidates[idx];
  const float eps2 = float(2 * jitter);
  std::vector<float> g(static_cast<size_t>(E));
  float m = -INFINITY;
  for (int64_t e = 0; e < E; e++) {
    const float factor = std::max(std::fabs(logits[e]), top);  // scores.abs().clamp(min=max)
    const bool masked = (top - logits[e]) / factor > eps2;
    g[size_t(e)] = masked ? -INFINITY : candidates[e];
    m = std::max(m, g[size_t(e)]);
  }
  float sum = 0;
  for (int64_t e = 0; e < E; e++) sum += g[size_t(e)] == -INFINITY ? 0.0f : std::exp(g[size_t(e)] - m);
  weight = std::exp(g[size_t(idx)] - m) / sum;
}

}  // namespace

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
      auto order = topIndices(p.data(), E, K);
      float ksum = 0;
      for (int64_t i = 0; i < K; i++) ksum += p[size_t(order[size_t(i)])];
      for (int64_t i = 0; i < K; i++) {
        idx[i] = order[size_t(i)];
        weight[i] = cfg.normTopkProb ? p[size_t(idx[i])] / ksum : p[size_t(idx[i])];
      }
      return;
    }
    case RoutingType::SparseMixer: {
      // transformers' sparsemixer(training=False): the top expert, then the best of the rest, each weighted by
      // a softmax over the logits within 2 * router_jitter_noise (relative) of it; weights not renormalised.
      check(K == 2, "sparsemixer routing selects 2 experts, config asks for {}", K);
      std::vector<float> cand(logits, logits + E);
      sparseMixerStage(cand.data(), logits, E, cfg.routerJitter, idx[0], weight[0]);
      cand[size_t(idx[0])] = -INFINITY;
      sparseMixerStage(cand.data(), logits, E, cfg.routerJitter, idx[1], weight[1]);
      return;
    }
    case RoutingType::SigmoidGroupTopK: {
      // deepseek_v3 (noaux_tc): s = sigmoid(logits); choice = s + e_score_correction_bias; each of n_group groups
      // scores the sum of its 2 best choices; the topk_group best groups stay, the others' choices become 0;
      // top-k over the choices; weights = s of the chosen (renormalised when norm_topk_prob) * routed_scaling.
      const int64_t G = cfg.nGroup, per = E / G;
      check(G > 0 && E % G == 0 && cfg.topkGroup >= 1 && cfg.topkGroup <= G,
            "routing: {} experts cannot form {} groups with topk_group {}", E, G, cfg.topkGroup);
      std::vector<float> s(static_cast<size_t>(E)), choice(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; e++) {
        s[size_t(e)] = 1.0f / (1.0f + std::exp(-logits[e]));
        choice[size_t(e)] = s[size_t(e)] + (scoreBias ? scoreBias[e] : 0.0f);
      }
      std::vector<float> groupScore(static_cast<size_t>(G));
      for (int64_t g = 0; g < G; g++) {
        auto best = topIndices(choice.data() + g * per, per, std::min<int64_t>(2, per));
        float sum = 0;
        for (int64_t i : best) sum += choice[size_t(g * per + i)];
        groupScore[size_t(g)] = sum;
      }
      auto keep = topIndices(groupScore.data(), G, cfg.topkGroup);
      std::vector<float> masked(static_cast<size_t>(E), 0.0f);  // masked_fill(~mask, 0.0)
      for (int64_t g : keep)
        std::copy(choice.begin() + g * per, choice.begin() + (g + 1) * per, masked.begin() + g * per);
      auto order = topIndices(masked.data(), E, K);
      float sum = 0;
      for (int64_t i = 0; i < K; i++) sum += s[size_t(order[size_t(i)])];
      const float denom = sum + 1e-20f;
      for (int64_t i = 0; i < K; i++) {
        idx[i] = order[size_t(i)];
        float w = s[size_t(idx[i])];
        if (cfg.normTopkProb) w /= denom;
        weight[i] = w * float(cfg.routedScalingFactor);
      }
      return;
    }
  }
  fail("routing type {} is not implemented", int(cfg.routing));
}

}  // namespace doppler

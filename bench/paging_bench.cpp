// Expert paging benchmark (issue #4; results in docs/benchmarks.md, "Expert paging").
//
//   1. A synthetic Mixtral-8x7B-shaped model (real dimensions: hidden 4096, intermediate 14336, 8 experts,
//      top-2, 32k vocabulary; `--layers` layers, random bf16 weights, so routing is whatever random routers
//      give: measured and printed as the share of activations taken by the busiest quarter of the experts).
//      Device budgets of 100%, 50% and 25% of the expert bytes (plus the resident dense weights); host RAM holds
//      every expert, so steady-state misses are host -> device copies. Per budget: decode tokens/s, device hit
//      rate, bytes moved per token, achieved host -> device copy bandwidth, and this machine's single-thread
//      memcpy bandwidth measured in the same run (the loader thread copies with one thread).
//   2. The trained model models/qwen3moe-code-9m (real, skewed routing) on a code prompt: hit rate and the
//      prefetcher's prediction precision/recall at the same budget fractions.
//
//   paging_bench [--dir DIR] [--layers N] [--prefill N] [--warmup N] [--decode N] [--fractions 100,50,25] [--trained DIR]
//                [--trained-decode N] [--skip-synthetic] [--skip-trained]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "convert/synthetic.h"
#include "core/error.h"
#include "core/size.h"
#include "engine/engine.h"
#include "engine/model_source.h"
#include "loader/tiered_weights.h"
#include "tokenizer/tokenizer.h"

using namespace doppler;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Single-thread memcpy bandwidth (GB/s, 1e9 bytes): median of `runs` copies of a `bytes` buffer (pages touched).
double memcpyGBs(size_t bytes, int runs = 7) {
  std::vector<uint8_t> a(bytes, 1), b(bytes, 2);
  std::memcpy(b.data(), a.data(), bytes);  // warm-up
  std::vector<double> r;
  for (int i = 0; i < runs; i++) {
    auto t0 = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    r.push_back(double(bytes) / seconds(t0, Clock::now()) / 1e9);
  }
  std::sort(r.begin(), r.end());
  return r[r.size() / 2] + 0.0 * b[bytes / 2];
}

std::string makeSynthetic(const std::string& dir, int layers) {
  const std::string rdrr = dir + "/mixtral-l" + std::to_string(layers) + ".rdrr";
  if (std::filesystem::exists(rdrr + "/manifest.json")) return rdrr;
  const std::string hf = dir + "/mixtral-hf-l" + std::to_string(layers);
  std::filesystem::remove_all(hf);
  auto t0 = Clock::now();
  uint64_t bytes = writeSyntheticCheckpoint(hf, syntheticConfig("mixtral-8x7b", layers), 1, 0.02f);
  ConvertOptions o;
  o.sync = false;
  convertHfToRdrr(hf, rdrr, o);
  std::filesystem::remove_all(hf);
  std::fprintf(stderr, "wrote and converted a %s synthetic checkpoint in %.0f s\n", formatSize(bytes).c_str(),
               seconds(t0, Clock::now()));
  return rdrr;
}

// Share of expert activations taken by the busiest quarter of each layer's experts (0.25 = uniform).
double topQuarterShare(const TierPlan& p, const std::vector<uint64_t>& uses) {
  uint64_t top = 0, all = 0;
  for (const auto& row : p.expertUnit) {
    std::vector<uint64_t> c;
    for (int u : row)
      if (u >= 0) c.push_back(uses[size_t(u)]);
    std::sort(c.rbegin(), c.rend());
    const size_t q = std::max<size_t>(1, c.size() / 4);
    top += std::accumulate(c.begin(), c.begin() + q, uint64_t(0));
    all += std::accumulate(c.begin(), c.end(), uint64_t(0));
  }
  return all ? double(top) / double(all) : 0;
}

struct Row {
  int fraction = 0;
  uint64_t vram = 0;
  int64_t decodeTokens = 0;
  double tokS = 0, hitRate = 0, bytesPerToken = 0, copyGBs = 0, stallPerToken = 0;
  uint64_t issued = 0, used = 0, wasted = 0;
  double precision = 0, recall = 0, skew = 0;
  uint64_t devicePeak = 0, hostPeak = 0;
};

int64_t argmax(const std::vector<float>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); }

// Prefill `prompt`, greedy-decode `warmup` tokens (every pool buffer gets touched once: fresh memory is slow to
// fault in on VMs), then `decode` more; counters are those of the last `decode` tokens.
Row runOnce(const std::string& dir, int fraction, const std::vector<int32_t>& prompt, int64_t warmup,
            int64_t decode) {
  auto m = RdrrModel::open(dir);
  const TierPlan sizes = planTiers(*m, uint64_t(1) << 50, uint64_t(1) << 50, false);
  const uint64_t X = sizes.maxExpertBytes;
  uint64_t experts = sizes.expertCount * uint64_t(fraction) / 100;
  experts = std::max<uint64_t>(experts, uint64_t(sizes.topK));
  Row r;
  r.fraction = fraction;
  r.vram = sizes.residentBytes + experts * X;
  EngineOptions eo;
  eo.quiet = true;
  eo.vram = r.vram;
  // Host RAM holds every expert (steady-state misses are host -> device copies); at 100% the device holds them
  // all and host RAM only stages the first loads.
  eo.ram = fraction >= 100 ? std::max(sizes.hostMinimum, 2 * X) : sizes.expertTotalBytes + sizes.denseTotalBytes;
  auto e = Engine::open(dir, eo);
  TieredWeights& tw = *e->tiers();
  const int64_t V = e->config().vocabSize, P = int64_t(prompt.size());
  auto kv = e->newKVCache(P + warmup + decode + 1);
  std::vector<float> logits(static_cast<size_t>(P * V)), one(static_cast<size_t>(V));
  e->model().forward(prompt.data(), P, 0, *kv, true, logits.data());
  std::copy(logits.end() - V, logits.end(), one.begin());
  int64_t pos = P;
  for (int64_t i = 0; i < warmup; i++, pos++) {
    int32_t next = int32_t(argmax(one));
    e->model().forward(&next, 1, pos, *kv, false, one.data());
  }
  const TierCacheStats s0 = tw.cacheStats();
  auto t0 = Clock::now();
  for (int64_t i = 0; i < decode; i++, pos++) {
    int32_t next = int32_t(argmax(one));
    e->model().forward(&next, 1, pos, *kv, false, one.data());
  }
  const double dt = seconds(t0, Clock::now());
  const TierCacheStats s1 = tw.cacheStats();
  r.decodeTokens = decode;
  r.tokS = double(decode) / dt;
  const uint64_t hits = s1.device.hits - s0.device.hits, misses = s1.device.misses - s0.device.misses;
  r.hitRate = hits + misses ? double(hits) / double(hits + misses) : 0;
  r.bytesPerToken = double(s1.device.bytesIn - s0.device.bytesIn) / double(decode);
  const double cs = s1.copySeconds - s0.copySeconds;
  r.copyGBs = cs > 0 ? double(s1.copyBytes - s0.copyBytes) / cs / 1e9 : 0;
  r.stallPerToken = (s1.stallSeconds - s0.stallSeconds) / double(decode);
  r.issued = s1.prefetch.issued - s0.prefetch.issued;
  r.used = s1.prefetch.used - s0.prefetch.used;
  r.wasted = s1.prefetch.wasted - s0.prefetch.wasted;
  const uint64_t pred = s1.prefetch.predicted - s0.prefetch.predicted;
  const uint64_t corr = s1.prefetch.predictedCorrect - s0.prefetch.predictedCorrect;
  const uint64_t act = s1.prefetch.actual - s0.prefetch.actual;
  r.precision = pred ? double(corr) / double(pred) : 0;
  r.recall = act ? double(corr) / double(act) : 0;
  r.skew = topQuarterShare(tw.plan(), tw.cache().useCounts());
  r.devicePeak = s1.device.peakBytes;
  r.hostPeak = s1.host.peakBytes;
  return r;
}

void printTable(const std::vector<Row>& rows, double memcpy) {
  std::printf("| device budget | vram | decode tok/s | device hit rate | bytes moved / token | copy GB/s (memcpy %.1f) "
              "| stall / token | prefetch issued/used/wasted | prediction precision / recall |\n",
              memcpy);
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows)
    std::printf("| %d%% of experts | %s | %.2f | %.1f%% | %s | %.1f | %.3f s | %llu / %llu / %llu | %.0f%% / %.0f%% |\n",
                r.fraction, formatSize(r.vram).c_str(), r.tokS, 100 * r.hitRate,
                formatSize(uint64_t(r.bytesPerToken)).c_str(), r.copyGBs, r.stallPerToken,
                (unsigned long long)r.issued, (unsigned long long)r.used, (unsigned long long)r.wasted,
                100 * r.precision, 100 * r.recall);
  std::fflush(stdout);
}

std::vector<int> parseFractions(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) v.push_back(std::atoi(x.c_str()));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/tmp/doppler-paging-bench", trained = std::string(DOPPLER_SOURCE_DIR) + "/models/qwen3moe-code-9m";
  int layers = 2;
  int64_t prefill = 8, decode = 8, warmup = 8, trainedDecode = 96;
  std::vector<int> fractions = {100, 50, 25};
  bool synthetic = true, real = true;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--dir") dir = next();
    else if (a == "--layers") layers = std::atoi(next().c_str());
    else if (a == "--prefill") prefill = std::atoll(next().c_str());
    else if (a == "--decode") decode = std::atoll(next().c_str());
    else if (a == "--warmup") warmup = std::atoll(next().c_str());
    else if (a == "--fractions") fractions = parseFractions(next());
    else if (a == "--trained") trained = next();
    else if (a == "--trained-decode") trainedDecode = std::atoll(next().c_str());
    else if (a == "--skip-synthetic") synthetic = false;
    else if (a == "--skip-trained") real = false;
    else {
      std::fprintf(stderr,
                   "usage: paging_bench [--dir DIR] [--layers N] [--prefill N] [--warmup N] [--decode N] [--fractions 100,50,25] "
                   "[--trained DIR] [--trained-decode N] [--skip-synthetic] [--skip-trained]\n");
      return 2;
    }
  }
  try {
    std::filesystem::create_directories(dir);
    const double mc = memcpyGBs(size_t(256) << 20);
    std::printf("single-thread memcpy: %.1f GB/s\n\n", mc);
    if (synthetic) {
      const std::string m = makeSynthetic(dir, layers);
      std::vector<int32_t> prompt;
      for (int64_t i = 0; i < prefill; i++) prompt.push_back(int32_t((i * 7919 + 13) % 32000));
      std::vector<Row> rows;
      for (int f : fractions) rows.push_back(runOnce(m, f, prompt, warmup, decode));
      std::printf("synthetic mixtral-8x7b shape, %d layers, prefill %lld, warm-up %lld, decode %lld; routing: busiest "
                  "quarter of the experts took %.0f%% of activations (25%% = uniform)\n\n",
                  layers, (long long)prefill, (long long)warmup, (long long)decode, 100 * rows.back().skew);
      printTable(rows, mc);
      std::printf("\n");
    }
    if (real) {
      const std::string m = resolveModel(trained, dir + "/cache", true);
      auto tok = Tokenizer::fromDir(m);
      std::vector<int32_t> prompt =
          tok->encode("import os\nimport sys\n\ndef read_lines(path):\n    with open(path) as f:\n", true);
      std::vector<Row> rows;
      for (int f : fractions) rows.push_back(runOnce(m, f, prompt, warmup, trainedDecode));
      std::printf("trained qwen3moe-code-9m (4 layers x 16 experts, top-4), code prompt of %zu tokens, greedy decode "
                  "%lld; routing: busiest quarter of the experts took %.0f%% of activations (25%% = uniform)\n\n",
                  prompt.size(), (long long)trainedDecode, 100 * rows.back().skew);
      printTable(rows, mc);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "paging_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

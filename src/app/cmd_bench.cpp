// doppler bench [MODEL | --synthetic PRESET[:LAYERS]]: prefill and decode speed, weight bytes read per second
// against this machine's memory read bandwidth measured in the same run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

#include "app/cli_common.h"
#include "app/commands.h"
#include "backend/cpu/matmul.h"
#include "backend/gpu_bandwidth.h"
#include "convert/convert.h"
#include "convert/synthetic.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "core/size.h"
#include "engine/model_source.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string model, synthetic;
  int64_t vocab = 0;
  int64_t promptTokens = 32, decodeTokens = 32;
  std::string decodeInput = "random";
  EngineOptions engine;
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Weight bytes one decode step reads: every dense tensor, one row of the embedding, top-k experts per MoE layer.
uint64_t decodeBytesPerToken(const RdrrModel& m) {
  const ModelConfig& c = m.config();
  uint64_t bytes = 0;
  for (const auto& name : m.names()) {
    const auto& l = m.logical(name);
    if (!l.entries.empty() && l.entries[0]->role == TensorRole::Expert) continue;
    if (name == "embed.weight") {
      // one row for the token; with tied embeddings the head reads the whole table too
      bytes += uint64_t(c.hiddenSize) * dtypeSize(l.dtype);
      if (!m.has("lm_head.weight")) bytes += m.byteSize(name);
      continue;
    }
    bytes += m.byteSize(name);
  }
  if (m.manifest().moe) {
    int64_t moeLayers = 0;
    for (int64_t l = 0; l < c.numLayers; l++) moeLayers += c.layerIsMoe.empty() || c.layerIsMoe[size_t(l)];
    bytes += uint64_t(moeLayers) * uint64_t(m.manifest().moe->topK) * m.manifest().moe->expertBytes;
  }
  return bytes;
}

const bool kRegistered = registerCommand(
    {"bench", "Measure prefill/decode speed and weight bandwidth against this machine's memory bandwidth", 60,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("MODEL", o->model, "RDRR or Hugging Face dir (default: the embedded model)");
       sub.add_option("--synthetic", o->synthetic,
                      "Generate (once, in the cache) a random-weight model with real dimensions: PRESET[:LAYERS] with "
                      "PRESET one of llama3-8b, mixtral-8x7b, qwen3-30b-a3b, qwen3-235b-a22b (default 2 layers)");
       sub.add_option("--vocab", o->vocab, "Vocabulary size of the synthetic model (default: the preset's)");
       sub.add_option("--prompt-tokens", o->promptTokens, "Random prompt tokens to prefill (default 32)")
           ->check(CLI::PositiveNumber);
       sub.add_option("-n,--decode-tokens", o->decodeTokens, "Tokens to decode (default 32)")->check(CLI::PositiveNumber);
       sub.add_option("--decode-input", o->decodeInput,
                      "What each decode step is fed: random (a random token, as llama-bench's tg does: the routing of a "
                      "random-weight model then changes every step; each step waits for its pick before the next is "
                      "issued) or greedy (the previous step's argmax, decoded as `doppler run` decodes greedily: on a GPU "
                      "the token stays on the device and the next step is issued before it reaches the host; a "
                      "random-weight model soon repeats one token, and paged experts then always hit) (default random). "
                      "Every step ends with its greedy pick made by the backend")
           ->check(CLI::IsMember({"random", "greedy"}));
       addEngineOptions(sub, o->engine);
       return [o] {
         std::string model = o->model;
         if (!o->synthetic.empty()) {
           check(o->model.empty(), "bench: give MODEL or --synthetic, not both");
           std::string preset;
           int layers = 0;
           parseSyntheticSpec(o->synthetic, preset, layers);
           auto cfg = syntheticConfig(preset, layers, o->vocab);
           model = joinPath(joinPath(cacheRoot(o->engine.cacheDir), "synthetic"),
                            fmt::format("{}-L{}-V{}", preset, layers, cfg["vocab_size"].get<int64_t>()));
           if (!isRegularFile(joinPath(model, "model.safetensors"))) {
             std::fprintf(stderr, "doppler: writing synthetic %s (%d layers) into %s\n", preset.c_str(), layers,
                          model.c_str());
             writeSyntheticCheckpoint(model, cfg);
           }
         }
         TraceFile trace(o->engine.tracePath);
         auto engine = Engine::open(model, o->engine);
         const ModelConfig& cfg = engine->config();
         const uint64_t perToken = decodeBytesPerToken(engine->rdrr());

         std::fprintf(stderr, "doppler: measuring memory read bandwidth...\n");
         auto bw = cpu::measureReadBandwidth(size_t(1) << 30, 5);
         const bool gpu = !engine->backend().hostVisible();
         GpuBandwidth gbw;
         if (gpu) gbw = measureGpuBandwidth(size_t(1) << 30, 9);

         std::mt19937 rng(1);
         std::vector<int32_t> prompt(size_t(o->promptTokens));
         for (auto& t : prompt) t = int32_t(rng() % uint32_t(cfg.vocabSize));
         auto kv = engine->newKVCache(o->promptTokens + o->decodeTokens + 1);
         // Every forward ends with its greedy token picked by the backend (on a GPU only the id crosses to the host),
         // as `doppler run` does with greedy sampling; random input then feeds a random token instead.
         double t0 = now();
         int32_t next = engine->model().forwardGreedy(prompt.data(), o->promptTokens, 0, *kv);
         const double prefill = now() - t0;
         std::vector<double> steps;
         const nlohmann::json before = engine->stats();  // paged runs: what the timed decode alone waited for
         if (o->decodeInput == "greedy") {  // as `doppler run` decodes greedily: pipelined where the backend allows
           double s = now();  // a step's time: from the previous token's arrival to its own
           engine->model().decodeGreedy(next, o->promptTokens, o->decodeTokens, *kv, [&](int32_t) {
             const double t = now();
             steps.push_back(t - s);
             s = t;
             return true;
           });
         } else {
           for (int64_t i = 0; i < o->decodeTokens; i++) {
             const int32_t tok = int32_t(rng() % uint32_t(cfg.vocabSize));
             double s = now();
             next = engine->model().forwardGreedy(&tok, 1, o->promptTokens + i, *kv);
             steps.push_back(now() - s);
           }
         }
         const nlohmann::json after = engine->stats();
         // The prefill again on a fresh cache: the first one also paid one-time costs (GPU kernels loaded on first
         // use, cuBLAS's among them).
         double prefillAgain = 0;
         {
           auto kv2 = engine->newKVCache(o->promptTokens + 1);
           const double t2 = now();
           engine->model().forwardGreedy(prompt.data(), o->promptTokens, 0, *kv2);
           prefillAgain = now() - t2;
         }
         std::sort(steps.begin(), steps.end());
         const double median = steps[steps.size() / 2];
         const double gbs = double(perToken) / median / 1e9;
         std::printf("model            %s (%s, %lld layers)\n", engine->dir().c_str(),
                     std::string(archName(cfg.arch)).c_str(), (long long)cfg.numLayers);
         std::printf("backend          %s, %d threads\n", engine->backend().name().c_str(), ThreadPool::global().size());
         std::printf("prefill          %lld tokens in %.3f s: %.1f tok/s (run again: %.3f s, %.1f tok/s)\n",
                     (long long)o->promptTokens, prefill, double(o->promptTokens) / prefill, prefillAgain,
                     double(o->promptTokens) / prefillAgain);
         std::printf("decode           %lld tokens (%s input), median %.2f ms/token: %.2f tok/s\n",
                     (long long)o->decodeTokens, o->decodeInput.c_str(), median * 1e3, 1.0 / median);
         if (after.contains("stall_seconds")) {  // weights paged: the decode steps' waits and where misses went
           auto delta = [&](const nlohmann::json& a, const nlohmann::json& b) {
             return (a.is_number() ? a.get<double>() : 0.0) - (b.is_number() ? b.get<double>() : 0.0);
           };
           const double n = double(o->decodeTokens);
           std::printf("decode waits     %.3f ms per step waiting for weights",
                       1e3 * delta(after["stall_seconds"], before.value("stall_seconds", nlohmann::json())) / n);
           if (after.contains("hybrid")) {
             const nlohmann::json &h = after["hybrid"], &h0 = before.value("hybrid", nlohmann::json::object());
             auto per = [&](const char* k) { return delta(h[k], h0.value(k, nlohmann::json())) / n; };
             std::printf("; per step %.2f experts on the CPU and %.2f joint (CPU %.3f ms), %.2f copied, %.2f read from "
                         "disk", per("host_experts"), per("joint_experts"), 1e3 * per("host_seconds"),
                         per("copied_experts"), per("disk_experts"));
           }
           std::printf("\n");
         }
         std::printf("weights/token    %s\n", formatSize(perToken).c_str());
         std::printf("weight read      %.2f GB/s\n", gbs);
         std::printf("memory bandwidth %.2f GB/s (host RAM read, median of %d, %d threads)\n", bw.medianGBs, bw.runs,
                     bw.threads);
         if (gpu) {
           std::printf("gpu copy         %.2f GB/s (device-to-device, read + write, median of %d x %s)\n",
                       gbw.deviceCopyGBs, gbw.runs, formatSize(gbw.bytes).c_str());
           std::printf("gpu h2d          %.2f GB/s (pinned host to device)\n", gbw.hostToDeviceGBs);
           std::printf("ratio            %.0f%% of GPU copy bandwidth\n", 100.0 * gbs / gbw.deviceCopyGBs);
         } else {
           std::printf("ratio            %.0f%% of memory bandwidth\n", 100.0 * gbs / bw.medianGBs);
         }
         if (o->engine.printStats) std::fputs(formatStats(engine->stats()).c_str(), stderr);
         trace.write();
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app

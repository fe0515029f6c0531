// KV cache benchmark (issue #7) on a synthetic Llama-3-8B-shaped model (hidden 4096, 32 heads, 8 kv heads,
// head_dim 128, intermediate 14336; vocabulary 4096; few layers; random bf16 weights written with
// writeSafetensors and converted with convertHfToRdrr).
//
//   1. Decode tokens/s at contexts of 1k, 8k and 32k, with the whole KV in the (emulated) device tier and with
//      a small device budget (the rest spilled to host RAM), for f32 / f16 / int8 KV. The context is filled
//      with synthetic K/V through the cache API (a 32k prefill on 2 cores would take many minutes), then
//      `--decode` tokens run through Model::forward.
//   2. The longest context that fits a fixed device budget (no host tier) with f16 vs int8 KV, for the
//      synthetic model and for the real Llama-3-8B geometry (32 layers), found by filling the cache until
//      the out-of-memory Error.
//
//   kv_bench [--dir DIR] [--layers N] [--decode N] [--contexts 1024,8192,32768] [--budget-mib M] [--quick]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/size.h"
#include "core/thread_pool.h"
#include "engine/engine.h"
#include "format/safetensors.h"
#include "kv/kv_cache.h"

using namespace doppler;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int64_t kHidden = 4096, kHeads = 32, kKvHeads = 8, kHeadDim = 128, kInter = 14336, kVocab = 4096;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Random bf16 values uniform in [-scale, scale] (xorshift; deterministic).
std::vector<uint16_t> randomBf16(size_t n, uint64_t seed, float scale) {
  std::vector<uint16_t> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    float u = float(s >> 40) / float(1 << 24) * 2.0f - 1.0f;
    v[i] = f32ToBf16(u * scale);
  }
  return v;
}

// Writes the Hugging Face checkpoint and converts it; reuses DIR/model.rdrr when it exists.
std::string makeModel(const std::string& dir, int layers) {
  const std::string rdrr = dir + "/l" + std::to_string(layers) + ".rdrr";
  if (std::filesystem::exists(rdrr + "/manifest.json")) return rdrr;
  const std::string hf = dir + "/hf-l" + std::to_string(layers);
  std::filesystem::create_directories(hf);
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}},
                        {"model_type", "llama"},
                        {"hidden_size", kHidden},
                        {"intermediate_size", kInter},
                        {"num_attention_heads", kHeads},
                        {"num_key_value_heads", kKvHeads},
                        {"head_dim", kHeadDim},
                        {"num_hidden_layers", layers},
                        {"vocab_size", kVocab},
                        {"rms_norm_eps", 1e-5},
                        {"rope_theta", 500000.0},
                        {"max_position_embeddings", 131072},
                        {"tie_word_embeddings", false},
                        {"torch_dtype", "bfloat16"}};
  std::ofstream(hf + "/config.json") << cfg.dump(2);
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {{"model.embed_tokens.weight", {kVocab, kHidden}},
                                                                      {"model.norm.weight", {kHidden}},
                                                                      {"lm_head.weight", {kVocab, kHidden}}};
  for (int l = 0; l < layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    shapes.push_back({p + "input_layernorm.weight", {kHidden}});
    shapes.push_back({p + "post_attention_layernorm.weight", {kHidden}});
    shapes.push_back({p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden}});
    shapes.push_back({p + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden}});
    shapes.push_back({p + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden}});
    shapes.push_back({p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}});
    shapes.push_back({p + "mlp.gate_proj.weight", {kInter, kHidden}});
    shapes.push_back({p + "mlp.up_proj.weight", {kInter, kHidden}});
    shapes.push_back({p + "mlp.down_proj.weight", {kHidden, kInter}});
  }
  std::vector<std::vector<uint16_t>> data;
  std::vector<SafetensorsWriteItem> items;
  uint64_t seed = 1;
  for (auto& [name, shape] : shapes) {
    size_t n = 1;
    for (auto d : shape) n *= size_t(d);
    const bool norm = shape.size() == 1;
    data.push_back(norm ? std::vector<uint16_t>(n, f32ToBf16(1.0f))
                        : randomBf16(n, seed++, 1.0f / std::sqrt(float(shape[1]))));
  }
  for (size_t i = 0; i < shapes.size(); i++)
    items.emplace_back(shapes[i].first, DType::BF16, shapes[i].second,
                       std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data[i].data()), data[i].size() * 2));
  writeSafetensors(hf + "/model.safetensors", items);
  data.clear();
  ConvertOptions co;
  co.sync = false;
  convertHfToRdrr(hf, rdrr, co);
  std::filesystem::remove_all(hf);
  return rdrr;
}

// Fills positions [0, ctx) of every layer with synthetic keys/values (unit-variance noise, as post-norm K/V
// roughly are), `step` tokens per write as a chunked prefill would.
void fillSynthetic(KVCache& kv, const std::vector<KVLayerShape>& shapes, int64_t ctx, int64_t step = 512) {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> k, v;
  for (int64_t p = 0; p < ctx; p += step) {
    const int64_t n = std::min(step, ctx - p);
    for (size_t l = 0; l < shapes.size(); l++) {
      k.resize(size_t(n * shapes[l].kvHeads * shapes[l].headDim));
      v.resize(size_t(n * shapes[l].kvHeads * shapes[l].vDim));
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      kv.write(int(l), p, n, k.data(), v.data());
    }
  }
}

struct DecodeResult {
  double tokPerSec = 0;
  nlohmann::json kv;
};

DecodeResult decodeAt(const std::string& model, const EngineOptions& eo, int64_t ctx, int64_t decode) {
  auto e = Engine::open(model, eo);
  auto kv = e->newKVCache(ctx + decode);
  fillSynthetic(*kv, e->model().kvShapes(), ctx);
  std::vector<float> logits(size_t(e->config().vocabSize));
  int32_t tok = 1;
  e->model().forward(&tok, 1, ctx, *kv, false, logits.data());  // warm-up (staging buffers, page faults)
  const auto t0 = Clock::now();
  for (int64_t i = 1; i < decode; i++) {
    tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    e->model().forward(&tok, 1, ctx + i, *kv, false, logits.data());
  }
  const double s = seconds(t0, Clock::now());
  return DecodeResult{double(decode - 1) / s, e->stats()["kv"]};
}

// Tokens that fit `budget` device bytes (no host tier) for `shapes`, filling 16 tokens per write.
int64_t longestContext(const std::vector<KVLayerShape>& shapes, KVDType dt, uint64_t budget) {
  auto be = makeCpuBackend();
  PagedKVOptions o;
  o.dtype = dt;
  o.deviceBytes = budget;
  o.hostBytes = 0;
  auto kv = makePagedKVCache(*be, shapes, int64_t(1) << 30, o);
  std::vector<float> k(size_t(16 * shapes[0].kvHeads * shapes[0].headDim), 0.5f), v = k;
  int64_t p = 0;
  try {
    for (;; p += 16)
      for (size_t l = 0; l < shapes.size(); l++) kv->write(int(l), p, 16, k.data(), v.data());
  } catch (const Error&) {
  }
  int64_t reached = p + 16;
  for (size_t l = 0; l < shapes.size(); l++) reached = std::min(reached, kv->length(int(l)));
  return reached;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = (std::filesystem::temp_directory_path() / "doppler-kv-bench").string();
  int layers = 2;
  int64_t decode = 5;
  std::vector<int64_t> contexts = {1024, 8192, 32768};
  uint64_t budgetMiB = 1024;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kv_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--dir") dir = next();
    else if (a == "--layers") layers = std::stoi(next());
    else if (a == "--decode") decode = std::stoll(next());
    else if (a == "--budget-mib") budgetMiB = std::stoull(next());
    else if (a == "--contexts") {
      contexts.clear();
      std::string s = next();
      for (size_t p = 0; p < s.size();) {
        size_t q = s.find(',', p);
        contexts.push_back(std::stoll(s.substr(p, q - p)));
        p = q == std::string::npos ? s.size() : q + 1;
      }
    } else if (a == "--quick") {
      contexts = {1024, 4096};
      decode = 3;
    } else {
      std::fprintf(stderr, "usage: kv_bench [--dir DIR] [--layers N] [--decode N] [--contexts a,b,c] [--budget-mib M] [--quick]\n");
      return 2;
    }
  }
  try {
    std::filesystem::create_directories(dir);
    auto t0 = Clock::now();
    const std::string model = makeModel(dir, layers);
    std::printf("model: synthetic Llama-3-8B shape, %d layers, bf16 weights (%s, ready in %.1f s), %d threads\n\n",
                layers, model.c_str(), seconds(t0, Clock::now()), ThreadPool::global().size());

    EngineOptions base;
    base.quiet = true;
    {  // a real prefill once, for scale
      auto e = Engine::open(model, base);
      auto kv = e->newKVCache(512);
      std::vector<int32_t> ids(512);
      for (size_t i = 0; i < ids.size(); i++) ids[i] = int32_t((i * 7919) % kVocab);
      std::vector<float> logits(static_cast<size_t>(kVocab));
      auto a = Clock::now();
      e->model().forward(ids.data(), int64_t(ids.size()), 0, *kv, false, logits.data());
      std::printf("real prefill of 512 tokens: %.1f tok/s\n\n", 512 / seconds(a, Clock::now()));
    }

    const double f32PerTok = double(layers * kKvHeads * kHeadDim * 2 * 4);
    const uint64_t spillBudget = uint64_t(256 * f32PerTok);  // the device holds 256 tokens of f32 KV
    std::printf("decode tokens/s (context filled through the cache API, then %lld decode steps; spill: "
                "--kv-vram %s = 256 f32 tokens, the rest in host RAM)\n\n",
                (long long)decode, formatSize(spillBudget).c_str());
    std::printf("| KV | placement | %s |\n|---|---|", [&] {
      std::string h;
      for (auto c : contexts) h += (h.empty() ? "" : " | ") + std::to_string(c / 1024) + "k";
      return h;
    }().c_str());
    for (size_t i = 0; i < contexts.size(); i++) std::printf("---|");
    std::printf("\n");
    struct Cfg {
      KVDType dt;
      KVCompress c;
      bool spill;
    };
    for (Cfg cfg : {Cfg{KVDType::F32, KVCompress::All, false}, Cfg{KVDType::F32, KVCompress::All, true},
                    Cfg{KVDType::F16, KVCompress::All, false}, Cfg{KVDType::F16, KVCompress::Spilled, true},
                    Cfg{KVDType::Int8, KVCompress::All, false}, Cfg{KVDType::Int8, KVCompress::Spilled, true}}) {
      EngineOptions eo = base;
      eo.kvDtype = cfg.dt;
      eo.kvCompress = cfg.c;
      if (cfg.spill) eo.kvVram = spillBudget;
      std::printf("| %s | %s |", std::string(kvDTypeName(cfg.dt)).c_str(),
                  cfg.spill ? (cfg.c == KVCompress::Spilled ? "spilled (compressed on spill)" : "spilled")
                            : "all on device");
      std::fflush(stdout);
      for (auto ctx : contexts) {
        DecodeResult r = decodeAt(model, eo, ctx, decode);
        std::printf(" %.2f |", r.tokPerSec);
        std::fflush(stdout);
        if (getenv("KV_BENCH_VERBOSE")) std::fprintf(stderr, "%s\n", r.kv.dump().c_str());
      }
      std::printf("\n");
    }

    const uint64_t budget = budgetMiB << 20;
    std::printf("\nlongest context in a %s device budget (no host tier; block 16 tokens)\n\n", formatSize(budget).c_str());
    std::printf("| geometry | KV | bytes/token | longest context |\n|---|---|---|---|\n");
    const std::vector<KVLayerShape> synth(size_t(layers), KVLayerShape{kKvHeads, kHeadDim, kHeadDim});
    const std::vector<KVLayerShape> l3(32, KVLayerShape{kKvHeads, kHeadDim, kHeadDim});
    for (const auto* g : {&synth, &l3})
      for (KVDType dt : {KVDType::F32, KVDType::F16, KVDType::Int8}) {
        const uint64_t b = g == &synth ? budget / 16 : budget;  // keep the synthetic fill small
        std::printf("| %s | %s | %.0f | %lld tokens (%s) |\n",
                    g == &synth ? (std::to_string(layers) + " layers").c_str() : "Llama-3-8B (32 layers)",
                    std::string(kvDTypeName(dt)).c_str(), kvBytesPerToken(*g, dt, 16),
                    (long long)longestContext(*g, dt, b), formatSize(b).c_str());
        std::fflush(stdout);
      }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kv_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}

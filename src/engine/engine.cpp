#include "engine/engine.h"

#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/error.h"
#include "core/thread_pool.h"
#include "engine/model_source.h"
#include "loader/rdrr_weights.h"
#include "loader/tiered_weights.h"
#include "memory/budget.h"

namespace doppler {

struct ForwardCounters {
  int64_t tokens = 0, forwards = 0;
  double seconds = 0;
};

namespace {
// Times every forward pass (tokens/s in stats()).
class TimedModel final : public Model {
 public:
  TimedModel(std::unique_ptr<Model> inner, std::shared_ptr<ForwardCounters> c) : inner_(std::move(inner)), c_(c) {}
  const ModelConfig& config() const override { return inner_->config(); }
  std::vector<KVLayerShape> kvShapes() const override { return inner_->kvShapes(); }
  void forward(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv, bool allLogits, float* logits) override {
    const auto t0 = std::chrono::steady_clock::now();
    inner_->forward(ids, n, pos0, kv, allLogits, logits);
    count(n, t0);
  }
  int32_t forwardGreedy(const int32_t* ids, int64_t n, int64_t pos0, KVCache& kv) override {
    const auto t0 = std::chrono::steady_clock::now();
    const int32_t tok = inner_->forwardGreedy(ids, n, pos0, kv);
    count(n, t0);
    return tok;
  }
  int64_t decodeGreedy(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                       const std::function<bool(int32_t)>& onToken) override {
    auto t0 = std::chrono::steady_clock::now();
    return inner_->decodeGreedy(tok, pos, steps, kv, timed(onToken, t0));
  }
  int64_t decodeSampled(int32_t tok, int64_t pos, int64_t steps, KVCache& kv,
                        const std::function<bool(int32_t)>& onToken,
                        const std::function<DeviceSampling()>& sampling) override {
    auto t0 = std::chrono::steady_clock::now();
    return inner_->decodeSampled(tok, pos, steps, kv, timed(onToken, t0), sampling);
  }
  int deviceSamplingTopK() const override { return inner_->deviceSamplingTopK(); }
  void setHostBackend(Backend* host) override { inner_->setHostBackend(host); }

 private:
  // onToken, counting each token with the time since the previous one arrived (t0: the decoding's start).
  std::function<bool(int32_t)> timed(const std::function<bool(int32_t)>& onToken,
                                     std::chrono::steady_clock::time_point& t0) {
    return [this, &onToken, &t0](int32_t t) {
      count(1, t0);
      t0 = std::chrono::steady_clock::now();
      return onToken(t);
    };
  }
  void count(int64_t n, std::chrono::steady_clock::time_point t0) {
    c_->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    c_->tokens += n;
    c_->forwards++;
  }
  std::unique_ptr<Model> inner_;
  std::shared_ptr<ForwardCounters> c_;
};
}  // namespace

Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::open(const std::string& modelArg, const EngineOptions& opts) {
  if (opts.threads > 0) ThreadPool::setGlobalThreads(opts.threads);
  std::unique_ptr<Engine> e(new Engine);
  e->opts_ = opts;
  // A model from the shard store is fetched lazily when weights are paged: dense shards now, experts on use.
  const bool paged = opts.vram || opts.ram;
  ResolvedModel rm = resolveModelLazily(modelArg, opts.cacheDir, opts.quiet, paged, opts.swarm);
  e->dir_ = rm.dir;
  e->lazy_ = rm.lazy;
  e->rdrr_ = RdrrModel::open(e->dir_, std::move(rm.fetcher));
  e->backend_ = makeBackend(opts.backend);
  // On a GPU the weights must be in its memory: always through the tier manager, resident when they fit the
  // device budget (--vram, default the GPU's free memory less headroom), else paged.
  const bool gpu = !e->backend_->hostVisible();
  if (paged || gpu) {  // paged through budgeted tiers (docs/tiers.md)
    uint64_t shardBytes = 0;
    for (const auto& s : e->rdrr_->manifest().shards) shardBytes += s.size;
    TierBudgets b = resolveBudgets(detectCapabilities(*e->backend_, cacheRoot(opts.cacheDir)), opts.vram, opts.ram,
                                   shardBytes);
    TieredOptions to;
    to.deviceBudget = b.device;
    to.hostBudget = b.host;
    to.diskBudget = b.disk;
    to.prefetch = opts.prefetch;
    to.hybrid = gpu && opts.hybrid;
    const char* hp = std::getenv("DOPPLER_HYBRID_PREDICT");
    to.hybridPredict = hp && std::string_view(hp) == "1";
    const char* hj = std::getenv("DOPPLER_HYBRID_JOINT");
    to.hybridJoint = !(hj && std::string_view(hj) == "0");
    auto t = std::make_unique<TieredWeights>(*e->rdrr_, *e->backend_, to);
    // On a GPU without --vram: when every expert fits beside the resident weights, load them all now, so that
    // "resident" means resident (no expert is read from disk in the middle of a decode).
    const TierPlan& plan = t->plan();
    if (gpu && !opts.vram && !plan.denseStreamed && plan.expertCount > 0 &&
        plan.residentBytes + plan.expertTotalBytes + (plan.expertTotalBytes >> 4) <= b.device) {
      t->loadAllExperts();
    }
    if (to.hybrid && !t->allResident()) {
      // The CPU's share of the experts runs on every core but one: the loader thread (which waits for its
      // copies) keeps a core, so that no expert task waits behind it (an expert computation lasts as long as
      // its slowest task). Only before the pool's first use; --threads overrides.
      if (opts.threads <= 0) ThreadPool::setGlobalThreads(std::max(1, int(std::thread::hardware_concurrency()) - 1));
      e->hostBackend_ = makeCpuBackend();
    }
    e->tiered_ = t.get();
    e->weights_ = std::move(t);
  } else {
    e->weights_ = std::make_unique<ResidentRdrrWeights>(*e->rdrr_);
  }
  e->speed_ = std::make_shared<ForwardCounters>();
  e->model_ = std::make_unique<TimedModel>(createModel(e->rdrr_->config(), *e->weights_, *e->backend_), e->speed_);
  e->model_->setHostBackend(e->hostBackend_.get());
  return e;
}

std::unique_ptr<KVCache> Engine::newKVCache(int64_t capacityTokens) {
  std::vector<KVLayerShape> shapes = model_->kvShapes();
  const ModelConfig& cfg = rdrr_->config();
  for (size_t l = 0; l < shapes.size(); l++)
    if (l < cfg.layerIsSliding.size() && cfg.layerIsSliding[l]) shapes[l].window = cfg.slidingWindow;
  PagedKVOptions o;
  o.blockTokens = opts_.kvBlock;
  o.deviceBytes = opts_.kvVram;
  o.hostBytes = opts_.kvRam;
  o.dtype = opts_.kvDtype;
  o.compress = opts_.kvCompress;
  return makePagedKVCache(*backend_, shapes, capacityTokens, o, kvStats_);
}

nlohmann::json Engine::stats() const {
  nlohmann::json j = nlohmann::json::object();
  // Weights: tiers, prefetch, stall time, placement (docs/tiers.md).
  if (tiered_) {
    j = tiered_->stats();
    j["weights"] = "tiered";
  } else {
    j["weights"] = "resident";  // mmapped, no paging: no tier counters
  }
  j["tokens"] = speed_->tokens;
  j["forward_seconds"] = speed_->seconds;
  j["tokens_per_second"] = speed_->seconds > 0 ? double(speed_->tokens) / speed_->seconds : 0.0;
  // Lazy fetches from the shard store (docs/cache.md).
  if (lazy_)
    j["store"] = {{"lazy_deferred_shards", lazy_->deferred.load()},
                  {"lazy_fetched_shards", lazy_->shards.load()},
                  {"lazy_fetched_bytes", lazy_->bytes.load()}};
  // KV cache (docs/kv-cache.md).
  j["kv"] = kvStatsJson(*kvStats_);
  // Decode steps replayed as GPU graphs (Backend::beginStep).
  const GraphStats g = backend_->stats().graphs;
  if (g.steps) {
    const double steps = double(g.steps);
    j["graphs"] = {{"steps", g.steps}, {"launches", g.launches}, {"builds", g.builds},
                   {"nodes", g.nodes}, {"node_updates", g.nodeUpdates},
                   {"host_ms_per_step", 1e3 * g.hostSeconds / steps},
                   {"first_launch_ms_per_step", 1e3 * g.firstLaunchSeconds / steps},
                   {"last_launch_ms_per_step", 1e3 * g.lastLaunchSeconds / steps},
                   {"update_ms_per_step", 1e3 * g.updateSeconds / steps},
                   {"gpu_ms_per_step", 1e3 * g.gpuSeconds / steps},
                   {"gpu_span_ms_per_step", 1e3 * g.gpuSpanSeconds / steps},
                   {"gpu_gap_ms_per_step", g.gaps ? 1e3 * g.gpuGapSeconds / double(g.gaps) : 0.0}};
  }
  return j;
}

}  // namespace doppler

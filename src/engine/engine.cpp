#include "engine/engine.h"

#include "core/thread_pool.h"
#include "engine/model_source.h"
#include "loader/rdrr_weights.h"

namespace doppler {

Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::open(const std::string& modelArg, const EngineOptions& opts) {
  if (opts.threads > 0) ThreadPool::setGlobalThreads(opts.threads);
  std::unique_ptr<Engine> e(new Engine);
  e->dir_ = resolveModel(modelArg, opts.cacheDir, opts.quiet);
  e->rdrr_ = RdrrModel::open(e->dir_);
  e->backend_ = makeCpuBackend();
  e->weights_ = std::make_unique<ResidentRdrrWeights>(*e->rdrr_);
  e->model_ = createModel(e->rdrr_->config(), *e->weights_, *e->backend_);
  return e;
}

std::unique_ptr<KVCache> Engine::newKVCache(int64_t capacityTokens) {
  return makeContiguousKVCache(*backend_, model_->kvShapes(), capacityTokens);
}

}  // namespace doppler

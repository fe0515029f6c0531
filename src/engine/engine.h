// An opened model ready to run: RDRR reader + weights provider + backend + model forward.
// Every command that runs a model (run, eval, later serve/bench) opens it through here, so options such as
// budgets apply the same way everywhere.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "format/rdrr_reader.h"
#include "kv/kv_cache.h"
#include "loader/weights.h"
#include "model/model.h"

namespace doppler {

struct EngineOptions {
  std::string cacheDir;  // "" = default cache root (engine/model_source.h)
  int threads = 0;       // 0 = one per core
  bool quiet = false;    // no progress lines on stderr
};

class Engine {
 public:
  // MODEL: RDRR dir, Hugging Face dir (converted once into the cache) or "" (the embedded default model).
  static std::unique_ptr<Engine> open(const std::string& modelArg, const EngineOptions& opts);
  ~Engine();

  const std::string& dir() const { return dir_; }
  const RdrrModel& rdrr() const { return *rdrr_; }
  const ModelConfig& config() const { return rdrr_->config(); }
  Model& model() { return *model_; }
  Backend& backend() { return *backend_; }
  std::unique_ptr<KVCache> newKVCache(int64_t capacityTokens);

 private:
  Engine() = default;
  std::string dir_;
  std::unique_ptr<RdrrModel> rdrr_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<WeightProvider> weights_;
  std::unique_ptr<Model> model_;
};

}  // namespace doppler

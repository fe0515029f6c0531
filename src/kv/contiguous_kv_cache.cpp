#include <cstring>

#include "core/error.h"
#include "kv/kv_cache.h"

namespace doppler {

namespace {

class ContiguousKVCache final : public KVCache {
 public:
  ContiguousKVCache(Backend& b, const std::vector<KVLayerShape>& layers, int64_t capacity)
      : backend_(b), shapes_(layers), capacity_(capacity) {
    for (const auto& s : layers) {
      size_t kb = size_t(capacity) * s.kvHeads * s.headDim * sizeof(float);
      size_t vb = size_t(capacity) * s.kvHeads * s.vDim * sizeof(float);
      k_.push_back(static_cast<float*>(backend_.allocate(Tier::Device, kb)));
      v_.push_back(static_cast<float*>(backend_.allocate(Tier::Device, vb)));
      bytes_.emplace_back(kb, vb);
    }
  }
  ~ContiguousKVCache() override {
    for (size_t l = 0; l < k_.size(); l++) {
      backend_.release(Tier::Device, k_[l], bytes_[l].first);
      backend_.release(Tier::Device, v_[l], bytes_[l].second);
    }
  }
  int64_t capacity() const override { return capacity_; }

  void write(int layer, int64_t pos, int64_t n, const float* k, const float* v) override {
    check(pos >= 0 && pos + n <= capacity_, "context full: {} tokens do not fit the KV cache of {} tokens", pos + n,
          capacity_);
    const auto& s = shapes_[size_t(layer)];
    std::memcpy(k_[size_t(layer)] + pos * s.kvHeads * s.headDim, k, size_t(n * s.kvHeads * s.headDim) * 4);
    std::memcpy(v_[size_t(layer)] + pos * s.kvHeads * s.vDim, v, size_t(n * s.kvHeads * s.vDim) * 4);
  }

  void chunks(int layer, int64_t end, std::vector<KVChunk>& out) override {
    out.clear();
    if (end > 0) out.push_back(KVChunk{0, end, k_[size_t(layer)], v_[size_t(layer)]});
  }

 private:
  Backend& backend_;
  std::vector<KVLayerShape> shapes_;
  int64_t capacity_;
  std::vector<float*> k_, v_;
  std::vector<std::pair<size_t, size_t>> bytes_;
};

}  // namespace

std::unique_ptr<KVCache> makeContiguousKVCache(Backend& backend, const std::vector<KVLayerShape>& layers,
                                               int64_t capacity) {
  return std::make_unique<ContiguousKVCache>(backend, layers, capacity);
}

}  // namespace doppler

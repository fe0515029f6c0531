#include "memory/pool.h"

#include <algorithm>

namespace doppler {

TierPool::TierPool(Backend& backend, Tier tier, uint64_t budget) : backend_(backend), tier_(tier), budget_(budget) {}

TierPool::~TierPool() = default;

void* TierPool::tryAllocate(uint64_t bytes) {
  const uint64_t a = accounted(bytes);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (a > budget_ || inUse_ > budget_ - a) return nullptr;
    inUse_ += a;  // reserve first so that concurrent callers cannot both pass the check
    peak_ = std::max(peak_, inUse_);
    allocations_++;
  }
  try {
    return backend_.allocate(tier_, size_t(a));
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    inUse_ -= a;
    allocations_--;
    throw;
  }
}

void TierPool::release(void* p, uint64_t bytes) {
  if (!p) return;
  const uint64_t a = accounted(bytes);
  backend_.release(tier_, p, size_t(a));
  std::lock_guard<std::mutex> lk(mu_);
  inUse_ -= std::min(inUse_, a);
}

uint64_t TierPool::inUse() const {
  std::lock_guard<std::mutex> lk(mu_);
  return inUse_;
}
uint64_t TierPool::peak() const {
  std::lock_guard<std::mutex> lk(mu_);
  return peak_;
}
uint64_t TierPool::allocations() const {
  std::lock_guard<std::mutex> lk(mu_);
  return allocations_;
}
uint64_t TierPool::available() const {
  std::lock_guard<std::mutex> lk(mu_);
  return budget_ - std::min(budget_, inUse_);
}

}  // namespace doppler

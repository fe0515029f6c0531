#include "memory/pool.h"

#include <algorithm>

namespace doppler {

TierPool::TierPool(Backend& backend, Tier tier, uint64_t budget) : backend_(backend), tier_(tier), budget_(budget) {}

TierPool::~TierPool() {
  for (auto& [a, p] : free_) backend_.release(tier_, p, size_t(a));
}

void TierPool::dropKeptLocked(uint64_t need) {
  for (auto it = free_.begin(); it != free_.end() && inUse_ + kept_ + need > budget_;) {
    backend_.release(tier_, it->second, size_t(it->first));
    kept_ -= it->first;
    it = free_.erase(it);
  }
}

void* TierPool::tryAllocate(uint64_t bytes) {
  const uint64_t a = accounted(bytes);
  std::unique_lock<std::mutex> lk(mu_);  // held across the backend call: allocations are rare next to reuse
  // A buffer on its way from grow() is either this one or holds room this allocation may need: wait for it.
  while (growing_ && free_.find(a) == free_.end()) grown_.wait(lk);
  if (a > budget_ || inUse_ > budget_ - a) return nullptr;
  void* p = nullptr;
  if (auto it = free_.find(a); it != free_.end()) {  // a kept buffer of this size
    p = it->second;
    free_.erase(it);
    kept_ -= a;
  } else {
    dropKeptLocked(a);
    try {
      p = backend_.allocate(tier_, size_t(a));
    } catch (...) {
      // Out of memory below the budget: give every kept buffer back and try once more.
      for (auto& [sz, q] : free_) backend_.release(tier_, q, size_t(sz));
      free_.clear();
      kept_ = 0;
      p = backend_.allocate(tier_, size_t(a));
    }
  }
  inUse_ += a;
  peak_ = std::max(peak_, inUse_);
  allocations_++;
  return p;
}

void TierPool::release(void* p, uint64_t bytes) {
  if (!p) return;
  const uint64_t a = accounted(bytes);
  std::lock_guard<std::mutex> lk(mu_);
  inUse_ -= std::min(inUse_, a);
  free_.emplace(a, p);
  kept_ += a;
}

bool TierPool::grow(uint64_t bytes) {
  const uint64_t a = accounted(bytes);
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (growing_ || a > budget_ || inUse_ + kept_ > budget_ - a) return false;
    growing_ = a;
    kept_ += a;  // the room is taken now, so that nothing else allocates into it meanwhile
  }
  void* p = nullptr;
  try {
    p = backend_.allocate(tier_, size_t(a));
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    kept_ -= a;
    growing_ = 0;
    grown_.notify_all();
    throw;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    free_.emplace(a, p);
    growing_ = 0;
  }
  grown_.notify_all();
  return true;
}

void TierPool::trim() {
  std::unique_lock<std::mutex> lk(mu_);
  while (growing_) grown_.wait(lk);
  for (auto& [a, p] : free_) backend_.release(tier_, p, size_t(a));
  free_.clear();
  kept_ = 0;
}

uint64_t TierPool::keptOf(uint64_t bytes) const {
  const uint64_t a = accounted(bytes);
  std::lock_guard<std::mutex> lk(mu_);
  return a * free_.count(a);
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
uint64_t TierPool::kept() const {
  std::lock_guard<std::mutex> lk(mu_);
  return kept_;
}

uint64_t TierPool::available() const {
  std::lock_guard<std::mutex> lk(mu_);
  return budget_ - std::min(budget_, inUse_);
}

}  // namespace doppler

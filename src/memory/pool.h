// A budgeted pool of buffers in one tier. It is the allocator (memory comes from Backend::allocate of its
// tier: the emulated device pool on the CPU backend, pinned host memory later on CUDA), so the peak it reports
// is the real high-water mark of bytes it handed out, never an estimate. An allocation that would take the
// pool past its budget returns nullptr: the caller evicts something and retries. Thread-safe.
//
// Released buffers are kept and handed out again for an allocation of the same size (experts of a model are
// all one size), because getting fresh memory is slow: first-touch page faults ran at 0.15 GB/s on the CI VM,
// and cudaMalloc/cudaHostAlloc synchronise the device. Kept buffers count against the budget: when an
// allocation needs room, they are given back to the backend first, so the memory the pool holds (in use +
// kept) never exceeds the budget.
#pragma once
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>

#include "backend/backend.h"

namespace doppler {

class TierPool {
 public:
  TierPool(Backend& backend, Tier tier, uint64_t budget);
  ~TierPool();  // everything must have been released
  TierPool(const TierPool&) = delete;
  TierPool& operator=(const TierPool&) = delete;

  // Bytes an allocation of `bytes` counts against the budget (rounded up to 64: the backend's granularity).
  static uint64_t accounted(uint64_t bytes) { return (std::max<uint64_t>(bytes, 1) + 63) / 64 * 64; }

  // nullptr when inUse() + accounted(bytes) > budget(). Errors only when the backend itself fails.
  void* tryAllocate(uint64_t bytes);
  void release(void* p, uint64_t bytes);

  Tier tier() const { return tier_; }
  uint64_t budget() const { return budget_; }
  uint64_t inUse() const;
  uint64_t peak() const;
  uint64_t allocations() const;
  uint64_t available() const;  // budget - inUse
  uint64_t kept() const;       // bytes of released buffers kept for reuse (held, not in use)

 private:
  void dropKeptLocked(uint64_t need);  // gives kept buffers back until inUse + kept + need <= budget (or none left)

  Backend& backend_;
  Tier tier_;
  uint64_t budget_;
  mutable std::mutex mu_;
  uint64_t inUse_ = 0, peak_ = 0, allocations_ = 0, kept_ = 0;
  std::multimap<uint64_t, void*> free_;  // accounted size -> kept buffer
};

}  // namespace doppler

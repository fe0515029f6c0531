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
#include <condition_variable>
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

  // nullptr when inUse() + accounted(bytes) > budget(). Errors only when the backend itself fails. When no kept
  // buffer fits while grow() is getting one, waits for that first (it may be this size, or hold needed room).
  void* tryAllocate(uint64_t bytes);
  void release(void* p, uint64_t bytes);
  // Gets one more buffer of `bytes` from the backend and keeps it for a later tryAllocate, when the budget has room
  // beside what is in use and kept; false when it has not. The backend call runs without the pool's lock (pinning
  // host memory takes milliseconds: tryAllocate and release go on meanwhile). For a thread that fills the pool
  // ahead of demand; errors are the backend's.
  bool grow(uint64_t bytes);
  // Gives every kept buffer back to the backend (after a phase whose buffer sizes will not come again).
  void trim();

  Tier tier() const { return tier_; }
  uint64_t budget() const { return budget_; }
  uint64_t inUse() const;
  uint64_t peak() const;
  uint64_t allocations() const;
  uint64_t available() const;  // budget - inUse
  uint64_t kept() const;       // bytes of released (or grown) buffers kept for reuse (held, not in use)
  uint64_t keptOf(uint64_t bytes) const;  // of those, bytes kept in buffers that an allocation of `bytes` takes

 private:
  void dropKeptLocked(uint64_t need);  // gives kept buffers back until inUse + kept + need <= budget (or none left)

  Backend& backend_;
  Tier tier_;
  uint64_t budget_;
  mutable std::mutex mu_;
  std::condition_variable grown_;  // a grow() finished
  uint64_t inUse_ = 0, peak_ = 0, allocations_ = 0, kept_ = 0;
  uint64_t growing_ = 0;           // accounted size of the buffer grow() is getting now (0: none); in kept_ already
  std::multimap<uint64_t, void*> free_;  // accounted size -> kept buffer
};

}  // namespace doppler

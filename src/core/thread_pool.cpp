#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace doppler {

namespace {
int gGlobalThreads = 0;

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or spinMicros() have passed; true when done() held.
template <typename F>
bool spinUntil(F done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(ThreadPool::spinMicros());
  for (int i = 1;; i++) {
    if (done()) return true;
    cpuRelax();
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return done();
  }
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; i++) workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::setGlobalThreads(int n) { gGlobalThreads = n; }

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(gGlobalThreads);
  return pool;
}

void ThreadPool::workerLoop(int idx) {
  uint64_t seen = 0;
  for (;;) {
    auto published = [&] { return generation_.load(std::memory_order_acquire) != seen || stop_.load(); };
    if (!spinUntil(published)) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, published);  // parallelFor bumps generation_ under mu_: no wake-up is lost
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    const int64_t b = std::min<int64_t>(n_, idx * chunk_), e = std::min<int64_t>(n_, b + chunk_);
    if (b < e) (*fn_)(b, e);
    // seq_cst with the caller's store of callerAsleep_ then load of pending_: one of the two sees the other.
    if (pending_.fetch_sub(1) == 1 && callerAsleep_.load()) {
      std::lock_guard<std::mutex> lk(mu_);  // the caller checks pending_ under mu_ before it sleeps
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::parallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  int64_t maxChunks = std::max<int64_t>(1, n / grain);
  int64_t chunks = std::min<int64_t>(size(), maxChunks);
  if (chunks <= 1 || workers_.empty()) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call(callMu_);
  fn_ = &fn;
  n_ = n;
  chunk_ = (n + chunks - 1) / chunks;
  pending_.store(int(workers_.size()), std::memory_order_relaxed);
  bool wake;
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    wake = sleepers_.load() > 0;
  }
  if (wake) cv_.notify_all();
  fn(0, std::min<int64_t>(n, chunk_));
  auto finished = [&] { return pending_.load() == 0; };
  if (spinUntil(finished)) return;
  std::unique_lock<std::mutex> lk(mu_);
  callerAsleep_.store(true);
  done_cv_.wait(lk, finished);
  callerAsleep_.store(false);
}

}  // namespace doppler

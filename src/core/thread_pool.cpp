#include "core/thread_pool.h"

#include <algorithm>

namespace doppler {

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  for (int i = 1; i < threads; i++) workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

namespace {
int gGlobalThreads = 0;
}

void ThreadPool::setGlobalThreads(int n) { gGlobalThreads = n; }

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(gGlobalThreads);
  return pool;
}

void ThreadPool::workerLoop(int idx) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t)>* fn;
    int64_t b, e;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      b = std::min<int64_t>(n_, idx * chunk_);
      e = std::min<int64_t>(n_, b + chunk_);
    }
    if (b < e) (*fn)(b, e);
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
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
  int64_t chunk = (n + chunks - 1) / chunks;
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    pending_ = int(workers_.size());
    generation_++;
  }
  cv_.notify_all();
  fn(0, std::min<int64_t>(n, chunk));
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [&] { return pending_ == 0; });
}

}  // namespace doppler

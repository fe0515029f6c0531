// A fixed pool of worker threads (one per core by default) for data-parallel loops.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace doppler {

class ThreadPool {
 public:
  explicit ThreadPool(int threads = 0);  // 0: std::thread::hardware_concurrency()
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }  // the calling thread works too

  // Splits [0, n) into at most size() contiguous chunks of at least `grain` items and runs
  // fn(begin, end) on each; returns when all are done. Not re-entrant (don't call from inside fn).
  void parallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

  // The process-wide pool used by the CPU backend. setGlobalThreads(n) (n > 0) must come before the
  // first global() call to take effect (the CLI's --threads); 0 means one thread per core.
  static ThreadPool& global();
  static void setGlobalThreads(int n);

 private:
  void workerLoop(int idx);
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace doppler

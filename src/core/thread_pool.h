// A fixed pool of worker threads (one per core by default) for data-parallel loops.
//
// A decode step runs thousands of short parallel loops (one per matmul), so handing a loop to the workers must
// cost far less than the loop: the caller publishes it with one atomic increment, workers that finished their
// last loop less than spinMicros() ago are still spinning on that counter and start at once, and the caller
// spins for the last chunks likewise. Only a worker idle for longer sleeps on a condition variable (and is woken
// by the next loop), so an idle pool burns no CPU.
#pragma once
#include <atomic>
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
  // fn(begin, end) on each; returns when all are done. Calls from several threads take turns; not
  // re-entrant (don't call from inside fn).
  void parallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

  // The process-wide pool used by the CPU backend. setGlobalThreads(n) (n > 0) must come before the
  // first global() call to take effect (the CLI's --threads); 0 means one thread per core.
  static ThreadPool& global();
  static void setGlobalThreads(int n);

  // How long an idle worker (and a caller waiting for the last chunk) spins before it sleeps.
  static constexpr int spinMicros() { return 100; }

 private:
  void workerLoop(int idx);
  std::vector<std::thread> workers_;
  std::mutex callMu_;                      // one loop at a time
  std::mutex mu_;                          // guards sleeping (cv_, done_cv_) only
  std::condition_variable cv_, done_cv_;
  // The loop being run: written by parallelFor before it bumps generation_ (release), read by workers after
  // they see the new generation (acquire).
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};   // workers that have not finished the current loop
  std::atomic<int> sleepers_{0};  // workers asleep (or about to sleep) on cv_
  std::atomic<bool> callerAsleep_{false};
  std::atomic<bool> stop_{false};
};

}  // namespace doppler

// Memory read bandwidth of this machine: every worker of the thread pool sums its slice of a buffer
// (1 GiB by default, far larger than the caches); prints each run and the median.
//   membw [--mib N] [--runs R] [--threads T]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cpu/matmul.h"
#include "core/error.h"
#include "core/thread_pool.h"

int main(int argc, char** argv) {
  using namespace doppler;
  size_t mib = 1024;
  int runs = 9, threads = 0;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--mib" && i + 1 < argc) {
      mib = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::atoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: membw [--mib N] [--runs R] [--threads T]\n");
      return 2;
    }
  }
  try {
    ThreadPool pool(threads);
    std::printf("kernels: %s, threads: %d, buffer: %zu MiB, runs: %d\n", cpu::matmulKernelName(), pool.size(), mib,
                runs);
    cpu::ReadBandwidth bw = cpu::measureReadBandwidth(mib << 20, runs, pool);
    std::printf("read bandwidth: median %.2f GB/s (min %.2f, max %.2f)\n", bw.medianGBs, bw.minGBs, bw.maxGBs);
    if (pool.size() > 1) {
      ThreadPool one(1);
      cpu::ReadBandwidth b1 = cpu::measureReadBandwidth(mib << 20, runs, one);
      std::printf("one thread:     median %.2f GB/s (min %.2f, max %.2f)\n", b1.medianGBs, b1.minGBs, b1.maxGBs);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "membw: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

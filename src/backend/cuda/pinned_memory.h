// Pinned host memory for the host tier, got faster than cudaHostAlloc (issue #8).
//
// Measured on the H200 host (a VM; cuda_ops_bench "host memory"): cudaHostAlloc of 9 MiB took 18.9 ms (0.5 GB/s;
// 256 MiB: 2.5 GB/s) and holds the driver's lock meanwhile, so every other CUDA call of the process (a loader's
// copy, the compute thread's launches) waits for it. Most of that time is first-touch page faults. Here the memory
// is mapped by us with transparent huge pages asked for, faulted in by the calling thread without any CUDA lock
// (10 MiB: 3.0 ms), then registered (cudaHostRegister: 0.8 ms for 10 MiB, 43 GB/s at 256 MiB).
#pragma once
#include <cstddef>
#include <map>
#include <mutex>

namespace doppler::cuda {

class PinnedMemory {
 public:
  PinnedMemory() = default;
  ~PinnedMemory();  // unregisters and unmaps what is still held
  PinnedMemory(const PinnedMemory&) = delete;
  PinnedMemory& operator=(const PinnedMemory&) = delete;

  // Page-locked, registered memory of at least `bytes`; nullptr when mapping or registering fails (the caller falls
  // back to cudaHostAlloc).
  void* allocate(size_t bytes);
  // Unregisters and unmaps p; false when p did not come from allocate().
  bool release(void* p);

 private:
  std::mutex mu_;
  std::map<void*, std::pair<void*, size_t>> maps_;  // returned pointer -> (mapping, mapped bytes)
};

}  // namespace doppler::cuda

#include "backend/cuda/pinned_memory.h"

#include <cuda_runtime.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace doppler::cuda {

namespace {
constexpr size_t kHuge = size_t(2) << 20;  // a transparent huge page
}

void* PinnedMemory::allocate(size_t bytes) {
  if (bytes == 0) bytes = 1;
  const size_t len = (bytes + kHuge - 1) / kHuge * kHuge;
  // Map one huge page more than needed and start at a 2 MiB boundary, so that the kernel can use huge pages.
  const size_t mapped = len + kHuge;
  void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  auto* p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(m) + kHuge - 1) / kHuge * kHuge);
  madvise(p, len, MADV_HUGEPAGE);  // advice only: without transparent huge pages the faults are 4 KiB ones
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  for (size_t off = 0; off < len; off += page) p[off] = 0;  // fault every page in now, outside the driver
  if (cudaHostRegister(p, len, cudaHostRegisterPortable) != cudaSuccess) {
    cudaGetLastError();
    munmap(m, mapped);
    return nullptr;
  }
  std::lock_guard<std::mutex> lk(mu_);
  maps_[p] = {m, mapped};
  return p;
}

bool PinnedMemory::release(void* p) {
  std::pair<void*, size_t> m;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = maps_.find(p);
    if (it == maps_.end()) return false;
    m = it->second;
    maps_.erase(it);
  }
  cudaHostUnregister(p);
  munmap(m.first, m.second);
  return true;
}

PinnedMemory::~PinnedMemory() {
  for (auto& [p, m] : maps_) {
    cudaHostUnregister(p);
    munmap(m.first, m.second);
  }
}

}  // namespace doppler::cuda

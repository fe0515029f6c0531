// Bandwidth ceilings of the GPU (issue #8), measured in the same run as a benchmark: a large device-to-device
// copy (bytes read + bytes written per second) and pinned host-to-device copies. Zeros without a usable GPU.
#pragma once
#include <cstddef>

namespace doppler {

struct GpuBandwidth {
  double deviceCopyGBs = 0;  // 2 * bytes / time of cudaMemcpy device -> device, median of runs (1 GB = 1e9 B)
  double hostToDeviceGBs = 0;  // bytes / time from pinned host memory
  size_t bytes = 0;
  int runs = 0;
};

GpuBandwidth measureGpuBandwidth(size_t bytes = size_t(1) << 30, int runs = 9);

}  // namespace doppler

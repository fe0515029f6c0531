#include "memory/budget.h"

#include <algorithm>

namespace doppler {

uint64_t hostHeadroom(const HostMemory& host) {
  return std::max<uint64_t>(uint64_t(1) << 30, host.usable() / 10);
}

TierBudgets resolveBudgets(const Capabilities& caps, std::optional<uint64_t> vram, std::optional<uint64_t> ram,
                           uint64_t modelDiskBytes) {
  TierBudgets b;
  const uint64_t usable = caps.host.usable();
  const uint64_t headroom = hostHeadroom(caps.host);
  const uint64_t hostPool = usable > headroom ? usable - headroom : 0;  // what host + emulated device may take
  auto minus = [](uint64_t a, uint64_t x) { return a > x ? a - x : 0; };

  b.deviceGiven = vram.has_value();
  b.hostGiven = ram.has_value();
  if (caps.device.emulated || caps.device.unified) {
    // One physical pool: defaults split what is left so that device + host never exceed it.
    if (vram && ram) {
      b.device = *vram;
      b.host = *ram;
    } else if (vram) {
      b.device = *vram;
      b.host = minus(hostPool, *vram);
    } else if (ram) {
      b.host = *ram;
      b.device = minus(hostPool, *ram);
    } else {
      b.device = hostPool / 2;
      b.host = hostPool - b.device;
    }
  } else {
    const uint64_t devHeadroom = std::max<uint64_t>(uint64_t(512) << 20, caps.device.free / 10);
    b.device = vram ? *vram : minus(caps.device.free, devHeadroom);
    b.host = ram ? *ram : hostPool;
  }
  b.disk = modelDiskBytes + caps.disk.free;
  return b;
}

}  // namespace doppler

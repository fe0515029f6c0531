// Tier budgets: how many bytes of weights each tier may hold. Given on the command line (--vram, --ram) or
// defaulted from the detected capacities minus headroom (see docs/tiers.md):
//   headroom  = max(1 GiB, 10% of usable host RAM) left for activations, KV cache, the OS and other processes;
//   host      = usable host RAM - headroom (- the emulated device budget on the CPU backend);
//   device    = a real GPU: free device memory - max(512 MiB, 10%); the CPU backend's emulated device lives in
//               host RAM, so it and the host budget split (usable - headroom) and never add up to more;
//   disk      = the model's shard bytes + free space on the cache directory's filesystem.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

#include "memory/capabilities.h"

namespace doppler {

struct TierBudgets {
  uint64_t device = 0, host = 0, disk = 0;
  bool deviceGiven = false, hostGiven = false;  // from --vram / --ram (false: defaulted)
};

uint64_t hostHeadroom(const HostMemory& host);
// modelDiskBytes: bytes of the model's shards (0 when no model is involved).
TierBudgets resolveBudgets(const Capabilities& caps, std::optional<uint64_t> vram, std::optional<uint64_t> ram,
                           uint64_t modelDiskBytes = 0);

}  // namespace doppler

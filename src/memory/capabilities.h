// What memory this machine offers each tier: host RAM (/proc/meminfo, tightened by the cgroup v1 or v2
// memory limit of this process), free disk for the cache directory (statvfs), and device memory (from the
// backend; the CPU backend's device tier is emulated in host RAM). `doppler info --tiers` prints it.
// Parsers take file contents, and detection takes the roots of /proc and /sys/fs/cgroup, so tests can feed
// fake trees.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace doppler {

class Backend;

struct HostMemory {
  uint64_t total = 0;                      // MemTotal
  uint64_t available = 0;                  // MemAvailable (MemFree + Buffers + Cached on old kernels)
  std::optional<uint64_t> cgroupLimit;     // memory.max (v2) / memory.limit_in_bytes (v1); nullopt = unlimited
  uint64_t cgroupUsage = 0;                // memory.current (v2) / memory.usage_in_bytes (v1)
  int cgroupVersion = 0;                   // 0 = no memory cgroup found, 1 or 2
  std::string cgroupPath;                  // the directory the limit was read from
  // What this process can still use: min(available, limit - usage).
  uint64_t usable() const;
};

struct DiskSpace {
  std::string path;        // the directory asked about (the cache root)
  std::string statPath;    // the existing directory statvfs was run on (path or its nearest existing parent)
  uint64_t total = 0, free = 0;  // free = blocks available to unprivileged users
};

struct DeviceMemory {
  std::string backend;     // Backend::name()
  bool emulated = false;   // CPU backend: the device tier is host RAM with its own budget and explicit copies
  bool unified = false;    // host and device share one pool (integrated GPU, Grace Hopper): nothing copied twice
  uint64_t total = 0, free = 0;
};

struct Capabilities {
  HostMemory host;
  DiskSpace disk;
  DeviceMemory device;
};

// ---- parsers (pure; `what` names the file in errors) ----
// /proc/meminfo: needs MemTotal; MemAvailable, or else MemFree + Buffers + Cached. Error if MemTotal is missing.
HostMemory parseMeminfo(std::string_view text, const std::string& what);
// cgroup v2 memory.max / cgroup v1 memory.limit_in_bytes: "max" or a byte count; v1's "unlimited" is a huge
// number (>= 2^62), read as nullopt. Error on anything else.
std::optional<uint64_t> parseCgroupLimit(std::string_view text, const std::string& what);

// ---- detection ----
// procRoot: normally "/proc"; cgroupRoot: normally "/sys/fs/cgroup". Reads <procRoot>/meminfo and
// <procRoot>/self/cgroup, then the memory controller's files: v2 "0::/p" -> <cgroupRoot>/p/memory.max (walking
// up to the root, the tightest limit wins); v1 "N:...memory...:/p" -> <cgroupRoot>/memory/p/memory.limit_in_bytes
// (falling back to <cgroupRoot>/memory/ when /p is not visible, as inside a container).
HostMemory detectHostMemory(const std::string& procRoot = "/proc", const std::string& cgroupRoot = "/sys/fs/cgroup");
// statvfs on `dir`, or its nearest existing parent when it does not exist yet.
DiskSpace detectDiskSpace(const std::string& dir);
// Device memory as the backend reports it. The CPU backend emulates its device tier in host RAM: total and
// free are then the host's total and usable RAM.
DeviceMemory detectDeviceMemory(const Backend& backend, const HostMemory& host);
Capabilities detectCapabilities(const Backend& backend, const std::string& cacheDir);

}  // namespace doppler

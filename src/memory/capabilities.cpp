#include "memory/capabilities.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <sstream>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "core/fs_util.h"

namespace doppler {

uint64_t HostMemory::usable() const {
  uint64_t u = available;
  if (cgroupLimit) u = std::min(u, *cgroupLimit > cgroupUsage ? *cgroupLimit - cgroupUsage : 0);
  return u;
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

bool parseU64(std::string_view s, uint64_t& out) {
  s = trim(s);
  if (s.empty() || s.size() > 20) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    if (__builtin_mul_overflow(v, uint64_t(10), &v) || __builtin_add_overflow(v, uint64_t(c - '0'), &v)) return false;
  }
  out = v;
  return true;
}

// Reads a small file; nullopt when it cannot be opened.
std::optional<std::string> tryRead(const std::string& path) {
  if (!isRegularFile(path)) return std::nullopt;
  try {
    return readFile(path);
  } catch (const Error&) {
    return std::nullopt;
  }
}

std::string normalisePath(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

}  // namespace

HostMemory parseMeminfo(std::string_view text, const std::string& what) {
  std::map<std::string, uint64_t, std::less<>> kv;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() : nl + 1;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string key(trim(line.substr(0, colon)));
    std::string_view rest = trim(line.substr(colon + 1));
    uint64_t mult = 1;
    if (rest.size() >= 2 && (rest.ends_with("kB") || rest.ends_with("KB"))) {
      mult = 1024;
      rest = trim(rest.substr(0, rest.size() - 2));
    }
    uint64_t v;
    if (!parseU64(rest, v)) continue;  // lines we do not need may hold anything
    kv[key] = v * mult;
  }
  auto get = [&](const char* k) -> std::optional<uint64_t> {
    auto it = kv.find(k);
    if (it == kv.end()) return std::nullopt;
    return it->second;
  };
  HostMemory h;
  auto total = get("MemTotal");
  check(total.has_value(), "{}: no MemTotal line", what);
  h.total = *total;
  if (auto a = get("MemAvailable")) {
    h.available = *a;
  } else {
    h.available = get("MemFree").value_or(0) + get("Buffers").value_or(0) + get("Cached").value_or(0);
  }
  h.available = std::min(h.available, h.total);
  return h;
}

std::optional<uint64_t> parseCgroupLimit(std::string_view text, const std::string& what) {
  std::string_view s = trim(text);
  if (s == "max") return std::nullopt;
  uint64_t v;
  check(parseU64(s, v), "{}: expected 'max' or a byte count, got '{}'", what, std::string(s.substr(0, 40)));
  if (v >= (uint64_t(1) << 62)) return std::nullopt;  // cgroup v1 writes "unlimited" as ~2^63 rounded to a page
  return v;
}

HostMemory detectHostMemory(const std::string& procRoot, const std::string& cgroupRoot) {
  const std::string meminfo = joinPath(procRoot, "meminfo");
  HostMemory h = parseMeminfo(readFile(meminfo), meminfo);

  // /proc/self/cgroup: "hierarchy-id:controllers:path" per line.
  auto cg = tryRead(joinPath(procRoot, "self/cgroup"));
  if (!cg) return h;
  std::optional<std::string> v1Path, v2Path;
  std::istringstream in(*cg);
  for (std::string line; std::getline(in, line);) {
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? std::string::npos : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string id = line.substr(0, a), ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (id == "0" && ctrls.empty()) {
      v2Path = path;
      continue;
    }
    std::istringstream cs(ctrls);
    for (std::string c; std::getline(cs, c, ',');)
      if (c == "memory") v1Path = path;
  }

  // The tightest limit from `dir` up to `top` (limits of ancestors bind too).
  auto walk = [&](const std::string& top, std::string rel, const char* limitFile, const char* usageFile,
                  int version) -> bool {
    rel = normalisePath(rel.empty() ? "/" : rel);
    bool found = false;
    for (;;) {
      std::string dir = rel == "/" ? top : joinPath(top, rel.substr(1));
      std::string lim = joinPath(dir, limitFile);
      if (auto t = tryRead(lim)) {
        auto l = parseCgroupLimit(*t, lim);
        if (!found) {  // usage of the process's own (deepest visible) group
          if (auto u = tryRead(joinPath(dir, usageFile))) {
            uint64_t v;
            if (parseU64(*u, v)) h.cgroupUsage = v;
          }
          h.cgroupPath = dir;
          h.cgroupVersion = version;
          found = true;
        }
        if (l && (!h.cgroupLimit || *l < *h.cgroupLimit)) {
          h.cgroupLimit = l;
          h.cgroupPath = dir;
          if (auto u = tryRead(joinPath(dir, usageFile))) {
            uint64_t v;
            if (parseU64(*u, v)) h.cgroupUsage = v;
          }
        }
      }
      if (rel == "/") break;
      rel = parentDir(rel);
    }
    return found;
  };

  // cgroup v2 (unified, with the memory controller) first; hybrid hosts put v1's memory controller beside an
  // empty v2 hierarchy, so fall back to v1 when no memory.max is visible.
  bool done = false;
  if (v2Path) {
    for (const std::string& top : {cgroupRoot, joinPath(cgroupRoot, "unified")}) {
      if (walk(top, *v2Path, "memory.max", "memory.current", 2)) {
        done = true;
        break;
      }
    }
  }
  if (!done && v1Path) {
    const std::string top = joinPath(cgroupRoot, "memory");
    if (!walk(top, *v1Path, "memory.limit_in_bytes", "memory.usage_in_bytes", 1))
      walk(top, "/", "memory.limit_in_bytes", "memory.usage_in_bytes", 1);  // namespaced: only the root visible
  }
  return h;
}

DiskSpace detectDiskSpace(const std::string& dir) {
  DiskSpace d;
  d.path = dir;
  std::string p = dir.empty() ? "." : dir;
  while (!isDirectory(p)) {
    std::string parent = parentDir(p);
    if (parent == p) break;
    p = parent;
  }
  d.statPath = p;
  struct statvfs st {};
  if (::statvfs(p.c_str(), &st) != 0) fail("{}: statvfs failed: {}", p, std::strerror(errno));
  d.total = uint64_t(st.f_blocks) * st.f_frsize;
  d.free = uint64_t(st.f_bavail) * st.f_frsize;
  return d;
}

DeviceMemory detectDeviceMemory(const Backend& backend, const HostMemory& host) {
  DeviceMemory d;
  d.backend = backend.name();
  // The Backend interface has no memory query yet (the CUDA backend will add one); the CPU backend's device
  // tier is an emulated pool in host RAM.
  if (d.backend.rfind("cpu", 0) == 0) {
    d.emulated = true;
    d.unified = false;  // copies into the emulated pool are real copies, exactly as on a discrete GPU
    d.total = host.cgroupLimit ? std::min(host.total, *host.cgroupLimit) : host.total;
    d.free = host.usable();
  } else if (uint64_t total = 0, free = 0; backend.deviceMemory(&total, &free)) {
    d.total = total;  // a GPU (CUDA backend): its own memory, copies over PCIe
    d.free = free;
  }
  return d;
}

Capabilities detectCapabilities(const Backend& backend, const std::string& cacheDir) {
  Capabilities c;
  c.host = detectHostMemory();
  c.disk = detectDiskSpace(cacheDir);
  c.device = detectDeviceMemory(backend, c.host);
  return c;
}

}  // namespace doppler

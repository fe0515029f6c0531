// Issue #4: capability detection (meminfo, cgroup v1/v2 limits, statvfs), budgets and the budgeted pools.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include <filesystem>
#include <fstream>

#include "backend/backend.h"
#include "core/error.h"
#include "memory/budget.h"
#include "memory/capabilities.h"
#include "memory/pool.h"
#include "test_util.h"

using namespace doppler;
using doppler::test::TempDir;

namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20, kGiB = uint64_t(1) << 30;

void put(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

TEST(TiersCapabilities, ParsesMeminfo) {
  HostMemory h = parseMeminfo(
      "MemTotal:       24683620 kB\nMemFree:         1000000 kB\nMemAvailable:   21247056 kB\n"
      "Buffers:          100 kB\nHugePages_Total:       0\n",
      "meminfo");
  EXPECT_EQ(h.total, 24683620ull * 1024);
  EXPECT_EQ(h.available, 21247056ull * 1024);
  EXPECT_FALSE(h.cgroupLimit.has_value());
  EXPECT_EQ(h.usable(), h.available);
  // Old kernels: no MemAvailable -> MemFree + Buffers + Cached.
  HostMemory old = parseMeminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n", "m");
  EXPECT_EQ(old.available, 420ull * 1024);
  try {
    parseMeminfo("MemFree: 1 kB\n", "/proc/meminfo");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/proc/meminfo: no MemTotal"), std::string::npos) << e.what();
  }
}

TEST(TiersCapabilities, ParsesCgroupLimits) {
  EXPECT_FALSE(parseCgroupLimit("max\n", "memory.max").has_value());
  EXPECT_FALSE(parseCgroupLimit("9223372036854771712\n", "memory.limit_in_bytes").has_value());  // v1 unlimited
  EXPECT_EQ(parseCgroupLimit("1073741824\n", "memory.max"), std::optional<uint64_t>(kGiB));
  EXPECT_THROW(parseCgroupLimit("12abc", "memory.max"), Error);
  EXPECT_THROW(parseCgroupLimit("", "memory.max"), Error);
}

TEST(TiersCapabilities, CgroupV2TightestAncestorWins) {
  TempDir t;
  put(t / "proc/meminfo", "MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n");  // 16 GiB, 8 GiB available
  put(t / "proc/self/cgroup", "0::/a/b\n");
  put(t / "cg/a/b/memory.max", "max\n");
  put(t / "cg/a/b/memory.current", "104857600\n");
  put(t / "cg/a/memory.max", "2147483648\n");  // 2 GiB on the parent binds
  put(t / "cg/a/memory.current", "536870912\n");
  HostMemory h = detectHostMemory(t / "proc", t / "cg");
  EXPECT_EQ(h.cgroupVersion, 2);
  ASSERT_TRUE(h.cgroupLimit.has_value());
  EXPECT_EQ(*h.cgroupLimit, 2 * kGiB);
  EXPECT_EQ(h.cgroupUsage, 512 * kMiB);
  EXPECT_EQ(h.usable(), 2 * kGiB - 512 * kMiB);  // below MemAvailable
}

TEST(TiersCapabilities, CgroupV1AndHybrid) {
  TempDir t;
  put(t / "proc/meminfo", "MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n");
  // Hybrid host: an empty v2 hierarchy ("0::/") beside the v1 memory controller.
  put(t / "proc/self/cgroup", "9:name=systemd:/\n4:memory:/job/42\n0::/\n");
  put(t / "cg/unified/cgroup.procs", "");
  put(t / "cg/memory/job/42/memory.limit_in_bytes", "1073741824\n");
  put(t / "cg/memory/job/42/memory.usage_in_bytes", "268435456\n");
  put(t / "cg/memory/memory.limit_in_bytes", "9223372036854771712\n");
  HostMemory h = detectHostMemory(t / "proc", t / "cg");
  EXPECT_EQ(h.cgroupVersion, 1);
  EXPECT_EQ(h.cgroupLimit, std::optional<uint64_t>(kGiB));
  EXPECT_EQ(h.usable(), kGiB - 256 * kMiB);

  // Inside a container the process's path is not visible under the mount: the mount root's files apply.
  TempDir c;
  put(c / "proc/meminfo", "MemTotal: 16777216 kB\nMemAvailable: 8388608 kB\n");
  put(c / "proc/self/cgroup", "4:memory,hugetlb:/docker/abc\n");
  put(c / "cg/memory/memory.limit_in_bytes", "536870912\n");
  put(c / "cg/memory/memory.usage_in_bytes", "0\n");
  HostMemory hc = detectHostMemory(c / "proc", c / "cg");
  EXPECT_EQ(hc.cgroupLimit, std::optional<uint64_t>(512 * kMiB));

  // No cgroup file at all: meminfo only.
  TempDir n;
  put(n / "proc/meminfo", "MemTotal: 1024 kB\nMemAvailable: 512 kB\n");
  HostMemory hn = detectHostMemory(n / "proc", n / "cg");
  EXPECT_EQ(hn.cgroupVersion, 0);
  EXPECT_EQ(hn.usable(), 512u * 1024);
}

TEST(TiersCapabilities, DetectsThisMachine) {
  HostMemory h = detectHostMemory();
  EXPECT_GT(h.total, 64 * kMiB);
  EXPECT_GT(h.available, 0u);
  EXPECT_LE(h.available, h.total);
  TempDir t;
  DiskSpace d = detectDiskSpace(t / "not/yet/created");
  EXPECT_EQ(d.statPath, t.path());  // nearest existing parent
  EXPECT_GT(d.total, 0u);
  EXPECT_LE(d.free, d.total);
  auto b = makeCpuBackend();
  DeviceMemory dev = detectDeviceMemory(*b, h);
  EXPECT_TRUE(dev.emulated);
  EXPECT_EQ(dev.free, h.usable());
}

TEST(TiersBudgets, DefaultsSplitTheEmulatedPool) {
  Capabilities c;
  c.host.total = 32 * kGiB;
  c.host.available = 20 * kGiB;
  c.device.emulated = true;
  c.disk.free = 100 * kGiB;
  const uint64_t headroom = hostHeadroom(c.host);
  EXPECT_EQ(headroom, 2 * kGiB);  // 10% of 20 GiB > 1 GiB
  TierBudgets b = resolveBudgets(c, std::nullopt, std::nullopt, 5 * kGiB);
  EXPECT_EQ(b.device + b.host, 18 * kGiB);
  EXPECT_EQ(b.device, 9 * kGiB);
  EXPECT_EQ(b.disk, 105 * kGiB);
  EXPECT_FALSE(b.deviceGiven || b.hostGiven);
  b = resolveBudgets(c, 4 * kGiB, std::nullopt);
  EXPECT_EQ(b.device, 4 * kGiB);
  EXPECT_EQ(b.host, 14 * kGiB);
  EXPECT_TRUE(b.deviceGiven);
  b = resolveBudgets(c, std::nullopt, 1 * kGiB);
  EXPECT_EQ(b.device, 17 * kGiB);
  b = resolveBudgets(c, 100 * kMiB, 200 * kMiB);
  EXPECT_EQ(b.device, 100 * kMiB);
  EXPECT_EQ(b.host, 200 * kMiB);
  // A cgroup limit shrinks what is usable.
  c.host.cgroupLimit = 4 * kGiB;
  c.host.cgroupUsage = 1 * kGiB;
  b = resolveBudgets(c, std::nullopt, std::nullopt);
  EXPECT_EQ(b.device + b.host, 2 * kGiB);  // 3 GiB usable - 1 GiB headroom
  // A discrete GPU keeps its own headroom and leaves host RAM to the host tier.
  Capabilities g = c;
  g.device.emulated = false;
  g.device.free = 24 * kGiB;
  b = resolveBudgets(g, std::nullopt, std::nullopt);
  EXPECT_EQ(b.device, 24 * kGiB - 24 * kGiB / 10);
  EXPECT_EQ(b.host, 2 * kGiB);
}

TEST(TiersPool, EnforcesBudgetAndTracksPeak) {
  auto b = makeCpuBackend();
  TierPool pool(*b, Tier::Device, 1000);
  EXPECT_EQ(TierPool::accounted(1), 64u);
  EXPECT_EQ(TierPool::accounted(64), 64u);
  EXPECT_EQ(TierPool::accounted(65), 128u);
  void* a = pool.tryAllocate(500);  // 512 accounted
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(pool.inUse(), 512u);
  void* c = pool.tryAllocate(500);  // 1024 > 1000
  EXPECT_EQ(c, nullptr);
  void* d = pool.tryAllocate(400);  // 448 -> 960
  ASSERT_NE(d, nullptr);
  std::memset(a, 1, 500);
  std::memset(d, 2, 400);
  EXPECT_EQ(pool.peak(), 960u);
  EXPECT_EQ(pool.available(), 40u);
  pool.release(a, 500);
  EXPECT_EQ(pool.inUse(), 448u);
  void* e = pool.tryAllocate(64);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(pool.peak(), 960u);  // high-water mark stays
  pool.release(d, 400);
  pool.release(e, 64);
  EXPECT_EQ(pool.inUse(), 0u);
  EXPECT_EQ(pool.allocations(), 3u);
  EXPECT_EQ(pool.tryAllocate(2000), nullptr);
}

// Released buffers are reused for the same size, and given back when another size needs the room: the bytes
// held (in use + kept) never exceed the budget.
TEST(TiersPool, KeepsReleasedBuffersWithinTheBudget) {
  auto b = makeCpuBackend();
  TierPool pool(*b, Tier::Device, 1024);
  void* a = pool.tryAllocate(512);
  void* c = pool.tryAllocate(256);
  ASSERT_TRUE(a && c);
  pool.release(a, 512);
  EXPECT_EQ(pool.inUse(), 256u);
  EXPECT_EQ(pool.kept(), 512u);
  void* again = pool.tryAllocate(500);  // accounted 512: the kept buffer comes back
  EXPECT_EQ(again, a);
  EXPECT_EQ(pool.kept(), 0u);
  pool.release(again, 500);
  void* big = pool.tryAllocate(768);  // 256 + 512 kept + 768 > 1024: the kept buffer is given back first
  ASSERT_NE(big, nullptr);
  EXPECT_EQ(pool.kept(), 0u);
  EXPECT_EQ(pool.inUse(), 1024u);
  EXPECT_LE(pool.inUse() + pool.kept(), pool.budget());
  EXPECT_EQ(pool.tryAllocate(64), nullptr);
  pool.release(big, 768);
  pool.release(c, 256);
  EXPECT_EQ(pool.inUse(), 0u);
  EXPECT_EQ(pool.kept(), 1024u);
  EXPECT_EQ(pool.peak(), 1024u);
}

// grow() gets buffers ahead of demand within the budget; tryAllocate hands them out, and waits for a grow in flight
// rather than allocating beside it. Concurrent growing, allocating and releasing keep in use + kept <= budget.
TEST(TiersPool, GrowsAheadWithinTheBudget) {
  auto b = makeCpuBackend();
  TierPool pool(*b, Tier::Host, 4 * 512 + 100);
  EXPECT_TRUE(pool.grow(500));
  EXPECT_TRUE(pool.grow(500));
  EXPECT_EQ(pool.kept(), 1024u);
  EXPECT_EQ(pool.keptOf(500), 1024u);
  EXPECT_EQ(pool.keptOf(64), 0u);
  EXPECT_EQ(pool.inUse(), 0u);
  void* a = pool.tryAllocate(512);  // a grown buffer
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(pool.keptOf(512), 512u);
  EXPECT_TRUE(pool.grow(512));
  EXPECT_TRUE(pool.grow(512));
  EXPECT_FALSE(pool.grow(512));  // 512 in use + 3 x 512 kept: no room for a fifth
  EXPECT_FALSE(pool.grow(8192));
  EXPECT_LE(pool.inUse() + pool.kept(), pool.budget());
  pool.release(a, 512);

  TierPool busy(*b, Tier::Host, 8 * 4096);
  std::atomic<bool> done{false};
  std::thread grower([&] {
    while (!done.load()) busy.grow(4096);
  });
  for (int i = 0; i < 2000; i++) {
    std::vector<void*> got;
    for (int k = 0; k < 1 + i % 8; k++)
      if (void* p = busy.tryAllocate(k % 3 ? 4096 : 1000)) got.push_back(p);
    EXPECT_LE(busy.inUse() + busy.kept(), busy.budget());
    EXPECT_FALSE(got.empty());
    for (size_t k = 0; k < got.size(); k++) busy.release(got[k], k % 3 ? 4096 : 1000);
  }
  done = true;
  grower.join();
  EXPECT_EQ(busy.inUse(), 0u);
  EXPECT_LE(busy.kept(), busy.budget());
}

}  // namespace

// Issue #4: units (one contiguous read per expert, views equal to the stored tensors), placement, and the tier
// cache's policy: misses then hits, pinning, value-based eviction (frequency beats one-off recency), host
// staging, prefetch accounting.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "convert/convert.h"
#include "core/error.h"
#include "loader/placement.h"
#include "loader/tier_cache.h"
#include "loader/units.h"
#include "test_util.h"

using namespace doppler;
using doppler::test::TempDir;

namespace {

std::string convert(const TempDir& tmp, const std::string& arch, const ConvertOptions& base = {}) {
  ConvertOptions o = base;
  o.sync = false;
  convertHfToRdrr(test::dataPath("hf/" + arch), tmp / (arch + ".rdrr"), o);
  return tmp / (arch + ".rdrr");
}

// Every tensor of every unit, read through the unit, equals the reader's own readTensor (row/column layouts,
// TP slices reassembled, fused parts cut out).
void expectUnitsMatchReader(const RdrrModel& m) {
  const TierPlan p = planTiers(m, uint64_t(1) << 50, uint64_t(1) << 50, false);
  size_t tensors = 0;
  for (const Unit& u : p.units) {
    std::vector<uint8_t> buf(u.bytes);
    readUnit(m, u, buf.data());
    if (u.kind == UnitKind::Expert) {
      ASSERT_EQ(u.reads.size(), 1u) << u.label;  // one expert = one contiguous read of its group
      EXPECT_EQ(u.reads[0].size, m.groupSpan(u.label).size);
    }
    for (const UnitTensor& t : u.tensors) {
      std::vector<uint8_t> want = m.readTensor(t.name);
      ASSERT_EQ(want.size(), t.bytes) << t.name;
      ASSERT_LE(t.offset + t.bytes, u.bytes) << t.name;
      EXPECT_EQ(std::memcmp(buf.data() + t.offset, want.data(), want.size()), 0) << u.label << ": " << t.name;
      EXPECT_EQ(t.shape, m.shape(t.name)) << t.name;
      tensors++;
    }
  }
  EXPECT_GT(tensors, 20u);
}

TEST(PagingUnits, ViewsEqualStoredTensors) {
  TempDir tmp;
  ConvertOptions row, col, sliced, fused;
  col.layout = Layout::Column;
  sliced.tp = 2;  // row-layout TP slices: reassembled by gathers inside the unit
  fused.fuseGateUp = true;
  fused.fuseQkv = true;
  int i = 0;
  for (const ConvertOptions& o : {row, col, sliced, fused}) {
    SCOPED_TRACE(i);
    TempDir t;
    auto m = RdrrModel::open(convert(t, "mixtral", o));
    expectUnitsMatchReader(*m);
    i++;
  }
  ConvertOptions colSliced;
  colSliced.layout = Layout::Column;
  colSliced.tp = 2;
  auto m = RdrrModel::open(convert(tmp, "qwen3_moe", colSliced));
  expectUnitsMatchReader(*m);
}

// Units read in small pieces by several threads give the same bytes; a shard cut short on disk fails the read with
// an Error naming the file (every reader stops; nothing hangs).
TEST(PagingUnits, ParallelPiecesAndTruncatedShard) {
  TempDir tmp;
  const std::string dir = convert(tmp, "mixtral");
  auto m = RdrrModel::open(dir);
  const TierPlan p = planTiers(*m, uint64_t(1) << 50, uint64_t(1) << 50, false);
  const Unit* biggest = &p.units[0];
  for (const Unit& u : p.units) {
    std::vector<uint8_t> whole(u.bytes), pieces(u.bytes);
    readUnit(*m, u, whole.data());
    readUnit(*m, u, pieces.data(), 64);
    EXPECT_EQ(whole, pieces) << u.label;
    if (u.readBytes > biggest->readBytes) biggest = &u;
  }
  ASSERT_GT(biggest->readBytes, 64u * 8);  // several pieces per reader
  const int shard = biggest->reads[0].shard;
  const std::string path = dir + "/" + m->manifest().shards[size_t(shard)].filename;
  // Cut short after it was opened (opening checks shard sizes itself).
  std::filesystem::resize_file(path, biggest->reads[0].fileOffset + biggest->reads[0].size / 2);
  std::vector<uint8_t> buf(biggest->bytes);
  try {
    readUnit(*m, *biggest, buf.data(), 64);
    FAIL() << "read of a truncated shard succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("end of file"), std::string::npos) << e.what();
  }
}

TEST(PagingPlan, ModesAndMinimums) {
  TempDir tmp;
  auto m = RdrrModel::open(convert(tmp, "mixtral"));
  const TierPlan big = planTiers(*m, uint64_t(1) << 50, uint64_t(1) << 50);
  EXPECT_FALSE(big.denseStreamed);
  EXPECT_EQ(big.expertCount, 24u);  // 3 layers x 8 experts
  EXPECT_EQ(big.topK, 2);
  EXPECT_EQ(big.deviceMinimumResident, big.residentBytes + 2 * big.maxExpertBytes);
  EXPECT_LT(big.deviceMinimumStreamed, big.deviceMinimumResident);
  for (int l = 0; l < 3; l++) {
    EXPECT_EQ(big.denseUnit[size_t(l)], -1);
    for (int e = 0; e < 8; e++) EXPECT_GE(big.expertUnit[size_t(l)][size_t(e)], 0);
  }
  const TierPlan streamed = planTiers(*m, big.deviceMinimumResident - 1, uint64_t(1) << 30);
  EXPECT_TRUE(streamed.denseStreamed);
  EXPECT_GE(streamed.denseUnit[1], 0);
  // Routers and norms stay resident when their layer streams.
  auto router = streamed.byName.at("layers.1.router.weight");
  EXPECT_TRUE(streamed.resident[size_t(router.first)]);
  auto q = streamed.byName.at("layers.1.attn.q.weight");
  EXPECT_FALSE(streamed.resident[size_t(q.first)]);
  EXPECT_THROW(planTiers(*m, streamed.deviceMinimumStreamed - 1, uint64_t(1) << 30), Error);
  EXPECT_THROW(planTiers(*m, uint64_t(1) << 40, streamed.hostMinimum - 1), Error);
}

// A plan on the mixtral fixture whose device tier holds the resident part plus `experts` experts.
struct Rig {
  TempDir tmp;
  std::unique_ptr<RdrrModel> m;
  std::unique_ptr<Backend> b = makeCpuBackend();
  TierPlan plan;
  std::unique_ptr<TierCache> cache;
  Rig(uint64_t experts, uint64_t hostExperts, bool prefetch = true, uint64_t hostReserve = 0) {
    m = RdrrModel::open(convert(tmp, "mixtral"));
    TierPlan sizes = planTiers(*m, uint64_t(1) << 50, uint64_t(1) << 50, false);
    const uint64_t dev = sizes.residentBytes + experts * sizes.maxExpertBytes;
    const uint64_t host = hostExperts * sizes.maxExpertBytes;
    plan = planTiers(*m, dev, host);
    TierCacheOptions o;
    o.prefetch = prefetch;
    o.hostReserveBytes = hostReserve;
    cache = std::make_unique<TierCache>(*m, *b, plan, dev, host, o);
  }
  int unit(int l, int e) const { return plan.expertUnit[size_t(l)][size_t(e)]; }
  void use(int l, int e) {
    cache->advance(l);
    const int u = unit(l, e);
    const uint8_t* p = cache->acquire(u);
    // The device copy holds the expert's bytes.
    const UnitTensor* t = plan.units[size_t(u)].find(fmt::format("layers.{}.experts.{}.down.weight", l, e));
    ASSERT_NE(t, nullptr);
    auto want = m->readTensor(t->name);
    EXPECT_EQ(std::memcmp(p + t->offset, want.data(), want.size()), 0);
    cache->release(u);
  }
  bool waitResident(int u) {
    for (int i = 0; i < 500 && !cache->deviceResident(u); i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return cache->deviceResident(u);
  }
};

TEST(PagingCache, MissThenHitAndPeakWithinBudget) {
  Rig r(3, 8);
  ASSERT_FALSE(r.plan.denseStreamed);
  r.use(0, 1);
  TierCacheStats s = r.cache->stats();
  EXPECT_EQ(s.device.misses, 1u);
  EXPECT_EQ(s.host.misses, 1u);
  EXPECT_EQ(s.disk.bytesOut - 0, s.host.bytesIn);
  r.use(0, 1);
  s = r.cache->stats();
  EXPECT_EQ(s.device.hits, 1u);
  EXPECT_EQ(s.device.misses, 1u);
  EXPECT_EQ(r.cache->pins(r.unit(0, 1)), 0);
  // Cycle through more experts than fit: device evicts, host (8 experts) keeps the recent ones.
  for (int e = 0; e < 8; e++) r.use(1, e);
  s = r.cache->stats();
  EXPECT_GT(s.device.evictions, 0u);
  EXPECT_LE(s.device.peakBytes, s.device.budgetBytes);
  EXPECT_LE(s.host.peakBytes, s.host.budgetBytes);
  EXPECT_EQ(s.deviceUnits, 3u);
  // (0, 1), used twice, outranks the one-off experts and stays; (1, 0) left the device but host RAM (8 experts)
  // still has it: a device miss that hits in host RAM.
  EXPECT_TRUE(r.cache->deviceResident(r.unit(0, 1)));
  EXPECT_FALSE(r.cache->deviceResident(r.unit(1, 0)));
  EXPECT_TRUE(r.cache->hostResident(r.unit(1, 0)));
  const uint64_t hostHits = s.host.hits, diskReads = s.disk.hits;
  r.use(1, 0);
  s = r.cache->stats();
  EXPECT_EQ(s.host.hits, hostHits + 1);
  EXPECT_EQ(s.disk.hits, diskReads);
}

TEST(PagingCache, PinnedNeverEvictedAndFrequencyBeatsRecency) {
  Rig r(3, 24, /*prefetch=*/false);
  // Pin (0, 0) and keep it pinned while many others come and go.
  r.cache->advance(0);
  const int pinned = r.unit(0, 0);
  r.cache->acquire(pinned);
  // (0, 1) is used often: its value (decayed activation count) stays above the one-off experts'.
  for (int i = 0; i < 6; i++) r.use(0, 1);
  for (int l = 1; l < 3; l++)
    for (int e = 0; e < 8; e++) {
      r.use(l, e);
      EXPECT_TRUE(r.cache->deviceResident(pinned));
    }
  EXPECT_TRUE(r.cache->deviceResident(r.unit(0, 1))) << "a frequently used expert was evicted before one-off ones";
  EXPECT_EQ(r.cache->pins(pinned), 1);
  r.cache->release(pinned);
  EXPECT_EQ(r.cache->pins(pinned), 0);
  TierCacheStats s = r.cache->stats();
  EXPECT_EQ(s.device.misses, 1u + 1u + 16u);
  EXPECT_EQ(s.prefetch.issued, 0u);
}

TEST(PagingCache, HostTierStagesAndEvicts) {
  Rig r(2, 2);  // host holds 2 experts
  for (int e = 0; e < 6; e++) r.use(2, e);
  TierCacheStats s = r.cache->stats();
  EXPECT_EQ(s.host.misses, 6u);
  EXPECT_GE(s.host.evictions, 4u);
  EXPECT_LE(s.host.peakBytes, s.host.budgetBytes);
  EXPECT_LE(s.hostUnits, 2u);
}

// The host reserve: a thread gets host buffers before loads need them, refills what loads take, and stays within
// the host budget (in use + kept); loads still read the right bytes (Rig::use compares them).
TEST(PagingCache, HostReserveIsReadyAheadAndWithinBudget) {
  TempDir probe;
  auto m = RdrrModel::open(convert(probe, "mixtral"));
  const uint64_t expert = TierPool::accounted(planTiers(*m, uint64_t(1) << 50, uint64_t(1) << 50, false).maxExpertBytes);
  Rig r(3, 8, /*prefetch=*/true, /*hostReserve=*/3 * expert);
  auto waitKept = [&](uint64_t want) {
    for (int i = 0; i < 400 && r.cache->hostReserveBytes() != want; i++)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return r.cache->hostReserveBytes();
  };
  EXPECT_EQ(waitKept(3 * expert), 3 * expert);  // ready before any load
  r.use(0, 0);
  r.use(0, 1);
  EXPECT_EQ(waitKept(3 * expert), 3 * expert);  // refilled: 2 in use + 3 kept <= 8
  for (int e = 2; e < 8; e++) r.use(0, e);      // 8 in use: the budget is full, nothing kept
  TierCacheStats s = r.cache->stats();
  EXPECT_EQ(s.host.misses, 8u);
  EXPECT_LE(s.host.residentBytes + r.cache->hostKeptBytes(), s.host.budgetBytes);
  for (int e = 0; e < 8; e++) r.use(1, e);  // evictions from now on
  s = r.cache->stats();
  EXPECT_GE(s.host.evictions, 8u);
  EXPECT_LE(s.host.peakBytes, s.host.budgetBytes);
  EXPECT_LE(s.host.residentBytes + r.cache->hostKeptBytes(), s.host.budgetBytes);
}

TEST(PagingCache, PrefetchUsedWastedAndDropped) {
  Rig r(4, 24);
  const int a = r.unit(0, 3), b = r.unit(1, 5);
  r.cache->advance(0);
  const int needed[] = {a};
  r.cache->prefetch(needed, PrefetchHint::Needed, 0);
  const int predicted[] = {b};
  r.cache->prefetch(predicted, PrefetchHint::Predicted, 1);
  ASSERT_TRUE(r.waitResident(a));
  ASSERT_TRUE(r.waitResident(b));
  r.use(0, 3);  // used
  TierCacheStats s = r.cache->stats();
  EXPECT_EQ(s.prefetch.issued, 2u);
  EXPECT_EQ(s.prefetch.used, 1u);
  EXPECT_EQ(s.device.misses, 0u);
  EXPECT_EQ(s.prefetch.pending, 1u);
  r.cache->advance(1);  // layer 1 runs without expert (1, 5) ...
  r.cache->advance(2);  // ... and is over: the prediction was wasted
  s = r.cache->stats();
  EXPECT_EQ(s.prefetch.wasted, 1u);
  EXPECT_EQ(s.prefetch.pending, 0u);
}

TEST(PagingCache, PredictionDroppedWhenOnlyPinnedUnitsCouldMakeRoom) {
  Rig r(2, 24);
  r.cache->advance(0);
  const int a = r.unit(0, 0), b = r.unit(0, 1);
  r.cache->acquire(a);
  r.cache->acquire(b);  // the device tier's expert room is now pinned
  const int guess[] = {r.unit(1, 2)};
  r.cache->prefetch(guess, PrefetchHint::Predicted, 1);
  TierCacheStats s;
  for (int i = 0; i < 500; i++) {
    s = r.cache->stats();
    if (s.prefetch.dropped > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(s.prefetch.dropped, 1u);
  EXPECT_EQ(s.prefetch.issued, 0u);
  EXPECT_FALSE(r.cache->deviceResident(guess[0]));
  EXPECT_TRUE(r.cache->deviceResident(a));
  EXPECT_TRUE(r.cache->deviceResident(b));
  r.cache->release(a);
  r.cache->release(b);
  r.use(1, 2);  // on demand now: evicts an unpinned expert
  s = r.cache->stats();
  EXPECT_EQ(s.device.evictions, 1u);
  EXPECT_LE(s.device.peakBytes, s.device.budgetBytes);
}

}  // namespace

// Issue #4 through the CLI: `doppler eval` passes at 1e-4 with tight --vram/--ram (experts paged, dense layers
// streamed), --stats / --stats-json report the tiers (misses on device and host, peaks within budgets, prefetch
// used), budgets below the minimum fail with one clear line, and `doppler info --tiers`.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "convert/convert.h"
#include "core/fs_util.h"
#include "core/json_util.h"
#include "loader/placement.h"
#include "test_util.h"

using namespace doppler;
using doppler::test::runCli;
using doppler::test::shellQuote;
using doppler::test::TempDir;

namespace {

std::string convert(const TempDir& tmp, const std::string& arch) {
  ConvertOptions o;
  o.sync = false;
  convertHfToRdrr(test::dataPath("hf/" + arch), tmp / (arch + ".rdrr"), o);
  return tmp / (arch + ".rdrr");
}

TierPlan sizesOf(const std::string& dir) {
  auto m = RdrrModel::open(dir);
  return planTiers(*m, uint64_t(1) << 50, uint64_t(1) << 50, false);
}

std::string evalArgs(const std::string& dir, const std::string& arch) {
  return "eval " + shellQuote(dir) + " --reference " + shellQuote(test::dataPath("hf/" + arch + "/reference.safetensors"));
}

void expectPeaksWithinBudgets(const Json& st) {
  for (const char* t : {"device", "host", "disk"}) {
    ASSERT_TRUE(st["tiers"].contains(t)) << st.dump();
    EXPECT_LE(st["tiers"][t]["peak_bytes"].get<uint64_t>(), st["tiers"][t]["budget_bytes"].get<uint64_t>()) << t;
  }
}

class EvalPaged : public ::testing::TestWithParam<std::string> {};

TEST_P(EvalPaged, PassesWithTwoExpertsPerLayerOnDeviceAndHalfInRam) {
  const std::string arch = GetParam();
  TempDir tmp;
  const std::string dir = convert(tmp, arch);
  const TierPlan p = sizesOf(dir);
  const uint64_t vram = p.residentBytes + 2 * uint64_t(p.numLayers) * p.maxExpertBytes;
  const uint64_t ram = p.expertTotalBytes / 2;
  auto r = runCli(evalArgs(dir, arch) + " --vram " + std::to_string(vram) + " --ram " + std::to_string(ram) +
                  " --stats --stats-json " + shellQuote(tmp / "stats.json"));
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("device"), std::string::npos) << r.err;  // the --stats table
  EXPECT_NE(r.err.find("prefetch:"), std::string::npos) << r.err;
  Json st = readJsonFile(tmp / "stats.json");
  EXPECT_EQ(st["weights"], "tiered");
  EXPECT_EQ(st["tiers"]["device"]["budget_bytes"].get<uint64_t>(), vram);
  EXPECT_EQ(st["tiers"]["host"]["budget_bytes"].get<uint64_t>(), ram);
  EXPECT_GT(st["tiers"]["device"]["misses"].get<uint64_t>(), 0u);
  EXPECT_GT(st["tiers"]["host"]["misses"].get<uint64_t>(), 0u);
  EXPECT_GT(st["prefetch"]["used"].get<uint64_t>(), 0u);
  EXPECT_GT(st["tokens_per_second"].get<double>(), 0.0);
  EXPECT_GE(st["stall_seconds"].get<double>(), 0.0);
  EXPECT_TRUE(st.contains("kv")) << "the KV section sits beside the tiers";
  expectPeaksWithinBudgets(st);
  for (const char* k : {"budget_bytes", "peak_bytes", "resident_bytes", "hits", "misses", "bytes_in", "bytes_out",
                        "evictions"})
    EXPECT_TRUE(st["tiers"]["host"].contains(k)) << k;
  for (const char* k : {"issued", "used", "wasted"}) EXPECT_TRUE(st["prefetch"].contains(k)) << k;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EvalPaged, ::testing::Values("mixtral", "qwen3_moe"));

TEST(EvalStreamed, LlamaPassesWithVramBelowItsDenseSize) {
  TempDir tmp;
  const std::string dir = convert(tmp, "llama");
  const TierPlan p = sizesOf(dir);
  const uint64_t vram = p.deviceMinimumStreamed + p.maxDenseBytes / 2;
  ASSERT_LT(vram, p.residentBytes);  // the dense weights do not fit
  auto r = runCli(evalArgs(dir, "llama") + " --vram " + std::to_string(vram) + " --ram 64M --stats-json " +
                  shellQuote(tmp / "s.json"));
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  Json st = readJsonFile(tmp / "s.json");
  EXPECT_EQ(st["placement"]["dense"], "streamed");
  EXPECT_GT(st["tiers"]["device"]["misses"].get<uint64_t>(), 0u);
  EXPECT_GT(st["tiers"]["device"]["evictions"].get<uint64_t>(), 0u);
  expectPeaksWithinBudgets(st);
}

TEST(EvalPagedErrors, BudgetBelowMinimumIsOneClearLine) {
  TempDir tmp;
  const std::string dir = convert(tmp, "mixtral");
  const TierPlan p = sizesOf(dir);
  auto r = runCli(evalArgs(dir, "mixtral") + " --vram 1K");
  EXPECT_EQ(r.exitCode, 1) << r.err;
  EXPECT_EQ(r.err.rfind("doppler: error: device budget (--vram) 1.0 KiB is below the minimum working set of ", 0),
            0u)
      << r.err;
  EXPECT_NE(r.err.find(std::to_string(p.deviceMinimumStreamed) + " bytes"), std::string::npos) << r.err;
  EXPECT_EQ(test::lineCount(r.err), 1) << r.err;
  auto bad = runCli(evalArgs(dir, "mixtral") + " --ram 12Q");
  EXPECT_NE(bad.exitCode, 0);
  EXPECT_NE(bad.err.find("--ram: invalid size '12Q'"), std::string::npos) << bad.err;
  // Without budgets the weights stay resident: no tier section, still the speed.
  auto res = runCli(evalArgs(dir, "mixtral") + " --stats");
  ASSERT_EQ(res.exitCode, 0) << res.err;
  EXPECT_NE(res.err.find("weights: resident"), std::string::npos) << res.err;
  EXPECT_NE(res.err.find("tokens_per_second"), std::string::npos) << res.err;
}

// --trace: the timeline of a paged run holds its forward passes, one span per layer and pass, the loader's disk
// reads and copies (on its own, named thread) and the waits for weights; the file is Chrome trace JSON.
TEST(EvalTrace, PagedRunHasForwardsLayersLoadsAndWaits) {
  TempDir tmp;
  const std::string dir = convert(tmp, "qwen3_moe");
  const TierPlan p = sizesOf(dir);
  const uint64_t vram = p.residentBytes + 2 * uint64_t(p.numLayers) * p.maxExpertBytes;
  auto r = runCli(evalArgs(dir, "qwen3_moe") + " --vram " + std::to_string(vram) + " --ram " +
                  std::to_string(p.expertTotalBytes / 2) + " --trace " + shellQuote(tmp / "trace.json"));
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  Json t = readJsonFile(tmp / "trace.json");
  std::map<std::string, int> count;
  std::map<int, std::string> threads;
  std::set<int> loaderTids;
  for (const auto& e : t["traceEvents"]) {
    if (e["ph"] == "M") {
      threads[e["tid"].get<int>()] = e["args"]["name"].get<std::string>();
      continue;
    }
    ASSERT_EQ(e["ph"], "X") << e.dump();
    EXPECT_GE(e["dur"].get<double>(), 0.0) << e.dump();
    count[e["name"].get<std::string>()]++;
    if (e["name"] == "read from disk") loaderTids.insert(e["tid"].get<int>());
  }
  ASSERT_GT(count["forward"], 1) << t.dump();
  EXPECT_EQ(count["layer"], count["forward"] * int(p.numLayers));
  EXPECT_GT(count["read from disk"], 0);
  EXPECT_GT(count["copy to device"], 0);
  EXPECT_GT(count["wait for weights"], 0);
  EXPECT_GT(count["routing to host"], 0);
  ASSERT_EQ(loaderTids.size(), 1u);
  EXPECT_EQ(threads[*loaderTids.begin()], "loader");
  // An unwritable path is one clear error after the run.
  auto bad = runCli(evalArgs(dir, "qwen3_moe") + " --trace " + shellQuote(tmp / "no-such-dir/t.json"));
  EXPECT_NE(bad.exitCode, 0);
  EXPECT_NE(bad.err.find("no-such-dir"), std::string::npos) << bad.err;
}

TEST(InfoTiers, PrintsCapabilitiesBudgetsAndPlacement) {
  TempDir tmp;
  auto r = runCli("info --tiers --cache-dir " + shellQuote(tmp.path()));
  ASSERT_EQ(r.exitCode, 0) << r.err;
  EXPECT_NE(r.out.find("host RAM:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("disk:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("emulated in host RAM"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("budgets:      device"), std::string::npos) << r.out;
  const std::string dir = convert(tmp, "mixtral");
  const TierPlan p = sizesOf(dir);
  auto m = runCli("info --tiers " + shellQuote(dir) + " --vram 64M --ram 1G");
  ASSERT_EQ(m.exitCode, 0) << m.err;
  EXPECT_NE(m.out.find("device 64.0 MiB (--vram), host 1.0 GiB (--ram)"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("placement:    dense weights resident"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("24 routed experts"), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("fits:         yes"), std::string::npos) << m.out;
  auto tight = runCli("info --tiers " + shellQuote(dir) + " --vram " + std::to_string(p.deviceMinimumResident - 1));
  ASSERT_EQ(tight.exitCode, 0) << tight.err;
  EXPECT_NE(tight.out.find("dense layers streamed"), std::string::npos) << tight.out;
  // Plain `info` still needs its MODEL.
  auto none = runCli("info");
  EXPECT_NE(none.exitCode, 0);
  EXPECT_NE(none.err.find("MODEL is required"), std::string::npos) << none.err;
}

}  // namespace

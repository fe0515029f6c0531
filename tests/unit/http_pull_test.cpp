// Issue #5 end to end through the CLI: `doppler pull URL` from the test origin (127.0.0.1), then runs from
// the cache alone (zero requests; also with the origin stopped), a flipped byte caught by `cache verify` and
// healed by the next run, 20+ pulls killed with SIGKILL at random moments, two concurrent pulls downloading
// each shard once, the progress output, and `cache ls | gc | rm`.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "core/fs_util.h"
#include "core/json_util.h"
#include "core/sha256.h"
#include "http_test_server.h"
#include "loader/placement.h"
#include "storage/resolve.h"
#include "storage/store.h"

using namespace doppler;
using doppler::test::Fault;
using doppler::test::runCli;
using doppler::test::shellQuote;
using doppler::test::TempDir;
using doppler::test::TestOrigin;

namespace {

using doppler::test::spawnDoppler;
using doppler::test::waitExit;

class PullCli : public ::testing::Test {
 protected:
  void SetUp() override {
    // Short network timeouts for every doppler the test starts.
    ::setenv("DOPPLER_HTTP_TIMEOUT", "0.5", 1);
    ::setenv("DOPPLER_HTTP_RETRY_DELAY", "0.02", 1);
    ::setenv("DOPPLER_HTTP_RETRIES", "3", 1);
    manifest_ = test::convertMixtralFixture(tmp_ / "m.rdrr").manifest;
    origin_ = std::make_unique<TestOrigin>(tmp_ / "m.rdrr");
    url_ = origin_->url("manifest.json");
    for (const auto& s : manifest_.shards) total_ += s.size;
    for (const auto& f : manifest_.tokenizerFiles) total_ += f.size;
  }
  void TearDown() override {
    ::unsetenv("DOPPLER_HTTP_TIMEOUT");
    ::unsetenv("DOPPLER_HTTP_RETRY_DELAY");
    ::unsetenv("DOPPLER_HTTP_RETRIES");
  }
  std::string cacheArg() const { return " --cache-dir " + shellQuote(cache_.path()); }
  test::CliResult eval(const std::string& model) {
    return runCli("eval " + shellQuote(model) + " --reference " +
                  shellQuote(test::dataPath("hf/mixtral/reference.safetensors")) + cacheArg());
  }
  uint64_t shardRequests() const {
    uint64_t n = 0;
    for (const auto& s : manifest_.shards) n += origin_->requests(s.filename);
    return n;
  }

  TempDir tmp_, cache_;
  Manifest manifest_;
  uint64_t total_ = 0;
  std::unique_ptr<TestOrigin> origin_;
  std::string url_;
};

TEST_F(PullCli, PullThenRunFromTheCacheAloneEvenWithTheOriginStopped) {
  auto p = runCli("pull " + shellQuote(url_) + cacheArg());
  ASSERT_EQ(p.exitCode, 0) << p.out << p.err;
  EXPECT_NE(p.out.find("pulled mixtral-tiny@"), std::string::npos) << p.out;
  // Not a terminal: plain progress lines, the last one at 100%.
  EXPECT_NE(p.err.find("pull: 100% ("), std::string::npos) << p.err;
  EXPECT_EQ(p.err.find('\r'), std::string::npos);
  EXPECT_EQ(origin_->bytesSent(), total_ + fileSize(tmp_ / "m.rdrr/manifest.json"));
  for (const auto& s : manifest_.shards) EXPECT_EQ(origin_->requests(s.filename), 1u) << s.filename;

  origin_->resetCounters();
  auto byUrl = eval(url_);
  EXPECT_EQ(byUrl.exitCode, 0) << byUrl.out << byUrl.err;
  EXPECT_NE(byUrl.out.find("PASS"), std::string::npos) << byUrl.out;
  auto byId = eval("mixtral-tiny");
  EXPECT_EQ(byId.exitCode, 0) << byId.out << byId.err;
  EXPECT_EQ(origin_->requests(), 0u) << "a cached model must not touch the origin";

  origin_->stop();
  auto offline = eval(url_);
  EXPECT_EQ(offline.exitCode, 0) << offline.out << offline.err;
  EXPECT_NE(offline.out.find("PASS"), std::string::npos) << offline.out;
  auto offlineId = eval("mixtral-tiny");
  EXPECT_EQ(offlineId.exitCode, 0) << offlineId.out << offlineId.err;
}

TEST_F(PullCli, EvalOfAUrlPullsOnFirstUse) {
  auto r = eval(url_);
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos);
  for (const auto& s : manifest_.shards) EXPECT_EQ(origin_->bytesSent(s.filename), s.size) << s.filename;
  auto unknown = eval("no-such-model");
  EXPECT_EQ(unknown.exitCode, 1);
  EXPECT_NE(unknown.err.find("no model 'no-such-model' in the cache"), std::string::npos) << unknown.err;
  EXPECT_EQ(test::lineCount(unknown.err), 1) << unknown.err;
}

TEST_F(PullCli, FlippedByteIsNamedByVerifyAndHealedByTheNextRun) {
  ASSERT_EQ(runCli("pull -q " + shellQuote(url_) + cacheArg()).exitCode, 0);
  Store store(cache_.path(), false, false);
  const RdrrShard& victim = manifest_.shards[2];
  test::flipByte(store.blobPath(victim.hash), victim.size - 5);
  auto v = runCli("cache verify -q" + cacheArg());
  EXPECT_EQ(v.exitCode, 1) << v.out << v.err;
  EXPECT_NE(v.out.find("CORRUPT"), std::string::npos) << v.out;
  EXPECT_NE(v.out.find(victim.filename), std::string::npos) << v.out;
  EXPECT_NE(v.out.find("1 corrupt"), std::string::npos) << v.out;

  origin_->resetCounters();
  auto r = eval("mixtral-tiny");
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_EQ(origin_->requests(victim.filename), 1u);
  EXPECT_EQ(shardRequests(), 1u) << "only the bad shard is fetched again";
  EXPECT_EQ(runCli("cache verify -q" + cacheArg()).exitCode, 0);

  // Flipped again and run without verify: the run's cheap check catches it (the file's ctime changed).
  test::flipByte(store.blobPath(victim.hash), 3);
  origin_->resetCounters();
  auto r2 = eval(url_);
  EXPECT_EQ(r2.exitCode, 0) << r2.out << r2.err;
  EXPECT_EQ(origin_->requests(victim.filename), 1u);
  EXPECT_EQ(sha256File(store.blobPath(victim.hash)), victim.hash);
}

TEST_F(PullCli, PullsKilledAtRandomMomentsLeaveNoCorruptShard) {
  origin_->setRate(6 << 20);  // ~0.3 s per pull, so the kills land everywhere
  std::mt19937 rng(12345);
  Store store(cache_.path(), false);
  int killedMidway = 0;
  for (int i = 0; i < 22; i++) {
    pid_t pid = spawnDoppler({"pull", "-q", url_, "--cache-dir", cache_.path()});
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(0, 400000)(rng)));
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      killedMidway++;
    }
    test::expectNoCorruptBlob(store.dir());
    // A complete model is removed now and then so later pulls have something to download.
    auto ref = store.find("mixtral-tiny");
    if (ref && i % 3 == 2) {
      bool complete = true;
      for (const auto& s : manifest_.shards) complete = complete && pathExists(store.blobPath(s.hash));
      if (complete) store.remove("mixtral-tiny");
    }
  }
  EXPECT_GE(killedMidway, 12) << "most pulls should have been killed mid-way";
  auto v = runCli("cache verify -q" + cacheArg());
  EXPECT_EQ(v.exitCode, 0) << v.out << v.err;
  EXPECT_NE(v.out.find("0 corrupt"), std::string::npos) << v.out;
  origin_->setRate(0);
  auto last = runCli("pull -q " + shellQuote(url_) + cacheArg());
  ASSERT_EQ(last.exitCode, 0) << last.out << last.err;
  auto r = eval("mixtral-tiny");
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;
  test::expectNoCorruptBlob(store.dir());
}

TEST_F(PullCli, TwoConcurrentPullsBothSucceedAndEachShardIsDownloadedOnce) {
  origin_->setRate(8 << 20);
  pid_t a = spawnDoppler({"pull", "-q", url_, "--cache-dir", cache_.path()}, tmp_ / "a.out", tmp_ / "a.err");
  pid_t b = spawnDoppler({"pull", "-q", url_, "--cache-dir", cache_.path()}, tmp_ / "b.out", tmp_ / "b.err");
  EXPECT_EQ(waitExit(a), 0) << readFile(tmp_ / "a.err");
  EXPECT_EQ(waitExit(b), 0) << readFile(tmp_ / "b.err");
  for (const auto& s : manifest_.shards) {
    EXPECT_EQ(origin_->requests(s.filename), 1u) << s.filename;
    EXPECT_EQ(origin_->bytesSent(s.filename), s.size) << s.filename;
  }
  EXPECT_EQ(origin_->requests("manifest.json"), 2u);
  // Both report the model; between them every file was fetched once.
  std::string outs = readFile(tmp_ / "a.out") + readFile(tmp_ / "b.out");
  EXPECT_EQ(std::count(outs.begin(), outs.end(), '\n'), 2) << outs;
  auto r = eval("mixtral-tiny");
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;
}

TEST_F(PullCli, ProgressBarOnATerminal) {
  origin_->setRate(4 << 20);
  // `script` gives the pull a pseudo-terminal.
  std::string cmd = std::string(DOPPLER_BIN) + " pull " + shellQuote(url_) + cacheArg();
  const std::string out = tmp_ / "tty.out";
  int rc = std::system(("script -qfec " + shellQuote(cmd) + " /dev/null >" + shellQuote(out) + " 2>&1 </dev/null").c_str());
  EXPECT_EQ(rc, 0);
  std::string all = readFile(out);
  EXPECT_NE(all.find("\rpull ["), std::string::npos) << all;
  EXPECT_NE(all.find("ETA"), std::string::npos) << all;
  EXPECT_NE(all.find("/s"), std::string::npos) << all;
  EXPECT_NE(all.find("100%"), std::string::npos) << all;
}

TEST_F(PullCli, FaultsThroughTheCli) {
  // A missing shard: one clear line naming the file and the status; nothing corrupt in the cache.
  origin_->setFault(manifest_.shards[1].filename, {Fault::Status, 404, 0, -1});
  auto r = runCli("pull -q " + shellQuote(url_) + cacheArg());
  EXPECT_EQ(r.exitCode, 1) << r.out << r.err;
  EXPECT_EQ(test::lineCount(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("doppler: error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(manifest_.shards[1].filename + ": HTTP 404"), std::string::npos) << r.err;
  // A stall with --timeout 0.3: retried, resumed, done.
  origin_->clearFaults();
  origin_->setFault(manifest_.shards[1].filename, {Fault::Stall, 0, 1000, 1});
  auto t0 = std::chrono::steady_clock::now();
  auto ok = runCli("pull -q --timeout 0.3 " + shellQuote(url_) + cacheArg());
  EXPECT_EQ(ok.exitCode, 0) << ok.out << ok.err;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
  EXPECT_EQ(runCli("cache verify -q" + cacheArg()).exitCode, 0);
  // A manifest URL that is not there.
  auto nf = runCli("pull -q " + shellQuote(origin_->url("nope/manifest.json")) + cacheArg());
  EXPECT_EQ(nf.exitCode, 1);
  EXPECT_NE(nf.err.find("HTTP 404"), std::string::npos) << nf.err;
}

TEST_F(PullCli, CacheLsGcRm) {
  auto empty = runCli("cache ls" + cacheArg());
  EXPECT_EQ(empty.exitCode, 0);
  EXPECT_NE(empty.out.find("no models"), std::string::npos) << empty.out;
  ASSERT_EQ(runCli("pull -q " + shellQuote(url_) + cacheArg()).exitCode, 0);
  const std::string files = fmt::format("{}/{}", manifest_.shards.size() + manifest_.tokenizerFiles.size(),
                                        manifest_.shards.size() + manifest_.tokenizerFiles.size());
  auto ls = runCli("cache ls" + cacheArg());
  EXPECT_EQ(ls.exitCode, 0);
  EXPECT_NE(ls.out.find("mixtral-tiny@"), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find(files), std::string::npos) << ls.out;
  EXPECT_NE(ls.out.find(url_), std::string::npos) << ls.out;
  // Budget 0 and nothing in use: every shard goes; the model stays listed, then heals on the next run.
  auto gc = runCli("cache gc --max 0" + cacheArg());
  EXPECT_EQ(gc.exitCode, 0) << gc.out << gc.err;
  EXPECT_NE(gc.out.find(fmt::format("evicted {} blobs", manifest_.shards.size() + manifest_.tokenizerFiles.size())),
            std::string::npos)
      << gc.out;
  EXPECT_NE(runCli("cache ls" + cacheArg()).out.find(fmt::format("0/{}", manifest_.shards.size() + manifest_.tokenizerFiles.size())),
            std::string::npos);
  origin_->resetCounters();
  EXPECT_EQ(eval("mixtral-tiny").exitCode, 0);
  EXPECT_EQ(shardRequests(), manifest_.shards.size());
  // Pinned: gc --max 0 keeps it (and says so).
  EXPECT_EQ(runCli("cache pin mixtral-tiny" + cacheArg()).exitCode, 0);
  auto gcPinned = runCli("cache gc --max 0" + cacheArg());
  EXPECT_EQ(gcPinned.exitCode, 1);
  EXPECT_NE(gcPinned.out.find("in use or pinned"), std::string::npos) << gcPinned.out;
  EXPECT_NE(runCli("cache ls" + cacheArg()).out.find("pinned"), std::string::npos);
  auto rm = runCli("cache rm mixtral-tiny" + cacheArg());
  EXPECT_EQ(rm.exitCode, 0) << rm.err;
  EXPECT_NE(rm.out.find("removed mixtral-tiny@"), std::string::npos);
  EXPECT_NE(runCli("cache ls" + cacheArg()).out.find("no models"), std::string::npos);
  auto rm2 = runCli("cache rm mixtral-tiny" + cacheArg());
  EXPECT_EQ(rm2.exitCode, 1);
  EXPECT_NE(rm2.err.find("no model 'mixtral-tiny'"), std::string::npos) << rm2.err;
}

}  // namespace

namespace {

// Lazy pulls: with paged weights (--vram/--ram) a run through an HTTP origin fetches the tokenizer files and the
// shards holding dense tensors up front, and an expert-only shard only when its expert is routed. 64 KiB
// shards put each of the fixture's experts (48 KiB in bf16) in a shard of its own.
TEST(LazyPull, PagedRunFetchesDenseShardsAndOnlyRoutedExperts) {
  ::setenv("DOPPLER_HTTP_TIMEOUT", "0.5", 1);
  TempDir tmp, cache;
  const Manifest m = test::convertMixtralFixture(tmp / "m.rdrr", 64 << 10).manifest;
  TestOrigin origin(tmp / "m.rdrr");
  const std::string url = origin.url("manifest.json");
  const std::vector<bool> dense = denseShards(m);
  uint64_t modelBytes = 0;
  size_t expertShards = 0;
  for (const auto& s : m.shards) {
    modelBytes += s.size;
    if (!dense[size_t(s.index)]) expertShards++;
  }
  ASSERT_GE(expertShards, 16u) << "the fixture's experts should sit in shards of their own";
  // About 2 experts per layer in the device tier, half of them in host RAM (as in the paging tests).
  const TierPlan p = planTiers(*RdrrModel::open(tmp / "m.rdrr"), uint64_t(1) << 50, uint64_t(1) << 50, false);
  const std::string budgets = fmt::format(" --vram {} --ram {} --cache-dir {}",
                                          p.residentBytes + 2 * uint64_t(p.numLayers) * p.maxExpertBytes,
                                          p.expertTotalBytes / 2, shellQuote(cache.path()));

  // A one-token generation routes 2 of 8 experts per layer (prefill of a short prompt: a few more).
  auto r = runCli("run " + shellQuote(url) + " -p hi -n 1 --temp 0" + budgets + " --stats-json " +
                  shellQuote(tmp / "run.json"));
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  size_t expertFetched = 0;
  uint64_t shardBytes = 0;
  for (const auto& s : m.shards) {
    const uint64_t n = origin.requests(s.filename);
    EXPECT_LE(n, 1u) << s.filename;
    if (dense[size_t(s.index)]) EXPECT_EQ(n, 1u) << s.filename << " holds dense tensors: fetched up front";
    else expertFetched += n;
    shardBytes += origin.bytesSent(s.filename);
  }
  EXPECT_GT(expertFetched, 0u);
  EXPECT_LT(expertFetched, expertShards) << "only the routed experts' shards are fetched";
  EXPECT_LT(shardBytes, modelBytes);
  const Json st = readJsonFile(tmp / "run.json");
  EXPECT_EQ(st["store"]["lazy_deferred_shards"].get<uint64_t>(), expertShards) << st.dump();
  EXPECT_EQ(st["store"]["lazy_fetched_shards"].get<uint64_t>(), expertFetched) << st.dump();
  std::printf("lazy run: %zu of %zu expert shards fetched, %llu of %llu shard bytes\n", expertFetched, expertShards,
              (unsigned long long)shardBytes, (unsigned long long)modelBytes);

  // A paged eval of the same URL passes at 1e-4 and fetches more experts (each shard still fetched once) ...
  auto e = runCli("eval " + shellQuote(url) + " --reference " +
                  shellQuote(test::dataPath("hf/mixtral/reference.safetensors")) + budgets);
  ASSERT_EQ(e.exitCode, 0) << e.out << e.err;
  EXPECT_NE(e.out.find("PASS"), std::string::npos) << e.out;
  for (const auto& s : m.shards) EXPECT_LE(origin.requests(s.filename), 1u) << s.filename;
  // ... and runs again from the cache alone once the origin is gone.
  origin.stop();
  auto offline = runCli("eval " + shellQuote(url) + " --reference " +
                        shellQuote(test::dataPath("hf/mixtral/reference.safetensors")) + budgets);
  EXPECT_EQ(offline.exitCode, 0) << offline.out << offline.err;
  test::expectNoCorruptBlob(cache / "store");
  ::unsetenv("DOPPLER_HTTP_TIMEOUT");
}

}  // namespace

// Issue #6: the swarm tier end to end, all on 127.0.0.1, every process started and stopped by the test.
//   - the model's torrent is deterministic and matches the manifest
//   - one seed + two pullers: the second gets pieces from the seed and from the first puller; caches verify
//   - the seed is SIGKILLed mid-transfer: the puller completes from the origin (plain HTTP fallback), and with two
//     seeds from the other one with --no-origin
//   - a peer serving corrupted data is banned; the model still ends correct
//   - lazy expert fetch: a paged eval of a store model gets its dense shards and only the routed experts' shards
//     from a seeding peer (--no-origin: the origin serves the manifest and swarm.torrent, no shard byte)
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "core/fs_util.h"
#include "core/json_util.h"
#include "http_test_server.h"
#include "loader/placement.h"
#include "storage/resolve.h"
#include "storage/store.h"
#include "storage/swarm.h"


using namespace doppler;
using doppler::test::runCli;
using doppler::test::shellQuote;
using doppler::test::TempDir;
using doppler::test::TestOrigin;
using Clock = std::chrono::steady_clock;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A doppler process with stdout/stderr in files; killed (SIGKILL) and reaped by the destructor if still running.
class Proc {
 public:
  Proc(const std::vector<std::string>& args, std::string out, std::string err) : out_(std::move(out)), err_(std::move(err)) {
    pid_ = test::spawnDoppler(args, out_, err_);
    EXPECT_GT(pid_, 0) << "could not start " << DOPPLER_BIN;
  }
  ~Proc() {
    if (pid_ > 0 && !done_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;

  // Exit code (128+signal), or -1 after `seconds` (the process is then killed).
  int wait(double seconds) {
    auto t0 = Clock::now();
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        done_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      if (std::chrono::duration<double>(Clock::now() - t0).count() > seconds) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        done_ = true;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  int stop(int sig = SIGTERM, double seconds = 10) {
    if (done_) return -1;
    ::kill(pid_, sig);
    return wait(seconds);
  }
  bool running() {
    if (done_) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) done_ = true;
    return !done_;
  }
  // Waits until `re` matches in stdout (or stderr); returns the first capture group ("" on timeout or exit).
  std::string waitFor(const std::string& re, double seconds, bool inStderr = false) {
    std::regex rx(re);
    auto t0 = Clock::now();
    while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
      std::smatch m;
      std::string s = slurp(inStderr ? err_ : out_);
      if (std::regex_search(s, m, rx)) return m.size() > 1 ? m[1].str() : m[0].str();
      if (!running()) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "";
  }
  std::string out() const { return slurp(out_); }
  std::string err() const { return slurp(err_); }

 private:
  pid_t pid_ = -1;
  bool done_ = false;
  std::string out_, err_;
};

class Swarm : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("DOPPLER_HTTP_TIMEOUT", "2", 1);
    ::setenv("DOPPLER_HTTP_RETRY_DELAY", "0.02", 1);
    manifest_ = test::convertMixtralFixture(tmp_ / "m.rdrr", 128 << 10).manifest;
    for (const auto& s : manifest_.shards) total_ += s.size;
    for (const auto& f : manifest_.tokenizerFiles) total_ += f.size;
  }
  void TearDown() override {
    ::unsetenv("DOPPLER_HTTP_TIMEOUT");
    ::unsetenv("DOPPLER_HTTP_RETRY_DELAY");
  }
  // Starts `doppler seed DIR` on an ephemeral loopback port; returns its "127.0.0.1:PORT" (after it checked).
  std::unique_ptr<Proc> seed(const std::string& dir, const std::string& tag, std::vector<std::string> extra,
                             std::string* endpoint) {
    std::vector<std::string> args = {"seed", dir, "--listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto p = std::make_unique<Proc>(args, tmp_ / (tag + ".out"), tmp_ / (tag + ".err"));
    *endpoint = p->waitFor(R"(pieces\) on (127\.0\.0\.1:\d+))", 20);
    EXPECT_FALSE(endpoint->empty()) << tag << ": " << p->out() << p->err();
    return p;
  }
  void expectCacheGood(const std::string& cache) {
    auto v = runCli("cache verify -q --cache-dir " + shellQuote(cache));
    EXPECT_EQ(v.exitCode, 0) << v.out << v.err;
    EXPECT_NE(v.out.find("0 corrupt"), std::string::npos) << v.out;
    Store store(cache, false);
    test::expectNoCorruptBlob(store.dir());
    auto ref = store.find("mixtral-tiny");
    ASSERT_TRUE(ref.has_value());
    for (const auto& s : manifest_.shards) EXPECT_TRUE(isRegularFile(store.blobPath(s.hash))) << s.filename;
  }
  static nlohmann::json stats(const std::string& path) { return readJsonFile(path); }
  // Waits until the cache holds at least n blobs (files that came through the puller) or `seconds` pass.
  static int waitForBlobs(const std::string& cache, int n, double seconds) {
    auto t0 = Clock::now();
    int count = 0;
    while (std::chrono::duration<double>(Clock::now() - t0).count() < seconds) {
      count = 0;
      std::error_code ec;
      for (auto it = std::filesystem::recursive_directory_iterator(cache + "/store/blobs", ec);
           !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
        count += it->path().filename().string().size() == 64;
      if (count >= n) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return count;
  }

  TempDir tmp_;
  Manifest manifest_;
  uint64_t total_ = 0;
};

}  // namespace

TEST_F(Swarm, TorrentIsDeterministicAndListsTheModelFiles) {
  ModelTorrent a = makeModelTorrent(tmp_ / "m.rdrr");
  std::filesystem::copy(tmp_ / "m.rdrr", tmp_ / "copy");
  ModelTorrent b = makeModelTorrent(tmp_ / "copy");
  EXPECT_EQ(a.infoHashV2.size(), 64u);
  EXPECT_EQ(a.infoHashV1.size(), 40u);
  EXPECT_EQ(a.infoHashV2, b.infoHashV2) << "same files, same swarm, whatever the directory";
  EXPECT_EQ(a.name, "mixtral-tiny");
  EXPECT_EQ(a.files.size(), 1 + manifest_.shards.size() + manifest_.tokenizerFiles.size());
  EXPECT_NO_THROW(checkTorrentMatchesManifest(a, readFile(tmp_ / "m.rdrr/manifest.json"), "m"));
  // The sidecar is written once and reused; the manifest is untouched.
  std::string before = readFile(tmp_ / "m.rdrr/manifest.json");
  ModelTorrent c = modelTorrentOf(tmp_ / "m.rdrr", true);
  EXPECT_TRUE(isRegularFile(tmp_ / ("m.rdrr/" + std::string(kSwarmTorrentName))));
  EXPECT_EQ(c.infoHashV2, a.infoHashV2);
  EXPECT_EQ(readFile(tmp_ / "m.rdrr/manifest.json"), before);
  EXPECT_EQ(parseModelTorrent(c.bytes, "x").infoHashV2, a.infoHashV2);
  EXPECT_THROW(parseModelTorrent("not bencode", "x"), Error);
  // A changed shard is a different swarm.
  test::flipByte(tmp_ / ("copy/" + manifest_.shards[0].filename), 10);
  EXPECT_NE(makeModelTorrent(tmp_ / "copy").infoHashV2, a.infoHashV2);
}

TEST_F(Swarm, BadArgumentsAreOneLineErrors) {
  auto r = runCli("pull " + shellQuote(tmp_ / "m.rdrr") + " --no-origin --cache-dir " + shellQuote(tmp_ / "c"));
  EXPECT_EQ(r.exitCode, 1);
  EXPECT_NE(r.err.find("--no-origin needs peers"), std::string::npos) << r.err;
  r = runCli("pull 0123456789abcdef0123456789abcdef01234567 --peer nonsense --cache-dir " + shellQuote(tmp_ / "c"));
  EXPECT_EQ(r.exitCode, 1);
  EXPECT_NE(r.err.find("--peer 'nonsense': expected HOST:PORT"), std::string::npos) << r.err;
  r = runCli("seed " + shellQuote(tmp_ / "m.rdrr") + " --listen localhost:1");
  EXPECT_EQ(r.exitCode, 1);
  EXPECT_NE(r.err.find("--listen 'localhost:1'"), std::string::npos) << r.err;
  // Nobody serves this swarm: a bounded failure naming it.
  r = runCli("pull 0123456789abcdef0123456789abcdef01234567 --peer 127.0.0.1:9 --metadata-timeout 1 --cache-dir " +
             shellQuote(tmp_ / "c"));
  EXPECT_EQ(r.exitCode, 1);
  EXPECT_NE(r.err.find("no metadata from peers (127.0.0.1:9)"), std::string::npos) << r.err;
}

TEST_F(Swarm, SecondPullerGetsPiecesFromTheSeedAndTheFirstPuller) {
  std::string s;
  auto seeder = seed(tmp_ / "m.rdrr", "seed", {"--upload-limit", "600K"}, &s);
  ASSERT_FALSE(s.empty());
  std::string magnet = seeder->waitFor(R"((magnet:\S+))", 5);
  ASSERT_FALSE(magnet.empty());
  // A: peers only, keeps sharing after its pull until stopped.
  Proc a({"pull", "-q", magnet, "--peer", s, "--no-origin", "--cache-dir", tmp_ / "ca", "--linger", "60",
          "--stats-json", tmp_ / "a.json"},
         tmp_ / "a.out", tmp_ / "a.err");
  std::string aEp = a.waitFor(R"(listening on (127\.0\.0\.1:\d+))", 10, true);
  ASSERT_FALSE(aEp.empty()) << a.err();
  Proc b({"pull", "-q", magnet, "--peer", s, "--peer", aEp, "--no-origin", "--cache-dir", tmp_ / "cb",
          "--stats-json", tmp_ / "b.json"},
         tmp_ / "b.out", tmp_ / "b.err");
  ASSERT_EQ(b.wait(60), 0) << b.err();
  // A finishes its pull (it may already have), then lingers; SIGTERM ends the linger cleanly.
  ASSERT_FALSE(a.waitFor(R"(pulled mixtral-tiny)", 60).empty()) << a.err();
  EXPECT_EQ(a.stop(SIGTERM), 0) << a.err();
  EXPECT_EQ(seeder->stop(SIGTERM), 0) << seeder->err();
  EXPECT_NE(seeder->out().find("stopped: uploaded"), std::string::npos) << seeder->out();

  auto j = stats(tmp_ / "b.json")["swarm"];
  uint64_t fromSeed = 0, fromOthers = 0;
  for (const auto& [ep, p] : j["peers"].items()) (ep == s ? fromSeed : fromOthers) += p["downloaded"].get<uint64_t>();
  EXPECT_GT(fromSeed, 0u) << j.dump(1);
  EXPECT_GT(fromOthers, 0u) << "the second puller got nothing from the first: " << j.dump(1);
  EXPECT_EQ(j["bytes_from_origin"].get<uint64_t>(), 0u);
  EXPECT_GE(j["peers_seen"].get<int>(), 2);
  auto ja = stats(tmp_ / "a.json")["swarm"];
  EXPECT_GT(ja["bytes_from_peers"].get<uint64_t>(), 0u);
  expectCacheGood(tmp_ / "ca");
  expectCacheGood(tmp_ / "cb");
  // The pulled model carries its torrent, so it can be seeded from the cache straight away.
  Store store(tmp_ / "cb", false);
  EXPECT_TRUE(isRegularFile(joinPath(store.find("mixtral-tiny")->dir, kSwarmTorrentName)));
}

TEST_F(Swarm, SeedKilledMidTransferThePullerCompletesFromTheOrigin) {
  std::string s;
  auto seeder = seed(tmp_ / "m.rdrr", "seed", {"--upload-limit", "300K"}, &s);  // also writes m.rdrr/swarm.torrent
  ASSERT_FALSE(s.empty());
  TestOrigin origin(tmp_ / "m.rdrr");
  Proc p({"pull", "-q", origin.url("manifest.json"), "--peer", s, "--peer-timeout", "1.5", "--cache-dir",
          tmp_ / "c", "--stats-json", tmp_ / "p.json"},
         tmp_ / "p.out", tmp_ / "p.err");
  // Mid-transfer: a few files arrived from the seed, most have not.
  EXPECT_GE(waitForBlobs(tmp_ / "c", 3, 30), 3) << p.err();
  ASSERT_TRUE(p.running()) << "the pull ended before the seed was killed: " << p.err();
  seeder->stop(SIGKILL);
  ASSERT_EQ(p.wait(60), 0) << p.err();
  auto j = stats(tmp_ / "p.json")["swarm"];
  EXPECT_GT(j["bytes_from_peers"].get<uint64_t>(), 0u) << j.dump(1);
  EXPECT_GT(j["files_from_origin"].get<uint64_t>(), 0u) << j.dump(1);
  EXPECT_LT(origin.bytesSent(), total_ + 64 * 1024) << "the origin served (about) only what the seed did not";
  expectCacheGood(tmp_ / "c");
}

TEST_F(Swarm, SeedKilledMidTransferThePullerCompletesFromTheOtherPeer) {
  std::string s1, s2;
  auto seed1 = seed(tmp_ / "m.rdrr", "seed1", {"--upload-limit", "300K"}, &s1);
  auto seed2 = seed(tmp_ / "m.rdrr", "seed2", {"--upload-limit", "300K"}, &s2);
  ASSERT_FALSE(s1.empty() || s2.empty());
  std::string magnet = seed1->waitFor(R"((magnet:\S+))", 5);
  Proc p({"pull", "-q", magnet, "--peer", s1, "--peer", s2, "--no-origin", "--cache-dir", tmp_ / "c",
          "--stats-json", tmp_ / "p.json"},
         tmp_ / "p.out", tmp_ / "p.err");
  EXPECT_GE(waitForBlobs(tmp_ / "c", 3, 30), 3) << p.err();
  ASSERT_TRUE(p.running()) << "the pull ended before the seed was killed: " << p.err();
  seed1->stop(SIGKILL);
  ASSERT_EQ(p.wait(60), 0) << p.err();
  seed2->stop(SIGTERM);
  auto j = stats(tmp_ / "p.json")["swarm"];
  EXPECT_GT(j["peers"][s1]["downloaded"].get<uint64_t>(), 0u) << j.dump(1);
  EXPECT_GT(j["peers"][s2]["downloaded"].get<uint64_t>(), 0u) << j.dump(1);
  EXPECT_EQ(j["bytes_from_origin"].get<uint64_t>(), 0u);
  expectCacheGood(tmp_ / "c");
}

TEST_F(Swarm, PeerServingCorruptDataIsBannedAndTheModelEndsCorrect) {
  // The liar: a copy of the model that passes libtorrent's check when it starts seeding, then has bytes of one
  // shard flipped on disk (a bad disk, or malice), so it serves pieces that do not match the torrent.
  std::filesystem::copy(tmp_ / "m.rdrr", tmp_ / "bad");
  std::string liar;
  auto bad = seed(tmp_ / "bad", "bad", {}, &liar);
  ASSERT_FALSE(liar.empty());
  const auto& victim = manifest_.shards[1];
  for (uint64_t at = 0; at < victim.size; at += 4096) test::flipByte(tmp_ / ("bad/" + victim.filename), at);
  modelTorrentOf(tmp_ / "m.rdrr", true);  // the origin serves the (same) swarm.torrent
  TestOrigin origin(tmp_ / "m.rdrr");
  Proc p({"pull", "-q", origin.url("manifest.json"), "--peer", liar, "--peer-timeout", "2", "--cache-dir",
          tmp_ / "c", "--stats-json", tmp_ / "p.json"},
         tmp_ / "p.out", tmp_ / "p.err");
  ASSERT_EQ(p.wait(60), 0) << p.err();
  bad->stop(SIGTERM);
  auto j = stats(tmp_ / "p.json")["swarm"];
  EXPECT_GE(j["hash_failures"].get<int>(), 1) << j.dump(1);
  ASSERT_EQ(j["banned"].size(), 1u) << j.dump(1);
  EXPECT_EQ(j["banned"][0].get<std::string>(), liar);
  EXPECT_NE(p.err().find("banned peer " + liar), std::string::npos) << p.err();
  EXPECT_GT(j["files_from_origin"].get<uint64_t>(), 0u) << j.dump(1);
  // (Whether some of the liar's good files were used before the ban depends on libtorrent's piece order.)
  EXPECT_GT(origin.bytesSent(victim.filename), 0u);
  expectCacheGood(tmp_ / "c");
}

TEST_F(Swarm, PagedEvalFetchesOnlyRoutedExpertsFromASeedingPeer) {
  // 64 KiB shards put each of the fixture's experts in a shard of its own.
  TempDir d;
  const Manifest m = test::convertMixtralFixture(d / "m.rdrr", 64 << 10).manifest;
  std::string s;
  auto seeder = seed(d / "m.rdrr", "lazyseed", {}, &s);  // writes m.rdrr/swarm.torrent
  ASSERT_FALSE(s.empty());
  TestOrigin origin(d / "m.rdrr");
  const std::vector<bool> dense = denseShards(m);
  size_t expertShards = 0;
  for (const auto& sh : m.shards) expertShards += !dense[size_t(sh.index)];
  ASSERT_GE(expertShards, 16u);
  const TierPlan p = planTiers(*RdrrModel::open(d / "m.rdrr"), uint64_t(1) << 50, uint64_t(1) << 50, false);
  const std::string args = " " + shellQuote(origin.url("manifest.json")) +
                           fmt::format(" --vram {} --ram {}", p.residentBytes + 2 * uint64_t(p.numLayers) * p.maxExpertBytes,
                                       p.expertTotalBytes / 2) +
                           " --peer " + s + " --no-origin --cache-dir " + shellQuote(tmp_ / "c");
  // A one-token generation routes a few of the 8 experts per layer: only their shards come from the peer.
  auto r = runCli("run -p hi -n 1 --temp 0" + args + " --stats-json " + shellQuote(tmp_ / "r.json"));
  ASSERT_EQ(r.exitCode, 0) << r.out << r.err;
  const Json st = readJsonFile(tmp_ / "r.json");
  EXPECT_EQ(st["store"]["lazy_deferred_shards"].get<uint64_t>(), expertShards) << st.dump();
  const uint64_t fetched = st["store"]["lazy_fetched_shards"].get<uint64_t>();
  EXPECT_GT(fetched, 0u) << st.dump();
  EXPECT_LT(fetched, expertShards) << "only the routed experts' shards come from the peer";
  {
    Store store(tmp_ / "c", false);
  test::expectNoCorruptBlob(store.dir());
}
  // The paged eval (it routes more experts, fetched from the peer as they are first used) passes at 1e-4.
  auto e = runCli("eval --reference " + shellQuote(test::dataPath("hf/mixtral/reference.safetensors")) + args);
  ASSERT_EQ(e.exitCode, 0) << e.out << e.err;
  EXPECT_NE(e.out.find("PASS"), std::string::npos) << e.out;
  EXPECT_EQ(seeder->stop(SIGTERM), 0);
  for (const auto& sh : m.shards) EXPECT_EQ(origin.requests(sh.filename), 0u) << sh.filename << ": from the origin";
  Store store(tmp_ / "c", false);
  test::expectNoCorruptBlob(store.dir());
}

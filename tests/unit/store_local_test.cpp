// Issue #5: the shard store with a local source: pull, find, lease, integrity (cheap checks, quarantine,
// heal), partial-download resume, gc (LRU, in use, pinned), rm, ids.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/fs_util.h"
#include "core/sha256.h"
#include "format/rdrr_reader.h"
#include "http_test_server.h"
#include "storage/store.h"

using namespace doppler;
using doppler::test::TempDir;

namespace {

using doppler::test::flipByte;
void expectNoCorruptBlob(const Store& s) { doppler::test::expectNoCorruptBlob(s.dir()); }

struct Fixture {
  TempDir tmp;
  std::string model = tmp / "m.rdrr";
  Manifest manifest;
  Fixture() { manifest = test::convertMixtralFixture(model).manifest; }
  uint64_t totalBytes() const {
    uint64_t n = 0;
    for (const auto& s : manifest.shards) n += s.size;
    for (const auto& f : manifest.tokenizerFiles) n += f.size;
    return n;
  }
};

TEST(StoreIds, SafeModelId) {
  EXPECT_EQ(safeModelId("mixtral-tiny"), "mixtral-tiny");
  EXPECT_EQ(safeModelId("org/Model-7B"), "org--Model-7B");
  EXPECT_EQ(safeModelId("a b:c"), "a_b_c");
  EXPECT_EQ(safeModelId(".hidden"), "_hidden");
  EXPECT_EQ(safeModelId(""), "model");
}

TEST(StoreLocal, PullMakesAWorkingRdrrDirAndFindsItById) {
  Fixture fx;
  ASSERT_GE(fx.manifest.shards.size(), 3u) << "the fixture should span several shards";
  TempDir cache;
  Store store(cache.path(), false);
  LocalDirSource src(fx.model);
  PullStats st;
  ModelLease lease = store.pull(src, nullptr, &st);
  EXPECT_EQ(lease.ref.id, "mixtral-tiny");
  EXPECT_EQ(lease.ref.revision, sha256File(fx.model + "/manifest.json").substr(0, 16));
  EXPECT_EQ(st.files, int(fx.manifest.shards.size() + fx.manifest.tokenizerFiles.size()));
  EXPECT_EQ(st.fetched, st.files);
  EXPECT_EQ(st.bytesFetched, fx.totalBytes());
  // The view is an RDRR directory that verifies.
  auto m = RdrrModel::open(lease.ref.dir);
  EXPECT_NO_THROW(m->verify());
  EXPECT_EQ(m->manifest().shards.size(), fx.manifest.shards.size());
  // Blobs are read-only and named by their hash.
  for (const auto& s : fx.manifest.shards) {
    struct stat stt {};
    ASSERT_EQ(::stat(store.blobPath(s.hash).c_str(), &stt), 0);
    EXPECT_EQ(stt.st_mode & 0222, 0u);
  }
  // Found by id, id@rev-prefix and by source path; unknown ids are not.
  ASSERT_TRUE(store.find("mixtral-tiny"));
  EXPECT_EQ(store.find("mixtral-tiny")->dir, lease.ref.dir);
  EXPECT_EQ(store.find("mixtral-tiny@" + lease.ref.revision.substr(0, 6))->dir, lease.ref.dir);
  EXPECT_FALSE(store.find("mixtral-tiny@ffffffff" + lease.ref.revision.substr(8)).has_value() &&
               lease.ref.revision.substr(0, 8) != "ffffffff");
  EXPECT_EQ(store.find(fx.model)->dir, lease.ref.dir);
  EXPECT_FALSE(store.find("no-such-model").has_value());
  // A second pull fetches nothing.
  PullStats again;
  store.pull(src, nullptr, &again);
  EXPECT_EQ(again.fetched, 0);
  EXPECT_EQ(again.bytesFetched, 0u);
}

TEST(StoreLocal, FlippedByteIsCaughtByTheCheapCheckQuarantinedAndRefetched) {
  Fixture fx;
  TempDir cache;
  Store store(cache.path(), false);
  LocalDirSource src(fx.model);
  ModelLease lease = store.pull(src);
  const auto& victim = fx.manifest.shards[1];
  flipByte(store.blobPath(victim.hash), victim.size / 2);
  // verify() names it (with the model file) and quarantines it.
  VerifyReport r = store.verify();
  ASSERT_EQ(r.bad.size(), 1u);
  EXPECT_NE(r.bad[0].find(victim.filename), std::string::npos) << r.bad[0];
  EXPECT_NE(r.bad[0].find("SHA-256 mismatch"), std::string::npos) << r.bad[0];
  EXPECT_FALSE(pathExists(store.blobPath(victim.hash)));
  EXPECT_EQ(r.missing.size(), 1u);
  // The next use heals it from the source.
  PullStats st = store.ensureComplete(lease, &src);
  EXPECT_EQ(st.fetched, 1);
  EXPECT_EQ(st.bytesFetched, victim.size);
  EXPECT_TRUE(store.verify().bad.empty());

  // Without verify: a write to a blob changes its ctime, so the cheap check on the next use re-hashes it.
  flipByte(store.blobPath(victim.hash), 10);
  PullStats healed = store.ensureComplete(lease, &src);
  EXPECT_EQ(healed.healed, 1);
  EXPECT_EQ(healed.fetched, 1);
  EXPECT_EQ(sha256File(store.blobPath(victim.hash)), victim.hash);
  expectNoCorruptBlob(store);
}

TEST(StoreLocal, ResumesAPartialDownloadAndDiscardsABadOne) {
  Fixture fx;
  TempDir cache;
  Store store(cache.path(), false);
  const auto& sh = fx.manifest.shards[0];
  std::string bytes = readFile(fx.model + "/" + sh.filename);
  // A good prefix left by a killed process: only the rest is read from the source.
  writeFile(store.partialPath(sh.hash), std::string_view(bytes).substr(0, bytes.size() / 3), false);
  LocalDirSource src(fx.model);
  PullStats st;
  store.pull(src, nullptr, &st);
  EXPECT_EQ(st.bytesFetched, fx.totalBytes() - bytes.size() / 3);
  EXPECT_EQ(sha256File(store.blobPath(sh.hash)), sh.hash);
  EXPECT_FALSE(pathExists(store.partialPath(sh.hash)));

  // A corrupt prefix: the hash fails, the file is fetched again from the start, nothing bad is stored.
  TempDir cache2;
  Store store2(cache2.path(), false);
  std::string bad = bytes.substr(0, bytes.size() / 2);
  bad[5] = char(bad[5] ^ 0xff);
  writeFile(store2.partialPath(sh.hash), bad, false);
  PullStats st2;
  store2.pull(src, nullptr, &st2);
  EXPECT_EQ(st2.bytesFetched, fx.totalBytes() - bad.size() + bytes.size());
  EXPECT_EQ(sha256File(store2.blobPath(sh.hash)), sh.hash);
  expectNoCorruptBlob(store2);
}

TEST(StoreLocal, GcEvictsLeastRecentlyUsedNeverInUseOrPinned) {
  TempDir tmp;
  // Two models with different ids (so no shared blobs but the tokenizer files).
  ConvertOptions o;
  o.shardSize = 256 << 10;
  o.sync = false;
  o.modelId = "older";
  convertHfToRdrr(test::dataPath("hf/mixtral"), tmp / "a.rdrr", o);
  o.modelId = "newer";
  o.layout = Layout::Column;  // different shard bytes
  convertHfToRdrr(test::dataPath("hf/mixtral"), tmp / "b.rdrr", o);
  TempDir cache;
  Store store(cache.path(), false);
  LocalDirSource a(tmp / "a.rdrr"), b(tmp / "b.rdrr");
  { ModelLease la = store.pull(a); }
  ::usleep(20000);
  { ModelLease lb = store.pull(b); }
  auto list = store.list();
  ASSERT_EQ(list.size(), 2u);
  uint64_t aBytes = 0, bBytes = 0;
  for (const auto& m : list) (m.ref.id == "older" ? aBytes : bBytes) = m.bytes;

  // Without a budget nothing referenced goes; orphans and partials do.
  writeFile(store.partialPath(std::string(64, 'a')), "partial", false);
  GcReport g0 = store.gc(std::nullopt);
  EXPECT_EQ(g0.evicted, 0);
  EXPECT_EQ(g0.removedPartials, 1);

  // A budget that fits only the newer model: the older one's shards go first.
  GcReport g = store.gc(bBytes + 1000);
  EXPECT_GT(g.evicted, 0);
  EXPECT_LE(g.after, bBytes + 1000);
  for (const auto& m : store.list()) {
    if (m.ref.id == "newer") {
      EXPECT_EQ(m.present, m.files);
    } else {
      EXPECT_LT(m.present, m.files);
    }
  }
  // In use (leased here) or pinned: never evicted, even with a budget of 0.
  ModelLease inUse = store.lease(*store.find("newer"));
  GcReport g2 = store.gc(0);
  EXPECT_GE(g2.after, bBytes);
  for (const auto& m : store.list())
    if (m.ref.id == "newer") {
      EXPECT_TRUE(m.inUse);
      EXPECT_EQ(m.present, m.files);
    }
  inUse.lock.release();
  store.setPinned("newer", true);
  store.gc(0);
  for (const auto& m : store.list())
    if (m.ref.id == "newer") {
      EXPECT_TRUE(m.pinned);
      EXPECT_EQ(m.present, m.files);
    }
  store.setPinned("newer", false);
  store.gc(0);
  for (const auto& m : store.list()) EXPECT_EQ(m.presentBytes, 0u) << m.ref.name();
  // The evicted model heals from its source on the next use.
  ModelLease again = store.lease(*store.find("newer"));
  PullStats st = store.ensureComplete(again);
  EXPECT_EQ(st.bytesFetched, bBytes);
  EXPECT_NO_THROW(RdrrModel::open(again.ref.dir)->verify());
}

TEST(StoreLocal, RemoveRefusesAModelInUseAndKeepsSharedBlobs) {
  Fixture fx;
  TempDir cache;
  Store store(cache.path(), false);
  LocalDirSource src(fx.model);
  ModelLease lease = store.pull(src);
  EXPECT_THROW(
      {
        try {
          store.remove("mixtral-tiny");
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  lease.lock.release();
  auto removed = store.remove("mixtral-tiny");
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_FALSE(store.find("mixtral-tiny"));
  EXPECT_FALSE(store.find(fx.model));
  for (const auto& s : fx.manifest.shards) EXPECT_FALSE(pathExists(store.blobPath(s.hash)));
  EXPECT_THROW(store.remove("mixtral-tiny"), Error);
}

}  // namespace

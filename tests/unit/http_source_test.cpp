// Issue #5: the HTTP source (libcurl) against the test origin (cpp-httplib on 127.0.0.1): Range requests,
// servers that ignore Range, and every injected fault: 404/500, a stall (timeout), a connection dropped
// mid-body, a truncated file, wrong bytes. Each ends in a transparent retry/resume or a clear error, and the
// store never keeps a corrupt shard.
#include <gtest/gtest.h>

#include <chrono>
#include <random>

#include "core/error.h"
#include "core/fs_util.h"
#include "core/sha256.h"
#include "http_test_server.h"
#include "storage/http_source.h"
#include "storage/store.h"

using namespace doppler;
using doppler::test::Fault;
using doppler::test::TempDir;
using doppler::test::TestOrigin;

namespace {

FetchOptions fast() {
  FetchOptions o;
  o.connectTimeout = 2;
  o.stallTimeout = 0.3;
  o.retries = 3;
  o.retryDelay = 0.02;
  return o;
}

std::string randomBytes(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = char(g());
  return s;
}

std::string fetch(HttpSource& h, const std::string& name, uint64_t off, uint64_t n) {
  std::string out;
  h.fetchRange(name, off, n, [&](const uint8_t* p, size_t k) { out.append(reinterpret_cast<const char*>(p), k); });
  return out;
}

std::string errorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

class HttpSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = randomBytes(1 << 20, 7);
    writeFile(dir_ / "blob.bin", data_, false);
    origin_ = std::make_unique<TestOrigin>(dir_.path());
  }
  TempDir dir_;
  std::string data_;
  std::unique_ptr<TestOrigin> origin_;
};

TEST_F(HttpSourceTest, RangeRequestReturnsExactlyTheBytesAsked) {
  HttpSource h(origin_->url("manifest.json"), fast());
  EXPECT_EQ(fetch(h, "blob.bin", 1000, 5000), data_.substr(1000, 5000));
  EXPECT_EQ(origin_->ranges("blob.bin"), std::vector<std::string>{"bytes=1000-5999"});
  EXPECT_EQ(origin_->bytesSent("blob.bin"), 5000u);
  EXPECT_EQ(fetch(h, "blob.bin", 0, data_.size()), data_);
  EXPECT_EQ(origin_->requests(), 2u);
}

TEST_F(HttpSourceTest, ServerIgnoringRangeIsHandled) {
  origin_->setFault("blob.bin", {Fault::IgnoreRange});
  HttpSource h(origin_->url(), fast());
  EXPECT_EQ(fetch(h, "blob.bin", 300000, 1000), data_.substr(300000, 1000));
  EXPECT_EQ(origin_->requests("blob.bin"), 1u);
}

TEST_F(HttpSourceTest, NotFoundFailsAtOnceNamingTheUrl) {
  HttpSource h(origin_->url("manifest.json"), fast());
  auto t0 = std::chrono::steady_clock::now();
  std::string e = errorOf([&] { fetch(h, "missing.bin", 0, 10); });
  EXPECT_NE(e.find(origin_->url("missing.bin")), std::string::npos) << e;
  EXPECT_NE(e.find("HTTP 404"), std::string::npos) << e;
  EXPECT_EQ(origin_->requests("missing.bin"), 1u) << "a 404 is not retried";
  EXPECT_LT(secondsSince(t0), 2.0);
}

TEST_F(HttpSourceTest, ServerErrorsAreRetriedThenReported) {
  origin_->setFault("blob.bin", {Fault::Status, 500, 0, 2});
  HttpSource h(origin_->url(), fast());
  EXPECT_EQ(fetch(h, "blob.bin", 0, 4096), data_.substr(0, 4096));
  EXPECT_EQ(origin_->requests("blob.bin"), 3u);

  origin_->resetCounters();
  origin_->setFault("blob.bin", {Fault::Status, 503, 0, -1});
  std::string e = errorOf([&] { fetch(h, "blob.bin", 0, 4096); });
  EXPECT_NE(e.find("HTTP 503"), std::string::npos) << e;
  EXPECT_NE(e.find("gave up after 4 attempts"), std::string::npos) << e;
  EXPECT_EQ(origin_->requests("blob.bin"), 4u);
}

TEST_F(HttpSourceTest, StallTimesOutAndResumesWhereItStopped) {
  origin_->setFault("blob.bin", {Fault::Stall, 0, 300000, 1});
  HttpSource h(origin_->url(), fast());
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(fetch(h, "blob.bin", 0, data_.size()), data_);
  EXPECT_LT(secondsSince(t0), 3.0);
  auto r = origin_->ranges("blob.bin");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1], "bytes=300000-1048575") << "resumed after the last byte received";
  EXPECT_EQ(origin_->bytesSent("blob.bin"), data_.size()) << "no byte was sent twice";

  // A server that always stalls: a clear error within (retries + 1) * timeout.
  origin_->resetCounters();
  origin_->setFault("blob.bin", {Fault::Stall, 0, 0, -1});
  t0 = std::chrono::steady_clock::now();
  std::string e = errorOf([&] { fetch(h, "blob.bin", 0, 1000); });
  EXPECT_NE(e.find("stalled"), std::string::npos) << e;
  EXPECT_LT(secondsSince(t0), 2.5);
  EXPECT_EQ(origin_->requests("blob.bin"), 4u);
}

TEST_F(HttpSourceTest, DroppedConnectionResumes) {
  origin_->setFault("blob.bin", {Fault::Drop, 0, 200000, 2});
  HttpSource h(origin_->url(), fast());
  EXPECT_EQ(fetch(h, "blob.bin", 0, data_.size()), data_);
  auto r = origin_->ranges("blob.bin");
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[1], "bytes=200000-1048575");
  EXPECT_EQ(r[2], "bytes=400000-1048575");
  EXPECT_EQ(origin_->bytesSent("blob.bin"), data_.size());

  // Dropped every time before any byte: no progress, a clear error.
  origin_->setFault("blob.bin", {Fault::Drop, 0, 0, -1});
  std::string e = errorOf([&] { fetch(h, "blob.bin", 0, 1000); });
  EXPECT_NE(e.find("gave up"), std::string::npos) << e;
  EXPECT_NE(e.find("0 of 1000 bytes"), std::string::npos) << e;
}

TEST_F(HttpSourceTest, DroppedConnectionOnAServerIgnoringRangeResumes) {
  HttpSource h(origin_->url(), fast());
  // 200 with the whole file, cut after 100000 bytes; then 200 with the whole file again: the client skips to
  // where it stopped.
  origin_->setIgnoreRange(true);
  origin_->setFault("blob.bin", {Fault::Drop, 0, 100000, 1});
  std::string out = fetch(h, "blob.bin", 5000, 400000);
  EXPECT_EQ(out, data_.substr(5000, 400000));
  EXPECT_EQ(origin_->requests("blob.bin"), 2u);
}

TEST_F(HttpSourceTest, ConnectionRefusedIsAClearBoundedError) {
  const std::string url = origin_->url("manifest.json");
  origin_->stop();
  FetchOptions o = fast();
  o.retries = 1;
  HttpSource h(url, o);
  auto t0 = std::chrono::steady_clock::now();
  std::string e = errorOf([&] { h.fetchFile("manifest.json", 1 << 20); });
  EXPECT_NE(e.find(url), std::string::npos) << e;
  EXPECT_NE(e.find("onnect"), std::string::npos) << e;
  EXPECT_LT(secondsSince(t0), 5.0);
}

// ---- through the store: never a corrupt shard ----

class HttpStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    manifest_ = test::convertMixtralFixture(tmp_ / "m.rdrr").manifest;
    origin_ = std::make_unique<TestOrigin>(tmp_ / "m.rdrr");
    victim_ = manifest_.shards[1];
  }
  PullStats pull(Store& s, FetchOptions o = fast()) {
    HttpSource h(origin_->url("manifest.json"), o);
    PullStats st;
    s.pull(h, nullptr, &st);
    return st;
  }
  TempDir tmp_, cache_;
  Manifest manifest_;
  RdrrShard victim_;
  std::unique_ptr<TestOrigin> origin_;
};

TEST_F(HttpStoreTest, WrongBytesOnceAreFetchedAgain) {
  origin_->setFault(victim_.filename, {Fault::WrongBytes, 0, victim_.size / 2, 1});
  Store s(cache_.path(), false);
  PullStats st = pull(s);
  EXPECT_EQ(origin_->requests(victim_.filename), 2u);
  EXPECT_EQ(sha256File(s.blobPath(victim_.hash)), victim_.hash);
  EXPECT_EQ(st.fetched, st.files);
  test::expectNoCorruptBlob(s.dir());
}

TEST_F(HttpStoreTest, WrongBytesAlwaysIsAClearErrorAndNothingIsStored) {
  origin_->setFault(victim_.filename, {Fault::WrongBytes, 0, 77, -1});
  Store s(cache_.path(), false);
  std::string e = errorOf([&] { pull(s); });
  EXPECT_NE(e.find("SHA-256 mismatch"), std::string::npos) << e;
  EXPECT_NE(e.find(victim_.filename), std::string::npos) << e;
  EXPECT_NE(e.find(victim_.hash), std::string::npos) << e;
  EXPECT_FALSE(pathExists(s.blobPath(victim_.hash)));
  EXPECT_FALSE(pathExists(s.partialPath(victim_.hash)));
  test::expectNoCorruptBlob(s.dir());
}

TEST_F(HttpStoreTest, TruncatedFileIsAClearErrorThenResumesWhenFixed) {
  origin_->setFault(victim_.filename, {Fault::Truncate, 0, victim_.size / 2, -1});
  Store s(cache_.path(), false);
  std::string e = errorOf([&] { pull(s); });
  EXPECT_NE(e.find(victim_.filename), std::string::npos) << e;
  EXPECT_NE(e.find("416"), std::string::npos) << e;
  EXPECT_FALSE(pathExists(s.blobPath(victim_.hash)));
  test::expectNoCorruptBlob(s.dir());
  // The origin is fixed: the next pull resumes the partial file (only the missing half is sent).
  origin_->clearFaults();
  origin_->resetCounters();
  PullStats st = pull(s);
  EXPECT_EQ(origin_->ranges(victim_.filename).back(),
            fmt::format("bytes={}-{}", victim_.size / 2, victim_.size - 1));
  EXPECT_EQ(origin_->bytesSent(victim_.filename), victim_.size - victim_.size / 2);
  EXPECT_EQ(sha256File(s.blobPath(victim_.hash)), victim_.hash);
  EXPECT_EQ(st.fetched, st.files - 1) << "only the first shard was stored before the failure";
}

TEST_F(HttpStoreTest, NotFoundAndServerErrorName) {
  origin_->setFault(victim_.filename, {Fault::Status, 404, 0, -1});
  Store s(cache_.path(), false);
  std::string e = errorOf([&] { pull(s); });
  EXPECT_NE(e.find("HTTP 404"), std::string::npos) << e;
  EXPECT_NE(e.find("mixtral-tiny@"), std::string::npos) << e;
  origin_->setFault(victim_.filename, {Fault::Status, 500, 0, 2});
  origin_->resetCounters();
  pull(s);
  EXPECT_EQ(origin_->requests(victim_.filename), 3u);
  EXPECT_EQ(sha256File(s.blobPath(victim_.hash)), victim_.hash);
  test::expectNoCorruptBlob(s.dir());
}

TEST_F(HttpStoreTest, StallAndDropMidShardAreTransparent) {
  origin_->setFault(victim_.filename, {Fault::Stall, 0, victim_.size / 3, 1});
  origin_->setFault(manifest_.shards[0].filename, {Fault::Drop, 0, manifest_.shards[0].size / 2, 1});
  Store s(cache_.path(), false);
  PullStats st = pull(s);
  EXPECT_EQ(st.fetched, st.files);
  uint64_t total = 0;
  for (const auto& sh : manifest_.shards) total += sh.size;
  for (const auto& f : manifest_.tokenizerFiles) total += f.size;
  EXPECT_EQ(st.bytesFetched, total);
  EXPECT_EQ(origin_->requests(victim_.filename), 2u);
  EXPECT_EQ(origin_->bytesSent(victim_.filename), victim_.size);
  test::expectNoCorruptBlob(s.dir());
  for (const auto& sh : manifest_.shards) EXPECT_EQ(sha256File(s.blobPath(sh.hash)), sh.hash);
}

}  // namespace

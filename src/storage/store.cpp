#include "storage/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/fs_util.h"
#include "core/json_util.h"
#include "core/sha256.h"

namespace doppler {

namespace fs = std::filesystem;

namespace {
constexpr uint64_t kMaxManifestBytes = uint64_t(64) << 20;
const char* kSourceFile = ".source";
const char* kLastUsedFile = ".last-used";
const char* kPinnedFile = ".pinned";

std::string errText() { return std::strerror(errno); }

bool isHexHash(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::vector<std::string> listDir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

void makeDirs(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  check(isDirectory(dir), "{}: cannot create the directory: {}", dir, ec ? ec.message() : "not a directory");
}

// Writes a small file through a temp name and a rename (readers see the old or the new content).
void writeAtomic(const std::string& path, const std::string& data, bool sync) {
  std::string tmp = fmt::format("{}.tmp-{}-{}", path, ::getpid(),
                                std::hash<std::thread::id>()(std::this_thread::get_id()) % 100000);
  writeFile(tmp, data, sync);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    fail("{}: cannot rename into place: {}", path, std::strerror(e));
  }
  if (sync) fsyncPath(parentDir(path));
}

double mtimeOf(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return double(st.st_mtim.tv_sec) + st.st_mtim.tv_nsec * 1e-9;
}

void touch(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return;  // best effort (a read-only cache still serves)
  ::futimens(fd, nullptr);
  ::close(fd);
}

std::string identityOf(const struct stat& st) {
  return fmt::format("{} {} {}.{:09d} {}.{:09d}\n", (unsigned long long)st.st_ino, (long long)st.st_size,
                     (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (long long)st.st_ctim.tv_sec,
                     st.st_ctim.tv_nsec);
}

bool tempName(const std::string& n) {
  return n.find(".tmp-") != std::string::npos || n.find(".old-") != std::string::npos;
}
}  // namespace

std::string safeModelId(const std::string& modelId) {
  std::string out;
  for (size_t i = 0; i < modelId.size(); i++) {
    char c = modelId[i];
    if (c == '/') out += "--";
    else if (std::isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-') out += c;
    else out += '_';
  }
  if (out.empty()) out = "model";
  if (out[0] == '.') out[0] = '_';
  if (out.size() > 200) out = out.substr(0, 200);
  return out;
}

Store::Store(const std::string& cacheRoot, bool sync, bool create) : dir_(joinPath(cacheRoot, "store")), sync_(sync) {
  if (!create) return;
  for (const char* sub : {"blobs/sha256", "models", "sources", "partial", "quarantine", "locks"})
    makeDirs(joinPath(dir_, sub));
}

bool Store::exists() const { return isDirectory(joinPath(dir_, "locks")); }

std::string Store::blobPath(const std::string& hash) const {
  return joinPath(joinPath(joinPath(dir_, "blobs/sha256"), hash.substr(0, 2)), hash);
}
std::string Store::partialPath(const std::string& hash) const { return joinPath(joinPath(dir_, "partial"), hash + ".part"); }
std::string Store::lockPath(const std::string& what) const { return joinPath(joinPath(dir_, "locks"), what + ".lock"); }
std::string Store::modelLockPath(const ModelRef& ref) const { return lockPath("model-" + ref.id + "@" + ref.revision); }

std::vector<Store::Blob> Store::blobsOf(const Manifest& m) {
  std::vector<Blob> out;
  for (const auto& s : m.shards) out.push_back({s.hash, s.filename, s.size});
  for (const auto& f : m.tokenizerFiles) out.push_back({f.hash, f.filename, f.size});
  return out;
}

Manifest Store::loadManifest(const ModelRef& ref) const {
  std::string p = joinPath(ref.dir, kRdrrManifestName);
  return parseManifest(readFile(p), p);
}

// ---- integrity ----

void Store::writeStamp(const std::string& hash) {
  struct stat st {};
  std::string p = blobPath(hash);
  if (::stat(p.c_str(), &st) != 0) return;
  try {
    writeAtomic(p + ".ok", identityOf(st), false);  // losing a stamp only costs a re-hash
  } catch (const Error&) {
  }
}

void Store::quarantine(const std::string& hash, const std::string& why) {
  std::string p = blobPath(hash);
  auto ns = std::chrono::system_clock::now().time_since_epoch().count();
  std::string q = joinPath(joinPath(dir_, "quarantine"), fmt::format("{}.{}", hash, ns));
  if (::rename(p.c_str(), q.c_str()) == 0) {
    try {
      writeFile(q + ".why", why + "\n", false);
    } catch (const Error&) {
    }
  } else if (errno != ENOENT) {
    ::unlink(p.c_str());  // cannot move it aside: never serve it
  }
  ::unlink((p + ".ok").c_str());
}

bool Store::verifyBlob(const std::string& hash, uint64_t size, std::string* problem) {
  std::string p = blobPath(hash);
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return false;
  std::string why;
  if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (uint64_t(st.st_size) != size) {
    why = fmt::format("{} bytes, expected {}", st.st_size, size);
  } else {
    std::string got;
    try {
      got = sha256File(p);
    } catch (const Error& e) {
      if (!pathExists(p)) return false;  // quarantined or evicted meanwhile
      why = e.what();
    }
    if (why.empty() && got == hash) {
      writeStamp(hash);
      return true;
    }
    if (why.empty()) why = fmt::format("SHA-256 mismatch: expected {}, got {}", hash, got);
  }
  if (problem) *problem = why;
  quarantine(hash, p + ": " + why);
  return false;
}

bool Store::blobGood(const std::string& hash, uint64_t size, bool* healed) {
  std::string p = blobPath(hash);
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return false;
  if (S_ISREG(st.st_mode) && uint64_t(st.st_size) == size) {
    std::string stamp;
    try {
      stamp = readFile(p + ".ok");
    } catch (const Error&) {
    }
    if (stamp == identityOf(st)) return true;
  }
  if (verifyBlob(hash, size)) return true;
  if (healed) *healed = true;
  return false;
}

// ---- downloads ----

uint64_t Store::download(const Blob& b, Source& src, const std::function<void(uint64_t)>& onBytes) {
  const std::string part = partialPath(b.hash);
  uint64_t fetched = 0;
  int fresh = 0;
  for (;;) {
    int fd = ::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fail("{}: cannot create: {}", part, errText());
    struct stat st {};
    ::fstat(fd, &st);
    uint64_t have = uint64_t(st.st_size);
    if (have > b.size) {
      check(::ftruncate(fd, 0) == 0, "{}: cannot truncate: {}", part, errText());
      have = 0;
    }
    if (have == 0) fresh++;
    Sha256 h;
    try {
      // The prefix left by an interrupted download (this process or one that died) is hashed and kept.
      std::vector<uint8_t> buf(1 << 20);
      uint64_t at = 0;
      while (at < have) {
        ssize_t n = ::pread(fd, buf.data(), size_t(std::min<uint64_t>(buf.size(), have - at)), off_t(at));
        if (n < 0 && errno == EINTR) continue;
        check(n > 0, "{}: read error: {}", part, n < 0 ? errText() : std::string("unexpected end"));
        h.update(buf.data(), size_t(n));
        at += uint64_t(n);
      }
      if (have > 0) onBytes(have);
      check(::lseek(fd, off_t(have), SEEK_SET) == off_t(have), "{}: seek failed: {}", part, errText());
      src.fetchRange(b.file, have, b.size - have, [&](const uint8_t* p, size_t n) {
        size_t done = 0;
        while (done < n) {
          ssize_t w = ::write(fd, p + done, n - done);
          if (w < 0 && errno == EINTR) continue;
          check(w > 0, "{}: write error: {}", part, w < 0 ? errText() : std::string("no progress"));
          done += size_t(w);
        }
        h.update(p, n);
        fetched += n;
        onBytes(n);
      });
    } catch (...) {
      ::close(fd);  // the partial file stays: the next attempt resumes it
      throw;
    }
    std::string got = h.hexDigest();
    if (got != b.hash) {
      ::close(fd);
      ::unlink(part.c_str());
      if (fresh >= 2)
        fail("{}: SHA-256 mismatch: expected {}, got {} ({} bytes, fetched twice); not stored in the cache",
             src.locate(b.file), b.hash, got, b.size);
      continue;  // a bad resumed prefix or a corrupt transfer: once more from the start
    }
    ::fchmod(fd, 0444);
    if (sync_ && ::fsync(fd) != 0) {
      int e = errno;
      ::close(fd);
      fail("{}: fsync failed: {}", part, std::strerror(e));
    }
    ::close(fd);
    std::string dest = blobPath(b.hash);
    makeDirs(parentDir(dest));
    if (::rename(part.c_str(), dest.c_str()) != 0) fail("{}: cannot rename into {}: {}", part, dest, errText());
    if (sync_) fsyncPath(parentDir(dest));
    writeStamp(b.hash);
    return fetched;
  }
}

void Store::fetchAll(const ModelRef& ref, const std::vector<Blob>& blobs, Source* src, const FetchOptions& fetch,
                     ProgressBar* progress, PullStats& stats) {
  auto t0 = std::chrono::steady_clock::now();
  stats.files = int(blobs.size());
  std::vector<Blob> pending;
  std::set<std::string> seen;
  for (const auto& b : blobs) {
    stats.bytesTotal += b.size;
    if (!seen.insert(b.hash).second) continue;
    bool healed = false;
    if (blobGood(b.hash, b.size, &healed)) continue;
    if (healed) stats.healed++;
    pending.push_back(b);
  }
  uint64_t need = 0;
  for (const auto& b : pending) need += b.size;
  if (progress) progress->setTotal(progress->done() + need);
  if (src && !pending.empty()) {
    std::vector<std::string> names;
    for (const auto& b : pending) names.push_back(b.file);
    src->plan(names);
  }
  std::unique_ptr<Source> owned;
  auto onBytes = [&](uint64_t n) {
    if (progress) progress->add(n);
  };
  while (!pending.empty()) {
    // Take any blob nobody else is downloading; if all are busy, wait for the first.
    size_t pick = pending.size();
    std::optional<FileLock> lk;
    for (size_t i = 0; i < pending.size() && !lk; i++) {
      lk = FileLock::tryAcquire(lockPath("blob-" + pending[i].hash), FileLock::Mode::Exclusive);
      if (lk) pick = i;
    }
    if (!lk) {
      pick = 0;
      lk = FileLock::acquire(lockPath("blob-" + pending[0].hash), FileLock::Mode::Exclusive);
    }
    Blob b = pending[pick];
    pending.erase(pending.begin() + long(pick));
    if (blobGood(b.hash, b.size)) {  // another process published it meanwhile
      onBytes(b.size);
      continue;
    }
    if (!src) {
      std::string spec = readFile(joinPath(ref.dir, kSourceFile));
      try {
        owned = openSource(spec, fetch);
      } catch (const Error& e) {
        fail("{}: {} is not in the cache and its source is unusable: {}", ref.name(), b.file, e.what());
      }
      src = owned.get();
    }
    try {
      stats.bytesFetched += download(b, *src, onBytes);
    } catch (const Error& e) {
      fail("{}: {} is not in the cache and could not be fetched: {}", ref.name(), b.file, e.what());
    }
    stats.fetched++;
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- models ----

ModelRef Store::install(const std::string& bytes, const Manifest& m, const std::string& spec) {
  ModelRef ref;
  ref.id = safeModelId(m.modelId);
  ref.revision = sha256Hex(bytes.data(), bytes.size()).substr(0, 16);
  const std::string idDir = joinPath(joinPath(dir_, "models"), ref.id);
  ref.dir = joinPath(idDir, ref.revision);
  if (!isRegularFile(joinPath(ref.dir, kRdrrManifestName))) {
    makeDirs(idDir);
    std::set<std::string> names;
    for (const auto& b : blobsOf(m))
      check(names.insert(b.file).second && b.file != kRdrrManifestName, "{}: file name '{}' is used twice",
            spec, b.file);
    try {
      AtomicDir ad(ref.dir, false, sync_);
      writeFile(joinPath(ad.path(), kRdrrManifestName), bytes, sync_);
      writeFile(joinPath(ad.path(), kSourceFile), spec, sync_);
      for (const auto& b : blobsOf(m)) {
        std::string target = "../../../blobs/sha256/" + b.hash.substr(0, 2) + "/" + b.hash;
        std::string link = joinPath(ad.path(), b.file);
        if (::symlink(target.c_str(), link.c_str()) != 0) fail("{}: cannot create a symlink: {}", link, errText());
      }
      ad.commit();
    } catch (const Error&) {
      if (!isRegularFile(joinPath(ref.dir, kRdrrManifestName))) throw;  // else another process installed it
    }
  } else if (readFile(joinPath(ref.dir, kSourceFile)) != spec) {
    writeAtomic(joinPath(ref.dir, kSourceFile), spec, sync_);  // heal from the newest source
  }
  Json j = {{"source", spec}, {"id", ref.id}, {"revision", ref.revision}};
  writeAtomic(joinPath(joinPath(dir_, "sources"), sha256Hex(spec.data(), spec.size()).substr(0, 32) + ".json"),
              j.dump(2) + "\n", sync_);
  return ref;
}

std::vector<Store::Blob> Store::filtered(const Manifest& m, const FileFilter& only) {
  std::vector<Blob> blobs = blobsOf(m);
  if (only) std::erase_if(blobs, [&](const Blob& b) { return !only(m, b.file); });
  return blobs;
}

ModelLease Store::pull(Source& src, ProgressBar* progress, PullStats* statsOut, const FileFilter& only) {
  const std::string name = manifestNameOf(src.spec());
  std::string bytes = src.fetchFile(name, kMaxManifestBytes);
  Manifest m = parseManifest(bytes, src.locate(name));
  ModelLease lease;
  {
    FileLock gcLock = FileLock::acquire(lockPath("gc"), FileLock::Mode::Shared);
    lease.ref = install(bytes, m, src.spec());
    lease.lock = FileLock::acquire(modelLockPath(lease.ref), FileLock::Mode::Shared);
  }
  touch(joinPath(lease.ref.dir, kLastUsedFile));
  PullStats stats;
  fetchAll(lease.ref, filtered(m, only), &src, FetchOptions{}, progress, stats);
  if (statsOut) *statsOut = stats;
  return lease;
}

ModelLease Store::lease(const ModelRef& ref) const {
  ModelLease l;
  l.ref = ref;
  {
    FileLock gcLock = FileLock::acquire(lockPath("gc"), FileLock::Mode::Shared);
    check(isRegularFile(joinPath(ref.dir, kRdrrManifestName)), "{}: no longer in the cache ({})", ref.name(), dir_);
    l.lock = FileLock::acquire(modelLockPath(ref), FileLock::Mode::Shared);
  }
  touch(joinPath(ref.dir, kLastUsedFile));
  return l;
}

PullStats Store::ensureComplete(const ModelLease& lease, Source* src, ProgressBar* progress, const FetchOptions& fetch,
                                const FileFilter& only) {
  PullStats stats;
  fetchAll(lease.ref, filtered(loadManifest(lease.ref), only), src, fetch, progress, stats);
  return stats;
}

std::vector<ModelRef> Store::matching(const std::string& idOrName) const {
  std::string id = idOrName, rev;
  if (auto at = idOrName.rfind('@'); at != std::string::npos) {
    id = idOrName.substr(0, at);
    rev = idOrName.substr(at + 1);
  }
  std::vector<ModelRef> out;
  if (id.empty()) return out;
  id = safeModelId(id);
  const std::string idDir = joinPath(joinPath(dir_, "models"), id);
  for (const auto& r : listDir(idDir)) {
    if (tempName(r) || r.compare(0, rev.size(), rev) != 0) continue;
    ModelRef ref{id, r, joinPath(idDir, r)};
    if (isRegularFile(joinPath(ref.dir, kRdrrManifestName))) out.push_back(ref);
  }
  return out;
}

std::optional<ModelRef> Store::find(const std::string& specOrId) const {
  if (isUrl(specOrId) || pathExists(specOrId)) {
    std::string spec;
    try {
      spec = openSource(specOrId)->spec();
    } catch (const Error&) {
      return std::nullopt;
    }
    std::string p = joinPath(joinPath(dir_, "sources"), sha256Hex(spec.data(), spec.size()).substr(0, 32) + ".json");
    if (!isRegularFile(p)) return std::nullopt;
    Json j = readJsonFile(p);
    if (!j.is_object() || !j.contains("id") || !j.contains("revision") || !j["id"].is_string() ||
        !j["revision"].is_string())
      return std::nullopt;
    auto refs = matching(j["id"].get<std::string>() + "@" + j["revision"].get<std::string>());
    for (const auto& r : refs)
      if (r.revision == j["revision"].get<std::string>()) return r;
    return std::nullopt;
  }
  auto refs = matching(specOrId);
  if (refs.empty()) return std::nullopt;
  // The most recently pulled (its manifest was written when it was installed).
  return *std::max_element(refs.begin(), refs.end(), [](const ModelRef& a, const ModelRef& b) {
    return mtimeOf(joinPath(a.dir, kRdrrManifestName)) < mtimeOf(joinPath(b.dir, kRdrrManifestName));
  });
}

std::vector<ModelInfo> Store::list() const {
  std::vector<ModelInfo> out;
  const std::string modelsDir = joinPath(dir_, "models");
  for (const auto& id : listDir(modelsDir)) {
    if (tempName(id)) continue;
    for (const auto& ref : matching(id)) {
      ModelInfo info;
      info.ref = ref;
      Manifest m;
      try {
        m = loadManifest(ref);
      } catch (const Error&) {
        continue;
      }
      info.modelId = m.modelId;
      try {
        info.source = readFile(joinPath(ref.dir, kSourceFile));
      } catch (const Error&) {
      }
      for (const auto& b : blobsOf(m)) {
        info.files++;
        info.bytes += b.size;
        struct stat st {};
        if (::stat(blobPath(b.hash).c_str(), &st) == 0 && uint64_t(st.st_size) == b.size) {
          info.present++;
          info.presentBytes += b.size;
        }
      }
      info.pinned = pathExists(joinPath(ref.dir, kPinnedFile));
      info.inUse = !FileLock::tryAcquire(modelLockPath(ref), FileLock::Mode::Exclusive).has_value();
      info.lastUsed = std::max(mtimeOf(joinPath(ref.dir, kLastUsedFile)), mtimeOf(joinPath(ref.dir, kRdrrManifestName)));
      out.push_back(std::move(info));
    }
  }
  return out;
}

VerifyReport Store::verify(ProgressBar* progress) {
  VerifyReport r;
  // Which model files each blob is.
  std::map<std::string, std::vector<std::string>> uses;
  std::vector<std::pair<ModelRef, Manifest>> models;
  for (const auto& info : list()) {
    try {
      Manifest m = loadManifest(info.ref);
      for (const auto& b : blobsOf(m)) uses[b.hash].push_back(info.ref.name() + "/" + b.file);
      models.emplace_back(info.ref, std::move(m));
    } catch (const Error&) {
    }
  }
  struct Item {
    std::string hash, path;
    uint64_t size;
  };
  std::vector<Item> items;
  const std::string blobs = joinPath(dir_, "blobs/sha256");
  for (const auto& sub : listDir(blobs))
    for (const auto& n : listDir(joinPath(blobs, sub))) {
      if (!isHexHash(n)) continue;
      std::string p = joinPath(joinPath(blobs, sub), n);
      struct stat st {};
      if (::stat(p.c_str(), &st) != 0) continue;
      items.push_back({n, p, uint64_t(st.st_size)});
      r.bytes += uint64_t(st.st_size);
    }
  if (progress) progress->setTotal(r.bytes);
  for (const auto& it : items) {
    r.blobs++;
    Sha256 h;
    std::string why;
    try {
      forEachChunk(it.path, [&](const uint8_t* p, size_t n) {
        h.update(p, n);
        if (progress) progress->add(n);
      });
    } catch (const Error& e) {
      if (!pathExists(it.path)) continue;  // evicted or quarantined meanwhile
      why = e.what();
    }
    std::string got = why.empty() ? h.hexDigest() : "";
    if (why.empty() && got == it.hash) {
      writeStamp(it.hash);
      continue;
    }
    if (why.empty()) why = fmt::format("SHA-256 mismatch: expected {}, got {}", it.hash, got);
    std::string what = uses.count(it.hash) ? uses[it.hash].front() : std::string("no model");
    for (size_t i = 1; i < uses[it.hash].size(); i++) what += ", " + uses[it.hash][i];
    r.bad.push_back(fmt::format("{} ({}): {}; quarantined", it.path, what, why));
    quarantine(it.hash, it.path + ": " + why);
  }
  for (const auto& [ref, m] : models)
    for (const auto& b : blobsOf(m))
      if (!isRegularFile(blobPath(b.hash))) r.missing.push_back(ref.name() + ": " + b.file + " is not cached");
  return r;
}

GcReport Store::gc(std::optional<uint64_t> maxBytes) {
  GcReport r;
  FileLock gcLock = FileLock::acquire(lockPath("gc"), FileLock::Mode::Exclusive);
  // Leftovers of interrupted installs (nobody is installing: that needs the gc lock shared).
  const std::string modelsDir = joinPath(dir_, "models");
  for (const auto& id : listDir(modelsDir)) {
    std::string idDir = joinPath(modelsDir, id);
    for (const auto& rev : listDir(idDir))
      if (tempName(rev)) {
        removeAll(joinPath(idDir, rev));
        r.removedTemp++;
      }
  }
  for (const auto& n : listDir(joinPath(dir_, "sources")))
    if (tempName(n)) ::unlink(joinPath(joinPath(dir_, "sources"), n).c_str());
  for (const auto& n : listDir(joinPath(dir_, "quarantine"))) removeAll(joinPath(joinPath(dir_, "quarantine"), n));

  // Partial downloads nobody is working on.
  uint64_t partialBytes = 0;
  const std::string partialDir = joinPath(dir_, "partial");
  for (const auto& n : listDir(partialDir)) {
    std::string p = joinPath(partialDir, n);
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) continue;
    r.before += uint64_t(st.st_size);
    std::string hash = n.substr(0, n.find('.'));
    auto lk = isHexHash(hash) ? FileLock::tryAcquire(lockPath("blob-" + hash), FileLock::Mode::Exclusive)
                              : std::optional<FileLock>();
    if (lk || !isHexHash(hash)) {
      ::unlink(p.c_str());
      r.removedPartials++;
    } else {
      partialBytes += uint64_t(st.st_size);
    }
  }

  // Who uses each blob, and how recently.
  struct Use {
    bool prot = false;
    double lastUsed = 0;
  };
  std::map<std::string, Use> uses;
  for (const auto& info : list()) {
    Manifest m;
    try {
      m = loadManifest(info.ref);
    } catch (const Error&) {
      continue;
    }
    for (const auto& b : blobsOf(m)) {
      Use& u = uses[b.hash];
      u.prot = u.prot || info.inUse || info.pinned;
      u.lastUsed = std::max(u.lastUsed, info.lastUsed);
    }
  }
  struct Item {
    std::string hash, path;
    uint64_t size;
    double lastUsed;
  };
  std::vector<Item> evictable;
  uint64_t total = partialBytes;
  const std::string blobs = joinPath(dir_, "blobs/sha256");
  for (const auto& sub : listDir(blobs))
    for (const auto& n : listDir(joinPath(blobs, sub))) {
      std::string p = joinPath(joinPath(blobs, sub), n);
      if (!isHexHash(n)) {
        if (n.size() > 67 && n.compare(64, 3, ".ok") == 0 && !pathExists(p.substr(0, p.size() - (n.size() - 64))))
          ::unlink(p.c_str());  // a stamp without its blob
        continue;
      }
      struct stat st {};
      if (::stat(p.c_str(), &st) != 0) continue;
      uint64_t sz = uint64_t(st.st_size);
      r.before += sz;
      auto it = uses.find(n);
      if (it == uses.end()) {  // orphan: no model refers to it
        ::unlink(p.c_str());
        ::unlink((p + ".ok").c_str());
        r.evicted++;
        r.evictedBytes += sz;
        continue;
      }
      total += sz;
      if (it->second.prot) r.protectedBytes += sz;
      else evictable.push_back({n, p, sz, it->second.lastUsed});
    }
  if (maxBytes) {
    std::sort(evictable.begin(), evictable.end(), [](const Item& a, const Item& b) { return a.lastUsed < b.lastUsed; });
    for (const auto& it : evictable) {
      if (total <= *maxBytes) break;
      auto lk = FileLock::tryAcquire(lockPath("blob-" + it.hash), FileLock::Mode::Exclusive);
      if (!lk) continue;
      ::unlink(it.path.c_str());
      ::unlink((it.path + ".ok").c_str());
      total -= it.size;
      r.evicted++;
      r.evictedBytes += it.size;
    }
  }
  r.after = total;
  return r;
}

std::vector<ModelRef> Store::remove(const std::string& idOrName) {
  FileLock gcLock = FileLock::acquire(lockPath("gc"), FileLock::Mode::Exclusive);
  auto refs = matching(idOrName);
  check(!refs.empty(), "no model '{}' in the cache ({})", idOrName, dir_);
  std::vector<FileLock> held;
  std::set<std::string> removedHashes;
  for (const auto& ref : refs) {
    auto lk = FileLock::tryAcquire(modelLockPath(ref), FileLock::Mode::Exclusive);
    check(lk.has_value(), "{}: in use by another process; not removed", ref.name());
    held.push_back(std::move(*lk));
  }
  for (const auto& ref : refs) {
    try {
      for (const auto& b : blobsOf(loadManifest(ref))) removedHashes.insert(b.hash);
    } catch (const Error&) {
    }
    std::string gone = ref.dir + ".old-rm" + std::to_string(::getpid());
    if (::rename(ref.dir.c_str(), gone.c_str()) != 0) fail("{}: cannot remove: {}", ref.dir, errText());
    removeAll(gone);
  }
  const std::string idDir = joinPath(joinPath(dir_, "models"), refs.front().id);
  ::rmdir(idDir.c_str());  // only if empty
  // Source mappings that point at a removed revision.
  const std::string sources = joinPath(dir_, "sources");
  for (const auto& n : listDir(sources)) {
    std::string p = joinPath(sources, n);
    try {
      Json j = readJsonFile(p);
      for (const auto& ref : refs)
        if (j.value("id", "") == ref.id && j.value("revision", "") == ref.revision) ::unlink(p.c_str());
    } catch (const Error&) {
    }
  }
  // Blobs no remaining model uses.
  std::set<std::string> stillUsed;
  for (const auto& info : list()) {
    try {
      for (const auto& b : blobsOf(loadManifest(info.ref))) stillUsed.insert(b.hash);
    } catch (const Error&) {
    }
  }
  for (const auto& h : removedHashes)
    if (!stillUsed.count(h)) {
      ::unlink(blobPath(h).c_str());
      ::unlink((blobPath(h) + ".ok").c_str());
    }
  return refs;
}

void Store::setPinned(const std::string& idOrName, bool pinned) {
  auto refs = matching(idOrName);
  check(!refs.empty(), "no model '{}' in the cache ({})", idOrName, dir_);
  for (const auto& ref : refs) {
    std::string p = joinPath(ref.dir, kPinnedFile);
    if (pinned) writeFile(p, "", sync_);
    else ::unlink(p.c_str());
  }
}

}  // namespace doppler

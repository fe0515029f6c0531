// The persistent shard store: the cache's disk tier (docs/cache.md).
//
//   <cache>/store/blobs/sha256/ab/<hash>        verified file contents (shards, tokenizer files), read-only,
//                                               named by their SHA-256; <hash>.ok records the file's identity
//                                               (inode, size, mtime, ctime) when it was last verified
//   <cache>/store/models/<id>/<rev>/            one model revision: manifest.json (the bytes the source
//                                               served) + a relative symlink per file into blobs/, .source
//                                               (where it came from), .last-used, .pinned
//   <cache>/store/sources/<key>.json            source spec (URL / path) -> model id and revision
//   <cache>/store/partial/<hash>.part           a download in progress (resumed after a crash)
//   <cache>/store/quarantine/                   blobs that failed verification, never served
//   <cache>/store/locks/                        flock files: one per blob (one downloader at a time), one per
//                                               model revision (shared while a process uses it), gc.lock
//
// The revision is the first 16 hex digits of the manifest's SHA-256; the id is the manifest's model id made
// safe for a file name. Integrity: a blob is written to partial/, hashed while it streams, fsynced, renamed
// into blobs/ and the directory fsynced, so a SIGKILL at any instant leaves only complete, verified blobs
// visible. Opening a model checks every blob cheaply (exists, size, and the identity recorded at its last
// verification: any write to the file changes its ctime); a blob that fails is re-hashed, quarantined if bad
// and fetched again from the model's source. `verify()` re-hashes everything.
// Several processes share a store: a blob is downloaded by one process at a time (the others wait for it or
// take other blobs first), and gc never evicts a blob of a model that is in use (leased) or pinned.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/progress.h"
#include "format/rdrr_manifest.h"
#include "storage/file_lock.h"
#include "storage/source.h"

namespace doppler {

struct ModelRef {
  std::string id;        // safe model id ("mixtral")
  std::string revision;  // 16 hex digits
  std::string dir;       // <store>/models/<id>/<rev>: an RDRR directory once every blob is present
  std::string name() const { return id + "@" + revision; }
};

// A model in use by this process: holds its lock shared until destroyed (gc skips it, rm refuses it).
struct ModelLease {
  ModelRef ref;
  FileLock lock;
};

struct PullStats {
  int files = 0;               // shard + tokenizer files of the model
  int fetched = 0;             // files downloaded by this call
  int healed = 0;              // of which were present but failed verification (quarantined)
  uint64_t bytesFetched = 0;   // body bytes written by this call
  uint64_t bytesTotal = 0;     // all files of the model
  double seconds = 0;
};

struct ModelInfo {
  ModelRef ref;
  std::string modelId;   // as the manifest spells it
  std::string source;    // the spec it was pulled from
  int files = 0, present = 0;
  uint64_t bytes = 0, presentBytes = 0;
  bool pinned = false, inUse = false;
  double lastUsed = 0;   // unix seconds
};

struct VerifyReport {
  uint64_t blobs = 0, bytes = 0;
  std::vector<std::string> bad;      // one line per corrupt blob: what it is, expected vs actual; quarantined
  std::vector<std::string> missing;  // "<model>: <file> is not cached" (lazy pulls, eviction: not an error)
};

struct GcReport {
  uint64_t before = 0, after = 0;     // bytes in blobs/ + partial/
  int evicted = 0;                    // blobs removed
  uint64_t evictedBytes = 0;
  uint64_t protectedBytes = 0;        // bytes of blobs of models in use or pinned
  int removedPartials = 0, removedTemp = 0;
};

// Which of a model's files to fetch now (by file name in the model dir, given its manifest); null: all.
using FileFilter = std::function<bool(const Manifest& m, const std::string& file)>;

class Store {
 public:
  // cacheRoot: the cache directory (engine/model_source.h cacheRoot()); the store lives in <cacheRoot>/store.
  // create = false only looks (find/list on a cache that does not exist yet find nothing, create nothing).
  explicit Store(const std::string& cacheRoot, bool sync = true, bool create = true);
  bool exists() const;

  const std::string& dir() const { return dir_; }

  // Fetches the manifest from `src`, records the revision, then fetches every file that is missing or fails
  // verification. The model is leased while it is pulled; the lease is returned (keep it while using the
  // model). `progress` (may be null) counts the bytes to fetch.
  // `only`: fetch just these files now (a lazy pull: the rest are fetched on first use, through
  // ensureComplete with a filter naming them).
  ModelLease pull(Source& src, ProgressBar* progress = nullptr, PullStats* stats = nullptr,
                  const FileFilter& only = nullptr);

  // A cached model: a source spec pulled before (URL or path) or a cache id "ID" / "ID@REV" (REV: a prefix
  // of the revision; without it the most recently pulled revision). nullopt if the cache has none.
  std::optional<ModelRef> find(const std::string& specOrId) const;
  // Leases a model (shared lock) and marks it used now (LRU).
  ModelLease lease(const ModelRef& ref) const;
  // Makes every file of a leased model present and verified, fetching from `src` (or, if null, the source
  // it was pulled from, opened only when something is missing). Returns what was fetched.
  // `only`: just the files it accepts (null: every file).
  PullStats ensureComplete(const ModelLease& lease, Source* src = nullptr, ProgressBar* progress = nullptr,
                           const FetchOptions& fetch = FetchOptions::fromEnvironment(),
                           const FileFilter& only = nullptr);

  std::vector<ModelInfo> list() const;
  // Re-hashes every blob; corrupt ones are quarantined (and listed). Missing files of models are listed.
  VerifyReport verify(ProgressBar* progress = nullptr);
  // Removes stale partial downloads and temp dirs, orphan blobs (no model refers to them) and the
  // quarantine; then, with maxBytes, evicts the least recently used blobs until blobs + partials fit,
  // never a blob of a model in use or pinned.
  GcReport gc(std::optional<uint64_t> maxBytes);
  // Removes a model ("ID" = every revision, or "ID@REV"); its blobs go unless another model uses them.
  // Error if it is unknown or in use. Returns the revisions removed.
  std::vector<ModelRef> remove(const std::string& idOrName);
  void setPinned(const std::string& idOrName, bool pinned);

  // Paths (public for tests and docs).
  std::string blobPath(const std::string& hash) const;
  std::string partialPath(const std::string& hash) const;
  // Full check of one blob: true if present with the right size and hash (records its identity); a bad
  // blob is quarantined and false returned; a missing one returns false.
  bool verifyBlob(const std::string& hash, uint64_t size, std::string* problem = nullptr);

 private:
  struct Blob {
    std::string hash, file;  // file: name inside the model dir
    uint64_t size = 0;
  };
  static std::vector<Blob> blobsOf(const Manifest& m);
  static std::vector<Blob> filtered(const Manifest& m, const FileFilter& only);
  Manifest loadManifest(const ModelRef& ref) const;
  // Cheap check (identity recorded at the last verification), else a full check.
  bool blobGood(const std::string& hash, uint64_t size, bool* healed = nullptr);
  // Downloads one blob holding its lock (already held by the caller). Returns bytes written.
  uint64_t download(const Blob& b, Source& src, const std::function<void(uint64_t)>& onBytes);
  void fetchAll(const ModelRef& ref, const std::vector<Blob>& blobs, Source* src, const FetchOptions& fetch,
                ProgressBar* progress, PullStats& stats);
  void quarantine(const std::string& hash, const std::string& why);
  void writeStamp(const std::string& hash);
  ModelRef install(const std::string& manifestBytes, const Manifest& m, const std::string& spec);
  std::vector<ModelRef> matching(const std::string& idOrName) const;
  std::string lockPath(const std::string& what) const;
  std::string modelLockPath(const ModelRef& ref) const;

  std::string dir_;
  bool sync_;
};

// "org/Model-7B" -> "org--Model-7B"; characters outside [A-Za-z0-9._-] become '_'; never empty or dot-led.
std::string safeModelId(const std::string& modelId);

}  // namespace doppler

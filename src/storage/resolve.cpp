#include "storage/resolve.h"

#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/fs_util.h"
#include "storage/store.h"

namespace doppler {

namespace {
// Leases taken by resolveStoreModel live as long as the process.
std::vector<std::shared_ptr<ModelLease>>& heldLeases() {
  static auto* v = new std::vector<std::shared_ptr<ModelLease>>();
  return *v;
}
std::mutex leaseMu;
}  // namespace

bool isStoreModelArg(const std::string& arg) { return isUrl(arg) || (!arg.empty() && !pathExists(arg)); }

std::vector<bool> denseShards(const Manifest& m) {
  std::vector<bool> dense(m.shards.size(), false);
  for (const auto& [name, t] : m.tensors)
    if (t.role != TensorRole::Expert && t.shard >= 0 && size_t(t.shard) < dense.size()) dense[size_t(t.shard)] = true;
  return dense;
}

StoreModel resolveStoreModel(const std::string& arg, const std::string& cacheRoot, bool quiet, bool lazy,
                             const StoreSwarmOptions& swarm) {
  std::unique_ptr<ProgressBar> bar;
  if (!quiet) bar = std::make_unique<ProgressBar>("pull", 0);
  auto lease = std::make_shared<ModelLease>();
  // Lazy: now only the tokenizer files and the shards holding dense tensors; expert-only shards on first use.
  FileFilter only;
  if (lazy)
    only = [memo = std::make_shared<std::map<std::string, bool>>()](const Manifest& m, const std::string& file) {
      // Built once (this filter serves one fetch of one manifest), not once per file: file -> fetch now.
      if (memo->size() != m.shards.size()) {
        const std::vector<bool> dense = denseShards(m);
        memo->clear();
        for (const auto& s : m.shards) (*memo)[s.filename] = dense[size_t(s.index)];
      }
      auto it = memo->find(file);
      return it == memo->end() || it->second;  // tokenizer files and dense shards now
    };
  // With peers: one swarm source for the whole run (the fetcher keeps it), peers first, the origin after.
  std::shared_ptr<Source> src;
  auto swarmSource = [&](const std::string& spec) {
    if (!swarm.enabled()) return;
    src = openPullSource(spec, swarm.swarm, swarm.noOrigin, FetchOptions::fromEnvironment(),
                         joinPath(Store(cacheRoot).dir(), "swarm"), quiet);
  };
  if (isUrl(arg) || isSwarmSpec(arg)) {
    Store store(cacheRoot);
    if (auto ref = store.find(arg)) {
      *lease = store.lease(*ref);
      swarmSource(arg);
      store.ensureComplete(*lease, src.get(), bar.get(), FetchOptions::fromEnvironment(), only);
    } else {
      swarmSource(arg);
      if (!src) src = openSource(arg);
      *lease = store.pull(*src, bar.get(), nullptr, only);
    }
  } else {
    Store probe(cacheRoot, true, false);
    std::optional<ModelRef> ref;
    if (probe.exists()) ref = probe.find(arg);
    if (!ref)
      fail("{}: no such model directory, and no model '{}' in the cache ({}); pull it with `doppler pull URL`", arg,
           arg, probe.dir());
    Store store(cacheRoot);
    *lease = store.lease(*ref);
    swarmSource(readFile(joinPath(ref->dir, ".source")));
    store.ensureComplete(*lease, src.get(), bar.get(), FetchOptions::fromEnvironment(), only);
  }
  if (bar && bar->done() > 0) bar->finish();
  StoreModel out;
  out.dir = lease->ref.dir;
  if (lazy) {
    out.stats = std::make_shared<LazyFetchStats>();
    const std::string mp = joinPath(out.dir, kRdrrManifestName);
    const Manifest m = parseManifest(readFile(mp), mp);
    for (const auto& s : m.shards)
      if (!isRegularFile(joinPath(out.dir, s.filename))) out.stats->deferred++;
    // Called by RdrrModel (one fetch at a time per model) for an expert shard on its first use; the store
    // verifies it before it becomes visible. The source is the one the model was pulled from.
    out.fetcher = [cacheRoot, lease, stats = out.stats, src](const RdrrShard& s) {
      Store store(cacheRoot);
      PullStats ps = store.ensureComplete(*lease, src.get(), nullptr, FetchOptions::fromEnvironment(),
                                          [&](const Manifest&, const std::string& f) { return f == s.filename; });
      stats->shards += uint64_t(ps.fetched);
      stats->bytes += ps.bytesFetched;
    };
  }
  std::lock_guard<std::mutex> lk(leaseMu);
  heldLeases().push_back(lease);
  return out;
}

}  // namespace doppler

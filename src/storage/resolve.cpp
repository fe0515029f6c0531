#include "storage/resolve.h"

#include <memory>
#include <mutex>
#include <vector>

#include "core/error.h"
#include "core/fs_util.h"
#include "storage/store.h"

namespace doppler {

namespace {
// Leases taken by resolveStoreModel live as long as the process.
std::vector<ModelLease>& heldLeases() {
  static auto* v = new std::vector<ModelLease>();
  return *v;
}
std::mutex leaseMu;
}  // namespace

bool isStoreModelArg(const std::string& arg) { return isUrl(arg) || (!arg.empty() && !pathExists(arg)); }

std::string resolveStoreModel(const std::string& arg, const std::string& cacheRoot, bool quiet) {
  std::unique_ptr<ProgressBar> bar;
  if (!quiet) bar = std::make_unique<ProgressBar>("pull", 0);
  ModelLease lease;
  if (isUrl(arg)) {
    Store store(cacheRoot);
    if (auto ref = store.find(arg)) {
      lease = store.lease(*ref);
      store.ensureComplete(lease, nullptr, bar.get());
    } else {
      auto src = openSource(arg);
      lease = store.pull(*src, bar.get());
    }
  } else {
    Store probe(cacheRoot, true, false);
    std::optional<ModelRef> ref;
    if (probe.exists()) ref = probe.find(arg);
    if (!ref)
      fail("{}: no such model directory, and no model '{}' in the cache ({}); pull it with `doppler pull URL`", arg,
           arg, probe.dir());
    Store store(cacheRoot);
    lease = store.lease(*ref);
    store.ensureComplete(lease, nullptr, bar.get());
  }
  if (bar && bar->done() > 0) bar->finish();
  std::string dir = lease.ref.dir;
  std::lock_guard<std::mutex> lk(leaseMu);
  heldLeases().push_back(std::move(lease));
  return dir;
}

}  // namespace doppler

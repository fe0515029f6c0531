#include "loader/tier_cache.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>

#include "core/error.h"
#include "core/trace.h"
#include "core/size.h"

namespace doppler {

namespace {
constexpr double kKeep = 1e300;     // eviction value of the next streamed layer
constexpr double kPending = 1e200;  // added to a pending prefetch's value (a demand's last resort)
}  // namespace

TierCache::TierCache(const RdrrModel& model, Backend& backend, const TierPlan& plan, uint64_t deviceBudget,
                     uint64_t hostBudget, const TierCacheOptions& opts)
    : model_(model),
      backend_(backend),
      plan_(plan),
      opts_(opts),
      device_(backend, Tier::Device, deviceBudget),
      host_(backend, Tier::Host, hostBudget),
      halfLife_(opts.halfLifeSteps > 0 ? opts.halfLifeSteps : 4.0 * std::max(1, plan.numLayers)),
      st_(plan.units.size()) {
  try {
    for (size_t u = 0; u < plan_.units.size(); u++)
      if (plan_.resident[u]) loadResident(int(u));
    host_.trim();  // the staging buffers: their room goes to paged units
  } catch (...) {
    for (size_t u = 0; u < st_.size(); u++)
      if (st_[u].dev) device_.release(st_[u].dev, plan_.units[u].bytes);
    throw;
  }
  loader_ = std::thread([this] { loaderMain(); });
  std::map<uint64_t, size_t> sizes;  // paged unit bytes -> how many
  for (size_t u = 0; u < plan_.units.size(); u++)
    if (!plan_.resident[u]) sizes[plan_.units[u].bytes]++, pagedUnits_++;
  for (const auto& [bytes, count] : sizes)
    if (!growBytes_ || count > sizes[growBytes_]) growBytes_ = bytes;
  if (opts_.hostReserveBytes > 0 && growBytes_ > 0) grower_ = std::thread([this] { growerMain(); });
}

TierCache::~TierCache() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  growCv_.notify_all();
  if (loader_.joinable()) loader_.join();
  if (grower_.joinable()) grower_.join();
  for (size_t u = 0; u < st_.size(); u++) {
    if (st_[u].dev) device_.release(st_[u].dev, plan_.units[u].bytes);
    if (st_[u].host) host_.release(st_[u].host, plan_.units[u].bytes);
  }
  for (auto& [ticket, part] : parts_)
    if (part.dev) device_.release(part.dev, part.bytes);
}

void TierCache::loadResident(int u) {
  const Unit& un = plan_.units[size_t(u)];
  auto* dev = static_cast<uint8_t*>(device_.tryAllocate(un.bytes));
  check(dev != nullptr, "device tier: resident {} ({}) does not fit: {} of the {} budget in use", un.label,
        formatSize(un.bytes), formatSize(device_.inUse()), formatSize(device_.budget()));
  st_[size_t(u)].dev = dev;
  // Stage through host RAM in chunks (the host budget may be far smaller than an embedding table).
  uint64_t maxRead = 0;
  for (const auto& r : un.reads) maxRead = std::max(maxRead, r.size);
  const uint64_t chunk = std::max<uint64_t>(1, std::min({opts_.stagingBytes, host_.budget(), maxRead}));
  auto* staging = maxRead ? static_cast<uint8_t*>(host_.tryAllocate(chunk)) : nullptr;
  check(maxRead == 0 || staging != nullptr, "host tier: no room for a {} staging buffer ({} of the {} budget in use)",
        formatSize(chunk), formatSize(host_.inUse()), formatSize(host_.budget()));
  try {
    for (const auto& r : un.reads) {
      for (uint64_t off = 0; off < r.size; off += chunk) {
        const uint64_t n = std::min(chunk, r.size - off);
        model_.readRange(r.shard, r.fileOffset + off, n, staging);
        backend_.copy(dev + r.unitOffset + off, Tier::Device, staging, Tier::Host, n);
      }
    }
  } catch (...) {
    host_.release(staging, chunk);
    throw;
  }
  host_.release(staging, chunk);
  for (const auto& g : un.gathers)
    for (uint64_t r = 0; r < g.rows; r++)
      backend_.copy(dev + g.dst + r * g.dstStride, Tier::Device, dev + g.src + r * g.srcStride, Tier::Device,
                    g.rowBytes);
  st_[size_t(u)].devReady = true;
  stats_.device.bytesIn += un.bytes;
  stats_.host.bytesIn += un.readBytes;
  stats_.host.bytesOut += un.readBytes;
  stats_.disk.bytesOut += un.readBytes;
}

const uint8_t* TierCache::residentData(int unit) const {
  if (unit < 0 || size_t(unit) >= st_.size() || !plan_.resident[size_t(unit)]) return nullptr;
  return st_[size_t(unit)].dev;
}

// ---------------------------------------------------------------- values and victims

double TierCache::value(int u) const {
  const State& s = st_[size_t(u)];
  return s.freq * std::exp2(-double(clock_ - s.last) / halfLife_);
}

double TierCache::evictionValue(int u) const {
  const Unit& un = plan_.units[size_t(u)];
  if (un.kind == UnitKind::Dense) {
    // Streamed layers are used once per pass: the one whose next use is farthest goes first; the next one stays.
    const int L = std::max(1, plan_.numLayers);
    const int d = ((un.layer - std::max(curLayer_, 0) - 1) % L + L) % L + 1;  // 1 = the next layer
    return d == 1 ? kKeep : -double(d);
  }
  return value(u);
}

int64_t TierCache::stepOf(int layer) const {
  const int64_t L = std::max(1, plan_.numLayers);
  return (layer >= curLayer_ ? pass_ : pass_ + 1) * L + layer;
}

int TierCache::deviceVictim(int u, bool demand, PrefetchHint hint) const {
  int best = -1;
  double bestKey = 0;
  const double limit = hint == PrefetchHint::Predicted ? value(u) + 1.0 : INFINITY;
  for (int v : onDevice_) {
    const State& s = st_[size_t(v)];
    if (v == u || s.pins > 0 || s.waiters > 0) continue;
    double key = evictionValue(v);
    if (s.prefetched) {
      if (!demand) continue;  // a prefetch never evicts another pending prefetch
      key += kPending;
    }
    if (!demand && plan_.units[size_t(v)].kind == UnitKind::Expert && key >= limit) continue;
    if (best < 0 || key < bestKey || (key == bestKey && s.last < st_[size_t(best)].last)) {
      best = v;
      bestKey = key;
    }
  }
  return best;
}

int TierCache::hostVictim(int u) const {
  // Keep streamed dense layers in host RAM before experts; among the rest drop host copies of units that are in
  // the device tier first (they are served from there), then the least valuable.
  int best = -1;
  std::tuple<int, int, double> bestKey{};
  for (int v : onHost_) {
    if (v == u) continue;
    const State& s = st_[size_t(v)];
    if (s.hostPins > 0) continue;
    std::tuple<int, int, double> key{plan_.units[size_t(v)].kind == UnitKind::Dense ? 1 : 0, s.devReady ? 0 : 1,
                                     evictionValue(v)};
    if (best < 0 || key < bestKey) {
      best = v;
      bestKey = key;
    }
  }
  return best;
}

void TierCache::evictDevice(int v) {
  State& s = st_[size_t(v)];
  device_.release(s.dev, plan_.units[size_t(v)].bytes);
  s.dev = nullptr;
  s.devReady = false;
  onDevice_.erase(v);
  stats_.device.evictions++;
  if (s.prefetched) {
    s.prefetched = false;
    stats_.prefetch.wasted++;
  }
}

void TierCache::evictHost(int v) {
  State& s = st_[size_t(v)];
  host_.release(s.host, plan_.units[size_t(v)].bytes);
  s.host = nullptr;
  onHost_.erase(v);
  stats_.host.evictions++;
}

// ---------------------------------------------------------------- compute-thread side

void TierCache::advance(int layer) {
  std::lock_guard<std::mutex> lk(mu_);
  if (layer == curLayer_) return;
  if (layer < curLayer_) pass_++;
  curLayer_ = layer;
  clock_++;
  const int64_t now = currentStep();
  for (int v : onDevice_) {
    State& s = st_[size_t(v)];
    if (s.prefetched && s.prefetchStep < now) {  // its layer ran without it
      s.prefetched = false;
      stats_.prefetch.wasted++;
    }
  }
  dropStaleLocked();
  cv_.notify_all();
}

void TierCache::dropStaleLocked() {
  const int64_t now = currentStep();
  for (auto it = queue_.begin(); it != queue_.end();) {
    const State& s = st_[size_t(it->unit)];
    if (s.devReady || s.devLoading) {
      it = queue_.erase(it);
    } else if (it->step < now) {
      stats_.prefetch.dropped++;
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
}

const uint8_t* TierCache::acquire(int u) {
  check(u >= 0 && size_t(u) < st_.size(), "tier cache: unit {} out of range", u);
  std::unique_lock<std::mutex> lk(mu_);
  State& s = st_[size_t(u)];
  if (plan_.resident[size_t(u)]) return s.dev;
  s.freq = value(u) + 1.0;
  s.last = clock_;
  s.uses++;
  if (s.devReady) {
    stats_.device.hits++;
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    if (s.devLoading) {
      stats_.device.hits++;  // on its way already (a prefetch)
      if (s.prefetched) stats_.prefetch.late++;
    } else {
      stats_.device.misses++;
      s.error = nullptr;
    }
    s.waiters++;
    for (;;) {
      if (s.devReady) break;
      if (s.error) {
        s.waiters--;
        auto e = std::exchange(s.error, nullptr);
        std::rethrow_exception(e);
      }
      if (!s.devLoading && std::find(demand_.begin(), demand_.end(), u) == demand_.end()) {
        demand_.push_back(u);
        cv_.notify_all();
      }
      readyCv_.wait(lk);
    }
    s.waiters--;
    addStallLocked(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), u);
  }
  if (s.prefetched) {
    s.prefetched = false;
    stats_.prefetch.used++;
  }
  s.pins++;
  return s.dev;
}

TierCache::Where TierCache::where(int u) const {
  check(u >= 0 && size_t(u) < st_.size(), "tier cache: unit {} out of range", u);
  std::lock_guard<std::mutex> lk(mu_);
  const State& s = st_[size_t(u)];
  if (plan_.resident[size_t(u)] || s.devReady) return Where::Device;
  if (s.devLoading) return Where::Loading;
  return onHost_.count(u) ? Where::Host : Where::Disk;
}

const uint8_t* TierCache::acquireHost(int u) {
  check(u >= 0 && size_t(u) < st_.size(), "tier cache: unit {} out of range", u);
  std::lock_guard<std::mutex> lk(mu_);
  State& s = st_[size_t(u)];
  if (plan_.resident[size_t(u)] || !onHost_.count(u)) return nullptr;
  s.freq = value(u) + 1.0;
  s.last = clock_;
  s.uses++;
  s.hostPins++;
  stats_.host.hits++;
  return s.host;
}

void TierCache::releaseHost(int u) {
  std::lock_guard<std::mutex> lk(mu_);
  State& s = st_[size_t(u)];
  if (s.hostPins > 0) --s.hostPins;
}

double TierCache::copyRate() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_.copySeconds > 0 && stats_.copyBytes > 0 ? double(stats_.copyBytes) / stats_.copySeconds : 0.0;
}

double TierCache::heat(int u) const {
  std::lock_guard<std::mutex> lk(mu_);
  return value(u);
}

void TierCache::release(int u) {
  std::lock_guard<std::mutex> lk(mu_);
  State& s = st_[size_t(u)];
  if (plan_.resident[size_t(u)]) return;
  if (s.pins > 0 && --s.pins == 0) cv_.notify_all();
}

void TierCache::prefetch(std::span<const int> units, PrefetchHint hint, int layer) {
  if (!opts_.prefetch || units.empty()) return;
  std::lock_guard<std::mutex> lk(mu_);
  const int64_t step = stepOf(layer);
  auto wanted = [&](int u) {
    const State& s = st_[size_t(u)];
    return !plan_.resident[size_t(u)] && !s.devReady && !s.devLoading;
  };
  if (hint == PrefetchHint::Needed) {
    // What `layer` needs is known now: queued guesses for it (and older ones) give way, and these go first.
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->step <= step && plan_.units[size_t(it->unit)].kind == UnitKind::Expert) {
        if (it->hint == PrefetchHint::Predicted) stats_.prefetch.dropped++;
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    std::vector<Request> front;
    for (int u : units)
      if (wanted(u)) front.push_back({u, hint, step});
    queue_.insert(queue_.begin(), front.begin(), front.end());
  } else {
    for (int u : units) {
      if (!wanted(u)) continue;
      if (!onDisk(u)) {  // a guess never fetches a shard from a remote source (lazily pulled models)
        stats_.prefetch.dropped++;
        continue;
      }
      bool queued = std::any_of(queue_.begin(), queue_.end(), [&](const Request& r) { return r.unit == u; });
      if (!queued) queue_.push_back({u, hint, step});
    }
  }
  cv_.notify_all();
}

bool TierCache::onDisk(int u) const {
  for (const auto& r : plan_.units[size_t(u)].reads)
    if (!model_.shardPresent(r.shard)) return false;
  return true;
}

void TierCache::prefetchLayerUnit(int u, int layer) {
  if (!opts_.prefetch) return;
  std::lock_guard<std::mutex> lk(mu_);
  const State& s = st_[size_t(u)];
  if (plan_.resident[size_t(u)] || s.devReady || s.devLoading) return;
  if (std::any_of(queue_.begin(), queue_.end(), [&](const Request& r) { return r.unit == u; })) return;
  queue_.push_back({u, PrefetchHint::Needed, stepOf(layer)});
  cv_.notify_all();
}

void TierCache::recordPrediction(uint64_t predicted, uint64_t correct, uint64_t actual) {
  std::lock_guard<std::mutex> lk(mu_);
  stats_.prefetch.predicted += predicted;
  stats_.prefetch.predictedCorrect += correct;
  stats_.prefetch.actual += actual;
}

// ---------------------------------------------------------------- loader thread

void TierCache::loaderMain() {
  trace::nameThread("loader");
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    if (stop_) return;
    int u = -1;
    bool demand = false;
    Request req{-1, PrefetchHint::Needed, 0};
    if (!demand_.empty()) {
      u = demand_.front();
      demand = true;
    } else if (!partQueue_.empty()) {
      const int ticket = partQueue_.front();
      if (!loadPartLocked(lk, ticket)) {
        cv_.wait(lk);  // no room yet: every device block is pinned or loading; a release makes some
        continue;
      }
      partQueue_.erase(std::find(partQueue_.begin(), partQueue_.end(), ticket));
      continue;
    } else {
      dropStaleLocked();
      if (!queue_.empty()) {
        req = queue_.front();
        u = req.unit;
      }
    }
    if (u < 0) {
      cv_.wait(lk);
      continue;
    }
    State& s = st_[size_t(u)];
    if (s.devReady || s.devLoading) {
      if (demand) demand_.pop_front();
      else queue_.pop_front();
      continue;
    }
    const Unit& un = plan_.units[size_t(u)];
    void* p = nullptr;
    while (!(p = device_.tryAllocate(un.bytes))) {
      int v = deviceVictim(u, demand, req.hint);
      if (v < 0) break;
      evictDevice(v);
    }
    if (!p) {
      if (demand) {
        demand_.pop_front();
        s.error = std::make_exception_ptr(Error(fmt::format(
            "device tier: no room for {} ({}): {} of the {} budget is pinned or loading", un.label,
            formatSize(un.bytes), formatSize(device_.inUse()), formatSize(device_.budget()))));
        readyCv_.notify_all();
      } else if (req.hint == PrefetchHint::Predicted) {
        queue_.pop_front();
        stats_.prefetch.dropped++;
      } else {
        cv_.wait(lk);  // a needed unit waits for room: a release, an advance or a demand wakes us
      }
      continue;
    }
    if (demand) {
      demand_.pop_front();
    } else {
      queue_.pop_front();
      stats_.prefetch.issued++;
      s.prefetched = true;
      s.prefetchStep = req.step;
    }
    s.dev = static_cast<uint8_t*>(p);
    s.devLoading = true;
    try {
      loadLocked(lk, u);
    } catch (...) {
      device_.release(s.dev, un.bytes);
      s.dev = nullptr;
      s.devLoading = false;
      s.prefetched = false;
      s.error = std::current_exception();
      readyCv_.notify_all();
      continue;
    }
    s.devLoading = false;
    s.devReady = true;
    onDevice_.insert(u);
    if (s.prefetched && s.prefetchStep < currentStep()) {
      s.prefetched = false;
      stats_.prefetch.wasted++;
    }
    readyCv_.notify_all();
  }
}

void TierCache::loadLocked(std::unique_lock<std::mutex>& lk, int u) {
  State& s = st_[size_t(u)];
  const Unit& un = plan_.units[size_t(u)];
  if (s.host) {
    stats_.host.hits++;
  } else {
    stats_.host.misses++;
    void* h;
    for (;;) {
      lk.unlock();  // fresh host memory takes milliseconds to pin: the compute thread must not wait for mu_ meanwhile
      try {
        h = host_.tryAllocate(un.bytes);
      } catch (...) {
        lk.lock();
        throw;
      }
      lk.lock();
      if (h) break;
      int v = hostVictim(u);
      if (v < 0)
        fail("host tier: no room for {} ({}): {} of the {} budget in use", un.label, formatSize(un.bytes),
             formatSize(host_.inUse()), formatSize(host_.budget()));
      evictHost(v);
    }
    growCv_.notify_all();
    s.host = static_cast<uint8_t*>(h);
    lk.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    trace::Scope span("read from disk", "tiers");
    span.arg("unit", u);
    span.arg("bytes", double(un.readBytes));
    try {
      readUnit(model_, un, s.host);
    } catch (...) {
      lk.lock();
      host_.release(s.host, un.bytes);
      s.host = nullptr;
      throw;
    }
    lk.lock();
    stats_.readSeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    stats_.readBytes += un.readBytes;
    onHost_.insert(u);
    stats_.disk.hits++;
    stats_.disk.bytesOut += un.readBytes;
    stats_.host.bytesIn += un.readBytes;
  }
  stats_.host.bytesOut += un.bytes;
  copyToDevice(lk, s.dev, s.host, un.bytes, u, "copy to device");
}

void TierCache::copyToDevice(std::unique_lock<std::mutex>& lk, uint8_t* dst, const uint8_t* src, uint64_t bytes,
                             int unit, const char* what) {
  lk.unlock();
  const auto t0 = std::chrono::steady_clock::now();
  try {
    trace::Scope span(what, "tiers");
    span.arg("unit", unit);
    span.arg("bytes", double(bytes));
    backend_.copy(dst, Tier::Device, src, Tier::Host, bytes);
  } catch (...) {
    lk.lock();
    throw;
  }
  lk.lock();
  stats_.copySeconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats_.copyBytes += bytes;
  stats_.device.bytesIn += bytes;
}

void TierCache::addStallLocked(double seconds, int unit) {
  stats_.stallSeconds += seconds;
  if (trace::on()) {
    const double end = trace::nowMicros();
    trace::span("wait for weights", "tiers", end - seconds * 1e6, end, {{"unit", double(unit)}});
  }
}

void TierCache::growerMain() {
  trace::nameThread("host grower");
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_ && !growStop_) {
    const uint64_t spare = host_.keptOf(growBytes_);
    if (spare >= opts_.hostReserveBytes || onHost_.size() + spare / TierPool::accounted(growBytes_) >= pagedUnits_) {
      growCv_.wait(lk);
      continue;
    }
    lk.unlock();
    bool grown = false;
    try {
      trace::Scope span("pin host memory", "tiers");
      span.arg("bytes", double(growBytes_));
      grown = host_.grow(growBytes_);
    } catch (const std::exception&) {
      grown = false;  // out of pinned memory below the budget: loads allocate (and report) for themselves
    }
    lk.lock();
    if (!grown) return;  // the budget is taken: evicted buffers are reused from now on
  }
}

void TierCache::releaseHostTier() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    growStop_ = true;
  }
  growCv_.notify_all();
  if (grower_.joinable()) grower_.join();
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = onHost_.begin(); it != onHost_.end();) {
      const int v = *it++;  // evictHost erases v
      if (st_[size_t(v)].devReady && st_[size_t(v)].hostPins == 0) evictHost(v);
    }
  }
  host_.trim();
}

int TierCache::loadPart(int u, uint64_t offset, uint64_t bytes) {
  check(u >= 0 && size_t(u) < st_.size() && !plan_.resident[size_t(u)], "tier cache: part of unit {}: not paged", u);
  check(offset + bytes <= plan_.units[size_t(u)].bytes && bytes > 0, "tier cache: part [{}, +{}) outside {} ({})", offset,
        bytes, plan_.units[size_t(u)].label, plan_.units[size_t(u)].bytes);
  std::lock_guard<std::mutex> lk(mu_);
  const int ticket = nextPart_++;
  Part part;
  part.unit = u;
  part.offset = offset;
  part.bytes = bytes;
  parts_.emplace(ticket, std::move(part));
  partQueue_.push_back(ticket);
  cv_.notify_all();
  return ticket;
}

bool TierCache::loadPartLocked(std::unique_lock<std::mutex>& lk, int ticket) {
  auto it = parts_.find(ticket);
  if (it == parts_.end()) return true;
  Part& part = it->second;
  if (part.released) {  // given back before it was loaded
    parts_.erase(it);
    return true;
  }
  const Unit& un = plan_.units[size_t(part.unit)];
  try {
    const uint8_t* src = st_[size_t(part.unit)].host;
    check(src != nullptr, "host tier: part of {} requested without its host copy", un.label);
    void* p;
    while (!(p = device_.tryAllocate(part.bytes))) {
      const int v = deviceVictim(part.unit, true, PrefetchHint::Needed);
      if (v < 0) return false;  // like a needed unit, it waits for room (the placement keeps a top-k working set)
      evictDevice(v);
    }
    part.dev = static_cast<uint8_t*>(p);
    part.loading = true;
    copyToDevice(lk, part.dev, src + part.offset, part.bytes, part.unit, "copy part to device");
    stats_.host.bytesOut += part.bytes;
    part.loading = false;
    part.ready = true;
  } catch (...) {
    part.loading = false;
    part.error = std::current_exception();
    if (part.dev) device_.release(part.dev, part.bytes);
    part.dev = nullptr;
  }
  if (part.released) {  // given back while it loaded
    if (part.dev) device_.release(part.dev, part.bytes);
    parts_.erase(ticket);
  }
  readyCv_.notify_all();
  return true;
}

const uint8_t* TierCache::acquirePart(int ticket) {
  std::unique_lock<std::mutex> lk(mu_);
  auto it = parts_.find(ticket);
  check(it != parts_.end(), "tier cache: unknown part {}", ticket);
  Part& part = it->second;
  if (!part.ready && !part.error) {
    const auto t0 = std::chrono::steady_clock::now();
    readyCv_.wait(lk, [&] { return part.ready || part.error; });
    addStallLocked(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), part.unit);
  }
  if (part.error) std::rethrow_exception(part.error);
  return part.dev;
}

void TierCache::releasePart(int ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = parts_.find(ticket);
  if (it == parts_.end()) return;
  Part& part = it->second;
  if (part.loading || (!part.ready && !part.error)) {  // the loader gives it back (or drops it unloaded)
    part.released = true;
    return;
  }
  if (part.dev) device_.release(part.dev, part.bytes);
  parts_.erase(it);
  cv_.notify_all();  // room for a needed unit waiting for it
}

// ---------------------------------------------------------------- stats

TierCacheStats TierCache::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  TierCacheStats r = stats_;
  r.device.budgetBytes = device_.budget();
  r.device.peakBytes = device_.peak();
  r.device.residentBytes = device_.inUse();
  r.host.budgetBytes = host_.budget();
  r.host.peakBytes = host_.peak();
  r.host.residentBytes = host_.inUse();
  uint64_t shards = 0;
  for (const auto& sh : model_.manifest().shards) shards += sh.size;
  r.disk.budgetBytes = opts_.diskBudget;
  r.disk.peakBytes = shards;
  r.disk.residentBytes = shards;
  r.disk.hits = stats_.disk.hits;
  r.prefetch.pending = 0;
  for (const auto& s : st_) r.prefetch.pending += s.prefetched ? 1 : 0;
  r.deviceUnits = onDevice_.size();
  r.hostUnits = onHost_.size();
  return r;
}

std::vector<uint64_t> TierCache::useCounts() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<uint64_t> r;
  for (const auto& s : st_) r.push_back(s.uses);
  return r;
}

bool TierCache::deviceResident(int unit) const {
  std::lock_guard<std::mutex> lk(mu_);
  return st_[size_t(unit)].devReady;
}
bool TierCache::hostResident(int unit) const {
  std::lock_guard<std::mutex> lk(mu_);
  return st_[size_t(unit)].host != nullptr;
}
int TierCache::pins(int unit) const {
  std::lock_guard<std::mutex> lk(mu_);
  return st_[size_t(unit)].pins;
}

}  // namespace doppler

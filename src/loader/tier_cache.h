// The tier cache: where every unit of a planned model lives (device tier, host tier, disk), the loader thread
// that moves units disk -> host -> device, pinning, eviction and the prefetch queue. docs/tiers.md describes
// the policy; in short:
//   - resident units are loaded into the device tier at construction (staged through host RAM in chunks) and
//     never move;
//   - a paged unit is acquired (pinned) by the compute thread; a unit not in the device tier is loaded on
//     demand (a miss: the compute thread stalls) or ahead of time by a prefetch;
//   - every load goes disk -> host pool (one pread per stored piece: one contiguous read for an expert) -> device
//     pool (one Backend::copy). The host tier keeps what it read (inclusive), so a later device miss may hit
//     in host RAM;
//   - eviction never touches a pinned unit or a unit being loaded. A unit's value is its exponentially decayed
//     activation count: v = f * 2^(-(now - last) / halfLife), with f = v + 1 on each use and time counted in
//     layer steps (recency and frequency mixed, not LRU). The least valuable unpinned unit goes first;
//     streamed dense layers go by distance to their next use (the next layer is kept);
//   - a prefetched unit is "pending" until the layer it was fetched for runs: used if acquired, wasted if not.
//     A prefetch never evicts a pending unit, and a predicted (speculative) one never evicts a more valuable
//     unit; it is dropped instead. A predicted unit whose shard is not local yet (a lazily pulled model) is
//     dropped too: guesses never fetch from a remote source.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <thread>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "format/rdrr_reader.h"
#include "loader/placement.h"
#include "loader/weights.h"
#include "memory/pool.h"
#include "memory/stats.h"

namespace doppler {

struct TierCacheOptions {
  bool prefetch = true;            // false: prefetch() calls are ignored (pure demand paging)
  double halfLifeSteps = 0;        // value half-life in layer steps; 0 = 4 * numLayers (about four tokens)
  uint64_t stagingBytes = uint64_t(16) << 20;  // chunk for staging resident units through host RAM
  uint64_t diskBudget = 0;         // reported as the disk tier's budget
  // Host memory got ahead of demand: a thread keeps this many bytes of free host-tier buffers (of the most common
  // paged unit size) ready while the host budget has room and paged units are not all in host RAM yet, so that
  // a load does not wait for fresh memory (pinning 9 MB took 3-9 ms on the H200 host). 0: none (the CPU backend,
  // whose host memory is plain).
  uint64_t hostReserveBytes = 0;
};

struct TierCacheStats {
  TierStats device, host, disk;
  PrefetchStats prefetch;
  double stallSeconds = 0;         // compute thread waiting for loads
  double copySeconds = 0;          // loader thread in host -> device copies of paged units
  double readSeconds = 0;          // loader thread in disk -> host reads of paged units
  uint64_t copyBytes = 0, readBytes = 0;  // the bytes those copies and reads moved
  uint64_t deviceUnits = 0, hostUnits = 0;  // paged units resident now
};

class TierCache {
 public:
  // Loads the plan's resident units into the device tier. Errors name the unit and tier.
  TierCache(const RdrrModel& model, Backend& backend, const TierPlan& plan, uint64_t deviceBudget,
            uint64_t hostBudget, const TierCacheOptions& opts);
  ~TierCache();
  TierCache(const TierCache&) = delete;
  TierCache& operator=(const TierCache&) = delete;

  // Device bytes of a resident unit (nullptr for a paged one).
  const uint8_t* residentData(int unit) const;

  // The model is now running layer `layer` (a lower layer than the last one starts a new pass). Expires
  // pending prefetches of passed layers and drops stale queued ones.
  void advance(int layer);
  // Pins a paged unit in the device tier, loading it if needed (blocks; the wait counts as stall time).
  // Returns its device bytes, valid until release().
  const uint8_t* acquire(int unit);
  void release(int unit);
  // Where a paged unit is now (resident units: Device).
  enum class Where { Device, Loading, Host, Disk };  // Loading: on its way to the device tier
  Where where(int unit) const;
  // Hybrid execution (the host CPU computes with the unit from host RAM): pins the unit's host-tier copy (it is
  // not evicted from host RAM until releaseHost) and returns it; nullptr when the unit has no complete host copy.
  // Never loads or waits. Counts as a use of the unit (its eviction value) and as a host-tier hit.
  const uint8_t* acquireHost(int unit);
  void releaseHost(int unit);
  // Hybrid execution, a joint expert (gate/up on the host CPU, down on the device): loads bytes [offset, offset + bytes)
  // of paged unit `unit` from its host copy (which the caller holds with acquireHost) into a device block of their
  // own, before queued prefetches. Returns a ticket for acquirePart / releasePart.
  int loadPart(int unit, uint64_t offset, uint64_t bytes);
  // Waits for the part (counts as stall time) and returns its device bytes, valid until releasePart.
  const uint8_t* acquirePart(int ticket);
  // Gives the part's device block back (device work issued on it before stays ordered: copies into the block
  // wait for the compute work issued before them). A part still loading is given back when its copy ends.
  void releasePart(int ticket);
  // The eviction value of a unit now (decayed use count; higher is hotter).
  double heat(int unit) const;
  // Bytes per second of the loader's host-to-device copies of paged units so far; 0 before the first.
  double copyRate() const;
  // Queues loads for `layer`'s units. Needed: goes before queued predictions, in this order; Predicted:
  // appended, dropped rather than evicting something more valuable.
  void prefetch(std::span<const int> units, PrefetchHint hint, int layer);
  // Queues a streamed layer's dense unit for `layer` (appended; may evict like a needed unit).
  void prefetchLayerUnit(int unit, int layer);
  // Records the prediction scores (the provider knows which experts were predicted and used).
  void recordPrediction(uint64_t predicted, uint64_t correct, uint64_t actual);

  // Every paged unit is in the device tier for good (TieredWeights::loadAllExperts): stops the host reserve and
  // gives the host tier's memory back (its copies of device-resident units and the kept buffers).
  void releaseHostTier();

  TierCacheStats stats() const;
  // Acquisitions of each unit so far (how skewed the routing is; benchmarks).
  std::vector<uint64_t> useCounts() const;
  bool deviceResident(int unit) const;  // for tests
  bool hostResident(int unit) const;
  int pins(int unit) const;
  uint64_t hostKeptBytes() const { return host_.kept(); }  // free host buffers held (the reserve among them)
  uint64_t hostReserveBytes() const { return growBytes_ ? host_.keptOf(growBytes_) : 0; }  // those of the reserve's size

 private:
  struct State {
    uint8_t* dev = nullptr;
    uint8_t* host = nullptr;
    bool devReady = false, devLoading = false;
    int pins = 0;
    int hostPins = 0;          // hybrid execution reading the host copy (never evicted from host RAM meanwhile)
    int waiters = 0;           // compute threads waiting for it (never evicted meanwhile)
    bool prefetched = false;   // loaded by a prefetch and not used yet
    int64_t prefetchStep = 0;  // the step it was fetched for
    double freq = 0;           // decayed activation count at `last`
    uint64_t last = 0;
    uint64_t uses = 0;
    std::exception_ptr error;
  };
  struct Part {  // loadPart
    int unit = -1;
    uint64_t offset = 0, bytes = 0;
    uint8_t* dev = nullptr;
    bool ready = false, loading = false, released = false;
    std::exception_ptr error;
  };
  struct Request {
    int unit;
    PrefetchHint hint;
    int64_t step;
  };

  void loadResident(int unit);
  bool onDisk(int unit) const;  // every shard the unit reads is present locally
  void loaderMain();
  void growerMain();  // keeps opts_.hostReserveBytes of host buffers ready (TierPool::grow)
  // Loads unit u into its device block (s.dev already allocated); unlocks `lk` around I/O and copies.
  void loadLocked(std::unique_lock<std::mutex>& lk, int u);
  // Copies `bytes` from host to device with mu_ released (it is held again on return, also on an Error) and counts
  // them in the link's statistics; `what` names the copy in --trace.
  void copyToDevice(std::unique_lock<std::mutex>& lk, uint8_t* dst, const uint8_t* src, uint64_t bytes, int unit,
                    const char* what);
  void addStallLocked(double seconds, int unit);  // the compute thread waited for `unit` (stats, --trace)
  // The loader's side of loadPart; false (nothing done) when the device tier has no room for it now.
  bool loadPartLocked(std::unique_lock<std::mutex>& lk, int ticket);
  int deviceVictim(int u, bool demand, PrefetchHint hint) const;
  int hostVictim(int u) const;
  void evictDevice(int v);
  void evictHost(int v);
  double value(int u) const;          // decayed activation count now
  double evictionValue(int u) const;  // lower goes first
  int64_t stepOf(int layer) const;    // the step at which `layer` next runs
  int64_t currentStep() const { return pass_ * plan_.numLayers + std::max(curLayer_, 0); }
  void dropStaleLocked();

  const RdrrModel& model_;
  Backend& backend_;
  const TierPlan& plan_;
  TierCacheOptions opts_;
  TierPool device_, host_;
  double halfLife_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // loader wake-ups: requests, releases, advances, stop
  std::condition_variable readyCv_;  // compute thread wake-ups: a unit became ready or failed
  std::condition_variable growCv_;   // grower wake-ups: the loader took a host buffer, stop
  std::vector<State> st_;
  std::set<int> onDevice_, onHost_;  // paged units resident in each tier
  std::deque<int> demand_;
  std::map<int, Part> parts_;        // by ticket
  std::deque<int> partQueue_;        // tickets to load, after demand_ and before queue_
  int nextPart_ = 0;
  std::deque<Request> queue_;        // prefetches
  int64_t pass_ = 0;
  int curLayer_ = -1;
  uint64_t clock_ = 0;               // layer steps
  bool stop_ = false;
  TierCacheStats stats_;
  std::thread loader_;
  std::thread grower_;
  bool growStop_ = false;            // releaseHostTier(): the grower ends
  uint64_t growBytes_ = 0;           // the host buffers the grower gets: the most common paged unit size
  size_t pagedUnits_ = 0;
};

}  // namespace doppler

// The paged, tiered KV cache (docs/kv-cache.md).
//
// Each layer has a block table: block b holds positions [b * B, (b + 1) * B). A block lives in one tier:
//   - the block being filled (the tail) is f32 in the device tier;
//   - a block is sealed when it fills: with --kv-compress all it is re-encoded in the KV dtype on the device;
//   - when the device budget is full, the sealed device block with the smallest start position (over all
//     layers) spills to the host tier (encoded in the KV dtype on the way with --kv-compress spilled);
//   - blocks of a sliding-window layer that lie wholly before the window of the next write are freed.
// Invariant per layer: blocks [firstLive, firstDevice) are on the host, [firstDevice, size) on the device.
// chunks() hands attention f32 device memory: device f32 blocks directly, every other block restored
// (host -> device copy, counted as restored bytes) and/or decoded into a device staging area, one layer at a
// time. The staging area is attention scratch, outside the --kv-vram budget, and reported in the stats.
#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/size.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "kv/kv_codec.h"

namespace doppler {

namespace {

std::string budgetString(uint64_t b) { return b == kKVUnlimited ? "unlimited" : formatSize(b); }

struct Block {
  bool live = false;
  Tier tier = Tier::Device;
  KVDType dtype = KVDType::F32;
  uint8_t* data = nullptr;  // BlockFormat layout (kv_codec.h)
  size_t bytes = 0;
};

struct Layer {
  KVLayerShape shape;
  std::vector<Block> blocks;  // the block table; blocks[b] covers [b * B, (b + 1) * B)
  int64_t filled = 0;         // tokens stored
  int64_t firstLive = 0;      // blocks before this were freed (sliding window)
  int64_t firstDevice = 0;    // [firstLive, firstDevice) on the host, [firstDevice, size) on the device
};

class PagedKVCache final : public KVCache {
 public:
  PagedKVCache(Backend& b, const std::vector<KVLayerShape>& shapes, int64_t capacity, const PagedKVOptions& o,
               std::shared_ptr<KVStats> stats)
      : backend_(b), opts_(o), capacity_(capacity), stats_(std::move(stats)) {
    check(o.blockTokens >= 1 && o.blockTokens <= 65536, "kv cache: block size {} tokens (expected 1..65536)",
          o.blockTokens);
    check(capacity >= 0, "kv cache: capacity {} tokens is negative", capacity);
    check(!shapes.empty(), "kv cache: the model has no layers");
    for (size_t l = 0; l < shapes.size(); l++) {
      const auto& s = shapes[l];
      check(s.kvHeads > 0 && s.kvHeads <= 1024 && s.headDim > 0 && s.vDim >= 0 && s.window >= 0,
            "kv cache: layer {} has kvHeads {}, headDim {}, vDim {}, window {} (expected kvHeads 1..1024, "
            "headDim > 0, vDim >= 0, window >= 0)",
            l, s.kvHeads, s.headDim, s.vDim, s.window);
      Layer L;
      L.shape = s;
      L.blocks.reserve(size_t((capacity + o.blockTokens - 1) / o.blockTokens));
      layers_.push_back(std::move(L));
    }
    if (!stats_) stats_ = std::make_shared<KVStats>();
    KVStats& st = *stats_;
    st.blockTokens = o.blockTokens;
    st.dtype = o.dtype;
    st.compress = o.compress;
    st.deviceBudget = o.deviceBytes;
    st.hostBudget = o.hostBytes;
    st.deviceBytesPerToken = kvBytesPerToken(shapes, sealedDeviceDType(), o.blockTokens);
    st.hostBytesPerToken = kvBytesPerToken(shapes, o.dtype, o.blockTokens);
  }

  ~PagedKVCache() override {
    for (auto& L : layers_)
      for (size_t b = 0; b < L.blocks.size(); b++)  // the tail block holds fewer tokens than a full one
        if (L.blocks[b].live) releaseBlock(L.blocks[b], blockTokensHeld(L, int64_t(b)));
    releaseStaging();
  }

  int64_t capacity() const override { return capacity_; }
  int64_t length(int layer) const override { return layerAt(layer).filled; }
  const KVStats* stats() const override { return stats_.get(); }

  void write(int layer, int64_t pos, int64_t n, const float* k, const float* v) override {
    Layer& L = beginWrite(layer, pos, n);
    const auto& s = L.shape;
    const int64_t B = opts_.blockTokens;
    const int64_t kRow = s.kvHeads * s.headDim, vRow = s.kvHeads * s.vDim;
    int64_t t = pos;
    while (t < pos + n) {
      const int64_t off = t % B, cnt = std::min(B - off, pos + n - t);
      Block& blk = tailBlock(L, layer, t);
      kv::BlockFormat f = format(s, KVDType::F32);
      backend_.copy(blk.data + size_t(off * kRow) * 4, Tier::Device, k + (t - pos) * kRow, Tier::Device,
                    size_t(cnt * kRow) * 4);
      if (vRow > 0)
        backend_.copy(blk.data + f.vOffset() + size_t(off * vRow) * 4, Tier::Device, v + (t - pos) * vRow,
                      Tier::Device, size_t(cnt * vRow) * 4);
      endWrite(L, layer, t, cnt);
      t += cnt;
    }
  }

  bool writeInPlace(int layer, int64_t pos, int64_t n, float** k, float** v) override {
    const int64_t B = opts_.blockTokens;
    // One f32 block that stays f32 when it fills (sealing re-encodes it, and its rows are not written yet).
    if (n <= 0 || pos < 0 || pos % B + n > B || sealedDeviceDType() != KVDType::F32) return false;
    if (layerAt(layer).shape.vDim <= 0) return false;
    Layer& L = beginWrite(layer, pos, n);
    const auto& s = L.shape;
    Block& blk = tailBlock(L, layer, pos);
    const int64_t off = pos % B;
    *k = reinterpret_cast<float*>(blk.data) + off * s.kvHeads * s.headDim;
    *v = reinterpret_cast<float*>(blk.data + format(s, KVDType::F32).vOffset()) + off * s.kvHeads * s.vDim;
    endWrite(L, layer, pos, n);
    return true;
  }

  void chunks(int layer, int64_t end, std::vector<KVChunk>& out) override {
    Layer& L = layerAt(layer);
    const auto& s = L.shape;
    const int64_t B = opts_.blockTokens;
    check(end >= 0 && end <= L.filled, "kv cache: chunks up to position {} of layer {}, which holds {} tokens", end,
          layer, L.filled);
    out.clear();
    const int64_t nb = (end + B - 1) / B;
    // Blocks that attention cannot read in place: host blocks and compressed device blocks.
    int64_t staged = 0;
    size_t hostBytes = 0;
    for (int64_t b = L.firstLive; b < nb; b++) {
      const Block& blk = L.blocks[size_t(b)];
      if (blk.tier != Tier::Device || blk.dtype != KVDType::F32) staged++;
      if (blk.tier == Tier::Host && blk.dtype != KVDType::F32) hostBytes += transferBytes(blk.bytes);
    }
    const int64_t kRow = s.kvHeads * s.headDim, vRow = s.kvHeads * s.vDim;
    if (staged > 0) ensureStaging(size_t(staged * B * kRow), size_t(staged * B * vRow), hostBytes);

    struct Job {
      const uint8_t* src;
      KVDType dtype;
      float *k, *v;
    };
    std::vector<Job> jobs;
    int64_t slot = 0;
    size_t transferOff = 0;
    bool lastStaged = false;
    for (int64_t b = L.firstLive; b < nb; b++) {
      Block& blk = L.blocks[size_t(b)];
      check(blk.live, "kv cache: block {} of layer {} is missing (an earlier write failed)", b, layer);
      const int64_t t0 = b * B, t1 = std::min((b + 1) * B, end);
      if (blk.tier == Tier::Device && blk.dtype == KVDType::F32) {
        kv::BlockFormat f = format(s, KVDType::F32);
        const float* kp = reinterpret_cast<const float*>(blk.data);
        const float* vp = vRow > 0 ? reinterpret_cast<const float*>(blk.data + f.vOffset()) : nullptr;
        out.push_back(KVChunk{t0, t1, kp, vp});
        lastStaged = false;
        continue;
      }
      float* kd = stagingK_ + slot * B * kRow;
      float* vd = vRow > 0 ? stagingV_ + slot * B * vRow : nullptr;
      slot++;
      if (blk.tier == Tier::Host) {
        stats_->restoredBlocks++;
        stats_->restoredBytes += blk.bytes;
        if (blk.dtype == KVDType::F32) {  // stream straight into the staging area
          kv::BlockFormat f = format(s, KVDType::F32);
          backend_.copy(kd, Tier::Device, blk.data, Tier::Host, f.vOffset());
          if (vRow > 0) backend_.copy(vd, Tier::Device, blk.data + f.vOffset(), Tier::Host, f.bytes() - f.vOffset());
        } else {  // stream the compressed bytes, decode on the device
          backend_.copy(transfer_ + transferOff, Tier::Device, blk.data, Tier::Host, blk.bytes);
          jobs.push_back(Job{transfer_ + transferOff, blk.dtype, kd, vd});
          transferOff += transferBytes(blk.bytes);
        }
      } else {
        jobs.push_back(Job{blk.data, blk.dtype, kd, vd});
      }
      if (lastStaged && out.back().t1 == t0) {
        out.back().t1 = t1;  // consecutive staged blocks are adjacent in the staging area: one chunk
      } else {
        out.push_back(KVChunk{t0, t1, kd, vd});
      }
      lastStaged = true;
    }
    stats_->decodedBlocks += int64_t(jobs.size());
    if (!backend_.hostVisible()) {  // decoded by the backend (kernels on a GPU)
      for (const Job& jo : jobs) backend_.decodeKVBlock(format(s, jo.dtype), jo.src, jo.k, jo.v);
    } else if (!jobs.empty()) {  // host memory: on all cores
      ThreadPool::global().parallelFor(
          int64_t(jobs.size()),
          [&](int64_t jb, int64_t je) {
            for (int64_t j = jb; j < je; j++) {
              const Job& jo = jobs[size_t(j)];
              kv::decodeBlock(format(s, jo.dtype), jo.src, jo.k, jo.v);
            }
          },
          4);
    }
  }

 private:
  Layer& layerAt(int layer) {
    check(layer >= 0 && size_t(layer) < layers_.size(), "kv cache: layer {} out of range (the cache has {} layers)",
          layer, layers_.size());
    return layers_[size_t(layer)];
  }
  const Layer& layerAt(int layer) const { return const_cast<PagedKVCache*>(this)->layerAt(layer); }

  // A compressed block's room in the transfer area: 16-byte aligned, so every block's payload is aligned for the
  // backend's decoder.
  static size_t transferBytes(size_t bytes) { return (bytes + 15) / 16 * 16; }

  KVDType sealedDeviceDType() const { return opts_.compress == KVCompress::All ? opts_.dtype : KVDType::F32; }

  kv::BlockFormat format(const KVLayerShape& s, KVDType dt) const {
    return kv::BlockFormat{dt, opts_.blockTokens, s.kvHeads, s.headDim, s.vDim};
  }

  void account(Tier t, int64_t dBlocks, int64_t dTokens, int64_t dBytes) {
    KVTierStats& ts = t == Tier::Device ? stats_->device : stats_->host;
    ts.blocks += dBlocks;
    ts.tokens += dTokens;
    ts.bytes = uint64_t(int64_t(ts.bytes) + dBytes);
    ts.peakBytes = std::max(ts.peakBytes, ts.bytes);
    uint64_t& mine = t == Tier::Device ? deviceUsed_ : hostUsed_;
    mine = uint64_t(int64_t(mine) + dBytes);
  }

  // Tokens a (live) block holds: B for sealed blocks, fewer for a layer's tail.
  int64_t blockTokensHeld(const Layer& L, int64_t b) const {
    return std::min(opts_.blockTokens, L.filled - b * opts_.blockTokens);
  }

  void releaseBlock(Block& blk, int64_t tokens) {
    backend_.release(blk.tier, blk.data, blk.bytes);
    account(blk.tier, -1, -tokens, -int64_t(blk.bytes));
    blk = Block{};
  }

  // write() and writeInPlace(): checks, rewinds to pos, frees what left the window.
  Layer& beginWrite(int layer, int64_t pos, int64_t n) {
    Layer& L = layerAt(layer);
    check(n >= 0 && pos >= 0, "kv cache: write of {} tokens at position {} of layer {}", n, pos, layer);
    check(pos + n <= capacity_, "context full: {} tokens do not fit the KV cache of {} tokens", pos + n, capacity_);
    check(pos <= L.filled, "kv cache: write at position {} of layer {} leaves a gap (the layer holds {} tokens)",
          pos, layer, L.filled);
    if (pos < L.filled) rewind(layer, pos);
    freeOutsideWindow(L, pos);
    return L;
  }

  // The block that position t goes into; a new f32 device block when t starts one.
  Block& tailBlock(Layer& L, int layer, int64_t t) {
    const int64_t B = opts_.blockTokens, b = t / B;
    if (t % B == 0) {
      kv::BlockFormat f = format(L.shape, KVDType::F32);
      makeRoom(Tier::Device, f.bytes(), layer, t);
      Block blk;
      blk.live = true;
      blk.tier = Tier::Device;
      blk.dtype = KVDType::F32;
      blk.bytes = f.bytes();
      blk.data = static_cast<uint8_t*>(backend_.allocate(Tier::Device, blk.bytes));
      if (int64_t(L.blocks.size()) <= b) L.blocks.resize(size_t(b + 1));
      L.blocks[size_t(b)] = blk;
      account(Tier::Device, +1, 0, int64_t(blk.bytes));
    }
    return L.blocks[size_t(b)];
  }

  // cnt tokens from t were stored in t's block: count them, seal the block when it is full.
  void endWrite(Layer& L, int layer, int64_t t, int64_t cnt) {
    const int64_t B = opts_.blockTokens;
    L.filled = t + cnt;
    account(Tier::Device, 0, cnt, 0);
    if (t % B + cnt == B) seal(layer, t / B);
  }

  // The block is full: store it in the device KV dtype (--kv-compress all).
  void seal(int layer, int64_t b) {
    Layer& L = layers_[size_t(layer)];
    const KVDType dt = sealedDeviceDType();
    if (L.blocks[size_t(b)].dtype == dt) return;
    reencode(L, b, Tier::Device, dt, layer);
  }

  // Re-encodes block b (the layer's last block when `to` is the device) into `dt` in tier `to`: decoded to f32
  // and encoded as a GPU kernel would, then copied into the new block; the old storage is released. If the
  // device has no room for the new block, the layer is cut back to b * B tokens and the Error propagates.
  void reencode(Layer& L, int64_t b, Tier to, KVDType dt, int layer) {
    const auto& s = L.shape;
    Block old = L.blocks[size_t(b)];
    const int64_t tokens = blockTokensHeld(L, b);
    kv::BlockFormat from = format(s, old.dtype), f = format(s, dt);
    // Decoded and encoded by the backend in device scratch (kernels on a GPU; kv_codec.h on the CPU backend).
    DeviceArray kf(backend_, from.kElems()), vf(backend_, std::max<size_t>(from.vElems(), 1));
    DeviceArray encoded(backend_, (f.bytes() + 3) / 4), staged;
    const uint8_t* src = old.data;
    if (old.tier != Tier::Device && !backend_.hostVisible()) {  // a host block's bytes go to the device first
      staged = DeviceArray(backend_, (old.bytes + 3) / 4);
      backend_.copy(staged.data(), Tier::Device, old.data, Tier::Host, old.bytes);
      src = reinterpret_cast<const uint8_t*>(staged.data());
    }
    uint8_t* enc = reinterpret_cast<uint8_t*>(encoded.data());
    backend_.decodeKVBlock(from, src, kf.data(), vf.data());
    backend_.encodeKVBlock(f, kf.data(), vf.data(), enc);
    if (to == Tier::Device) {  // free first so that the new block can take the old one's room
      releaseBlock(L.blocks[size_t(b)], tokens);  // the slot is empty (not live) while room is made
      try {
        makeRoom(Tier::Device, f.bytes(), layer, b * opts_.blockTokens);
      } catch (...) {
        L.blocks.resize(size_t(b));
        L.filled = b * opts_.blockTokens;
        L.firstDevice = std::min<int64_t>(L.firstDevice, b);
        throw;
      }
    } else {
      makeRoom(Tier::Host, f.bytes(), layer, b * opts_.blockTokens);
      releaseBlock(L.blocks[size_t(b)], tokens);
    }
    Block nb;
    nb.live = true;
    nb.tier = to;
    nb.dtype = dt;
    nb.bytes = f.bytes();
    nb.data = static_cast<uint8_t*>(backend_.allocate(to, nb.bytes));
    backend_.copy(nb.data, to, enc, Tier::Device, nb.bytes);
    account(to, +1, tokens, int64_t(nb.bytes));
    L.blocks[size_t(b)] = nb;
  }

  // Spills the oldest sealed device block of any layer to the host. False when there is none.
  bool spillOne(int needLayer, int64_t needPos) {
    int best = -1;
    int64_t bestPos = 0;
    for (size_t l = 0; l < layers_.size(); l++) {
      const Layer& L = layers_[l];
      const int64_t b = L.firstDevice;
      if (b >= int64_t(L.blocks.size()) || (b + 1) * opts_.blockTokens > L.filled) continue;  // only the tail
      if (!L.blocks[size_t(b)].live) continue;  // being re-encoded
      if (best < 0 || b * opts_.blockTokens < bestPos) {
        best = int(l);
        bestPos = b * opts_.blockTokens;
      }
    }
    if (best < 0) return false;
    Layer& L = layers_[size_t(best)];
    const int64_t b = L.firstDevice;
    Block& blk = L.blocks[size_t(b)];
    const KVDType hostType = opts_.dtype;
    const int64_t tokens = blockTokensHeld(L, b);
    if (blk.dtype == hostType) {  // plain copy
      makeRoom(Tier::Host, blk.bytes, needLayer, needPos);
      Block nb = blk;
      nb.tier = Tier::Host;
      nb.data = static_cast<uint8_t*>(backend_.allocate(Tier::Host, nb.bytes));
      backend_.copy(nb.data, Tier::Host, blk.data, Tier::Device, nb.bytes);
      account(Tier::Host, +1, tokens, int64_t(nb.bytes));
      releaseBlock(blk, tokens);
      blk = nb;
    } else {
      reencode(L, b, Tier::Host, hostType, needLayer);
    }
    L.firstDevice++;
    stats_->spilledBlocks++;
    stats_->spilledBytes += L.blocks[size_t(b)].bytes;
    return true;
  }

  void makeRoom(Tier t, size_t bytes, int layer, int64_t pos) {
    if (t == Tier::Host) {
      if (opts_.hostBytes == kKVUnlimited || hostUsed_ + bytes <= opts_.hostBytes) return;
      outOfMemory(layer, pos, bytes);
    }
    while (opts_.deviceBytes != kKVUnlimited && deviceUsed_ + bytes > opts_.deviceBytes)
      if (!spillOne(layer, pos)) outOfMemory(layer, pos, bytes);
  }

  [[noreturn]] void outOfMemory(int layer, int64_t pos, size_t bytes) {
    int64_t reached = capacity_;
    for (const auto& L : layers_) reached = std::min(reached, L.filled);
    fail("KV cache out of memory at context length {} tokens (layer {} needs {} more for position {}): device "
         "tier {} used of {} (--kv-vram), host tier {} used of {} (--kv-ram), {} KV at {:.1f} bytes/token; raise "
         "--kv-vram/--kv-ram, use a smaller --kv-dtype or a shorter context",
         reached, layer, formatSize(bytes), pos, formatSize(deviceUsed_), budgetString(opts_.deviceBytes),
         formatSize(hostUsed_), budgetString(opts_.hostBytes), kvDTypeName(opts_.dtype),
         stats_->hostBytesPerToken);
  }

  // Sliding-window layers: the queries of a write at `pos` see keys >= pos - window + 1; blocks wholly before
  // that are freed.
  void freeOutsideWindow(Layer& L, int64_t pos) {
    if (L.shape.window <= 0) return;
    const int64_t keep = pos - L.shape.window + 1;
    while (L.firstLive < int64_t(L.blocks.size()) && (L.firstLive + 1) * opts_.blockTokens <= keep) {
      Block& blk = L.blocks[size_t(L.firstLive)];
      if (blk.live) releaseBlock(blk, blockTokensHeld(L, L.firstLive));
      stats_->windowFreedBlocks++;
      L.firstLive++;
      L.firstDevice = std::max(L.firstDevice, L.firstLive);
    }
  }

  // Drops positions >= pos of `layer`; the block holding pos - 1 becomes an f32 device tail again.
  void rewind(int layer, int64_t pos) {
    Layer& L = layers_[size_t(layer)];
    const int64_t B = opts_.blockTokens;
    const int64_t need = L.shape.window > 0 ? std::max<int64_t>(0, pos - L.shape.window + 1) : 0;
    check(need >= L.firstLive * B,
          "kv cache: cannot rewind layer {} to position {}: positions before {} left the sliding window and were "
          "freed",
          layer, pos, L.firstLive * B);
    const int64_t keepBlocks = (pos + B - 1) / B;
    for (int64_t b = int64_t(L.blocks.size()) - 1; b >= keepBlocks; b--) {
      Block& blk = L.blocks[size_t(b)];
      if (blk.live) releaseBlock(blk, blockTokensHeld(L, b));
    }
    L.blocks.resize(size_t(keepBlocks));
    L.firstDevice = std::min<int64_t>(L.firstDevice, keepBlocks);
    if (pos % B != 0) {  // the kept partial block: tokens past pos are dropped, and it becomes the f32 tail
      const int64_t b = keepBlocks - 1;
      Block& blk = L.blocks[size_t(b)];
      const int64_t heldBefore = blockTokensHeld(L, b);
      if (blk.tier == Tier::Host) L.firstDevice = b;  // restored below; every block before it is on the host
      if (blk.tier != Tier::Device || blk.dtype != KVDType::F32) reencode(L, b, Tier::Device, KVDType::F32, layer);
      account(Tier::Device, 0, -(heldBefore - (pos - b * B)), 0);
    }
    L.filled = pos;
  }

  void ensureStaging(size_t kFloats, size_t vFloats, size_t transferBytes) {
    if (kFloats > stagingKCap_ || vFloats > stagingVCap_ || transferBytes > transferCap_) {
      const size_t k = std::max(kFloats, stagingKCap_ + stagingKCap_ / 2);
      const size_t v = std::max(vFloats, stagingVCap_ + stagingVCap_ / 2);
      const size_t tb = std::max(transferBytes, transferCap_ + transferCap_ / 2);
      releaseStaging();
      stagingK_ = static_cast<float*>(backend_.allocate(Tier::Device, k * sizeof(float)));
      stagingV_ = v ? static_cast<float*>(backend_.allocate(Tier::Device, v * sizeof(float))) : nullptr;
      transfer_ = tb ? static_cast<uint8_t*>(backend_.allocate(Tier::Device, tb)) : nullptr;
      stagingKCap_ = k;
      stagingVCap_ = v;
      transferCap_ = tb;
      stats_->stagingBytes += stagingBytes();
      stats_->peakStagingBytes = std::max(stats_->peakStagingBytes, stats_->stagingBytes);
    }
  }

  uint64_t stagingBytes() const { return (stagingKCap_ + stagingVCap_) * sizeof(float) + transferCap_; }

  void releaseStaging() {
    stats_->stagingBytes -= stagingBytes();
    if (stagingK_) backend_.release(Tier::Device, stagingK_, stagingKCap_ * sizeof(float));
    if (stagingV_) backend_.release(Tier::Device, stagingV_, stagingVCap_ * sizeof(float));
    if (transfer_) backend_.release(Tier::Device, transfer_, transferCap_);
    stagingK_ = stagingV_ = nullptr;
    transfer_ = nullptr;
    stagingKCap_ = stagingVCap_ = transferCap_ = 0;
  }

  Backend& backend_;
  PagedKVOptions opts_;
  int64_t capacity_;
  std::shared_ptr<KVStats> stats_;
  std::vector<Layer> layers_;
  uint64_t deviceUsed_ = 0, hostUsed_ = 0;  // this cache's bytes per tier (the budgets are per cache)
  float* stagingK_ = nullptr;               // [slots * B, H, D]
  float* stagingV_ = nullptr;               // [slots * B, H, VD]
  uint8_t* transfer_ = nullptr;             // compressed host blocks copied to the device before decoding
  size_t stagingKCap_ = 0, stagingVCap_ = 0, transferCap_ = 0;
};

}  // namespace

std::unique_ptr<KVCache> makePagedKVCache(Backend& backend, const std::vector<KVLayerShape>& layers,
                                          int64_t capacity, const PagedKVOptions& opts,
                                          std::shared_ptr<KVStats> stats) {
  return std::make_unique<PagedKVCache>(backend, layers, capacity, opts, std::move(stats));
}

}  // namespace doppler

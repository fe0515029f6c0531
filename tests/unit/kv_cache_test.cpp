// Issue #7: the paged, tiered KV cache on its own (block codec, paging, spill, sliding window, rewind,
// statistics, out-of-memory errors), against a plain f32 reference of the same keys and values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "kv/kv_cache.h"
#include "kv/kv_codec.h"

using namespace doppler;

namespace {

// Keys/values of one layer for positions [0, T): k [T, H, D], v [T, H, VD].
struct LayerData {
  KVLayerShape shape;
  std::vector<float> k, v;
};

LayerData randomLayer(KVLayerShape s, int64_t T, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  LayerData d{s, std::vector<float>(size_t(T * s.kvHeads * s.headDim)), std::vector<float>(size_t(T * s.kvHeads * s.vDim))};
  for (auto& x : d.k) x = nd(rng);
  for (auto& x : d.v) x = nd(rng);
  // an outlier channel, as real keys have
  for (int64_t t = 0; t < T; t++) d.k[size_t(t * s.kvHeads * s.headDim)] *= 8.0f;
  return d;
}

// Writes layers' data [0, T) in pieces of `step` tokens, layer by layer per piece (as a forward does).
void fill(KVCache& kv, const std::vector<LayerData>& data, int64_t T, int64_t step) {
  for (int64_t p = 0; p < T; p += step) {
    const int64_t n = std::min(step, T - p);
    for (size_t l = 0; l < data.size(); l++) {
      const auto& s = data[l].shape;
      kv.write(int(l), p, n, data[l].k.data() + p * s.kvHeads * s.headDim,
               s.vDim ? data[l].v.data() + p * s.kvHeads * s.vDim : nullptr);
    }
  }
}

// Reassembles [0, end) of a layer from its chunks (checking that they are in order and contiguous);
// positions not covered (freed by a sliding window) stay NaN.
void gather(KVCache& kv, int layer, const KVLayerShape& s, int64_t end, std::vector<float>& k, std::vector<float>& v,
            int64_t* firstCovered = nullptr) {
  std::vector<KVChunk> ch;
  kv.chunks(layer, end, ch);
  const int64_t kr = s.kvHeads * s.headDim, vr = s.kvHeads * s.vDim;
  k.assign(size_t(end * kr), NAN);
  v.assign(size_t(end * vr), NAN);
  ASSERT_FALSE(ch.empty());
  if (firstCovered) *firstCovered = ch.front().t0;
  EXPECT_EQ(ch.back().t1, end);
  for (size_t i = 0; i < ch.size(); i++) {
    if (i > 0) {
      EXPECT_EQ(ch[i].t0, ch[i - 1].t1) << "chunk " << i;
    }
    EXPECT_LT(ch[i].t0, ch[i].t1);
    std::memcpy(k.data() + ch[i].t0 * kr, ch[i].k, size_t((ch[i].t1 - ch[i].t0) * kr) * 4);
    if (vr) std::memcpy(v.data() + ch[i].t0 * vr, ch[i].v, size_t((ch[i].t1 - ch[i].t0) * vr) * 4);
  }
}

std::vector<KVLayerShape> mixedShapes() {
  // different widths per layer, and a keys-only layer (deepseek MLA stores one latent "head", vDim 0)
  return {KVLayerShape{2, 16, 16}, KVLayerShape{4, 8, 12}, KVLayerShape{1, 24, 0}};
}

double perToken(const std::vector<KVLayerShape>& s, KVDType dt, int64_t B) { return kvBytesPerToken(s, dt, B); }

}  // namespace

TEST(KVCodec, RoundTripsEveryDType) {
  const KVLayerShape s{3, 16, 8};
  const int64_t B = 16;
  LayerData d = randomLayer(s, B, 7);
  for (KVDType dt : {KVDType::F32, KVDType::F16, KVDType::BF16, KVDType::Int8}) {
    kv::BlockFormat f{dt, B, s.kvHeads, s.headDim, s.vDim};
    std::vector<uint8_t> buf(f.bytes());
    kv::encodeBlock(f, d.k.data(), d.v.data(), buf.data());
    std::vector<float> k(d.k.size()), v(d.v.size());
    kv::decodeBlock(f, buf.data(), k.data(), v.data());
    for (int which = 0; which < 2; which++) {
      const auto& a = which ? d.v : d.k;
      const auto& b = which ? v : k;
      const int64_t dim = which ? s.vDim : s.headDim;
      for (int64_t h = 0; h < s.kvHeads; h++) {
        for (int64_t t = 0; t < B; t++) {
          float amax = 0;  // int8 scales are per (token, head)
          for (int64_t j = 0; j < dim; j++) amax = std::max(amax, std::fabs(a[size_t((t * s.kvHeads + h) * dim + j)]));
          for (int64_t j = 0; j < dim; j++) {
            const size_t i = size_t((t * s.kvHeads + h) * dim + j);
            const float err = std::fabs(a[i] - b[i]);
            switch (dt) {
              case KVDType::F32: ASSERT_EQ(a[i], b[i]); break;
              case KVDType::F16: ASSERT_LE(err, std::fabs(a[i]) * 0x1p-11f + 1e-7f) << i; break;
              case KVDType::BF16: ASSERT_LE(err, std::fabs(a[i]) * 0x1p-8f) << i; break;
              case KVDType::Int8: ASSERT_LE(err, amax / 127.0f * 0.5001f) << i; break;
            }
          }
        }
      }
    }
  }
  // int8 keeps 1 byte per element plus an f32 scale per token and head for K and V
  kv::BlockFormat f{KVDType::Int8, B, s.kvHeads, s.headDim, s.vDim};
  EXPECT_EQ(f.bytes(), size_t(B * 3 * (16 + 8) + B * 2 * 3 * 4));
  kv::BlockFormat keysOnly{KVDType::Int8, B, 1, 24, 0};
  EXPECT_EQ(keysOnly.bytes(), size_t(B * 24 + B * 4));
}

TEST(KVCodec, F16MatchesScalarConversion) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ud(-70000.0f, 70000.0f);
  kv::BlockFormat f{KVDType::F16, 5, 1, 13, 0};  // 65 elements: vector body + scalar tail
  std::vector<float> k(65);
  for (auto& x : k) x = ud(rng) * (rng() % 2 ? 1.0f : 1e-6f);
  std::vector<uint8_t> buf(f.bytes());
  kv::encodeBlock(f, k.data(), nullptr, buf.data());
  for (size_t i = 0; i < k.size(); i++) {
    uint16_t h;
    std::memcpy(&h, buf.data() + 2 * i, 2);
    ASSERT_EQ(h, f32ToF16(k[i])) << k[i];
  }
}

TEST(KVBytesPerToken, MatchesLayersTimesHeadsTimesDimTimesTwoTimesDTypeSize) {
  // llama-fixture geometry: 2 layers, 2 kv heads, head_dim 16
  const std::vector<KVLayerShape> llama(2, KVLayerShape{2, 16, 16});
  EXPECT_EQ(perToken(llama, KVDType::F32, 16), 2 * 2 * 16 * 2 * 4);
  EXPECT_EQ(perToken(llama, KVDType::F16, 16), 2 * 2 * 16 * 2 * 2);
  EXPECT_EQ(perToken(llama, KVDType::BF16, 16), 2 * 2 * 16 * 2 * 2);
  // int8: 1 byte per element + 2 f32 scales (K, V) per token and head
  EXPECT_DOUBLE_EQ(perToken(llama, KVDType::Int8, 16), 2 * 2 * 16 * 2 * 1 + 2 * (2 * 2 * 4));
  // Llama-3-8B: 32 layers x 8 kv heads x 128 x 2 x 2 bytes = 128 KiB per token in f16
  const std::vector<KVLayerShape> l3(32, KVLayerShape{8, 128, 128});
  EXPECT_EQ(perToken(l3, KVDType::F16, 16), 131072);

  // And what the tiers actually hold: 64 tokens (4 full blocks) with a device budget of 2 blocks per layer.
  for (KVDType dt : {KVDType::F32, KVDType::F16, KVDType::BF16, KVDType::Int8}) {
    auto be = makeCpuBackend();
    PagedKVOptions o;
    o.dtype = dt;
    o.deviceBytes = uint64_t(32 * perToken(llama, dt, 16));  // 32 tokens (>= the f32 blocks being filled)
    auto kv = makePagedKVCache(*be, llama, 64, o);
    std::vector<LayerData> data{randomLayer(llama[0], 64, 1), randomLayer(llama[1], 64, 2)};
    fill(*kv, data, 64, 16);
    const KVStats& st = *kv->stats();
    EXPECT_EQ(st.device.tokens + st.host.tokens, 2 * 64);
    EXPECT_GT(st.host.tokens, 0) << kvDTypeName(dt);
    EXPECT_DOUBLE_EQ(st.deviceBytesPerToken, perToken(llama, dt, 16));
    EXPECT_DOUBLE_EQ(st.hostBytesPerToken, perToken(llama, dt, 16));
    // per layer-token bytes = total per token / layers (both layers have the same shape)
    EXPECT_DOUBLE_EQ(double(st.device.bytes), st.device.tokens * st.deviceBytesPerToken / 2) << kvDTypeName(dt);
    EXPECT_DOUBLE_EQ(double(st.host.bytes), st.host.tokens * st.hostBytesPerToken / 2) << kvDTypeName(dt);
    EXPECT_LE(st.device.peakBytes, o.deviceBytes);
  }
}

// f32 KV: whatever the block size, budget and write pattern, chunks return exactly the values written.
TEST(PagedKV, F32ExactWithAndWithoutSpill) {
  const auto shapes = mixedShapes();
  const int64_t T = 150;
  std::vector<LayerData> data;
  for (size_t l = 0; l < shapes.size(); l++) data.push_back(randomLayer(shapes[l], T, uint32_t(10 + l)));
  const double bpt = perToken(shapes, KVDType::F32, 8);
  for (uint64_t budget : {kKVUnlimited, uint64_t(bpt * 24), uint64_t(bpt * 8)})
    for (int64_t step : {int64_t(1), int64_t(7), T}) {
      auto be = makeCpuBackend();
      PagedKVOptions o;
      o.blockTokens = 8;
      o.deviceBytes = budget;
      auto kv = makePagedKVCache(*be, shapes, T, o);
      fill(*kv, data, T, step);
      for (size_t l = 0; l < shapes.size(); l++) {
        EXPECT_EQ(kv->length(int(l)), T);
        for (int64_t end : {T, T - 5, int64_t(1)}) {
          std::vector<float> k, v;
          gather(*kv, int(l), shapes[l], end, k, v);
          ASSERT_EQ(0, std::memcmp(k.data(), data[l].k.data(), k.size() * 4)) << "layer " << l << " end " << end;
          ASSERT_EQ(0, std::memcmp(v.data(), data[l].v.data(), v.size() * 4)) << "layer " << l << " end " << end;
        }
      }
      const KVStats& st = *kv->stats();
      if (budget == kKVUnlimited) {
        EXPECT_EQ(st.spilledBlocks, 0);
        EXPECT_EQ(st.host.blocks, 0);
      } else {
        EXPECT_GT(st.spilledBlocks, 0);
        EXPECT_GT(st.restoredBytes, 0u);
        EXPECT_LE(st.device.peakBytes, budget);
        EXPECT_EQ(st.spilledBytes, st.host.bytes);  // nothing leaves the host tier (no sliding layers)
        // every sealed block beyond what the budget holds is on the host
        EXPECT_GT(st.host.tokens, T);
      }
    }
}

// writeInPlace (the model projects k and v straight into the cache) stores exactly what write() stores, with the
// same statistics, under spilling; it declines (changing nothing) where the rows are not plain f32 ranges.
TEST(PagedKV, WriteInPlaceStoresWhatWriteStores) {
  const auto shapes = mixedShapes();
  const int64_t T = 45, B = 8;
  std::vector<LayerData> data;
  for (size_t l = 0; l < shapes.size(); l++) data.push_back(randomLayer(shapes[l], T, uint32_t(40 + l)));
  auto be = makeCpuBackend();
  PagedKVOptions o;
  o.blockTokens = B;
  o.deviceBytes = uint64_t(perToken(shapes, KVDType::F32, B) * 3 * B);  // spills
  auto ref = makePagedKVCache(*be, shapes, T, o);
  auto kv = makePagedKVCache(*be, shapes, T, o);
  fill(*ref, data, T, 1);
  int64_t inPlace = 0;
  for (int64_t t = 0; t < T; t++) {
    for (size_t l = 0; l < shapes.size(); l++) {
      const auto& sh = shapes[l];
      const int64_t kr = sh.kvHeads * sh.headDim, vr = sh.kvHeads * sh.vDim;
      float* k = nullptr;
      float* v = nullptr;
      if (kv->writeInPlace(int(l), t, 1, &k, &v)) {
        ASSERT_GT(vr, 0) << "a keys-only layer has no value rows to hand out";
        std::memcpy(k, data[l].k.data() + t * kr, size_t(kr) * 4);
        std::memcpy(v, data[l].v.data() + t * vr, size_t(vr) * 4);
        inPlace++;
      } else {
        EXPECT_EQ(vr, 0) << "layer " << l << " token " << t;
        kv->write(int(l), t, 1, data[l].k.data() + t * kr, vr ? data[l].v.data() + t * vr : nullptr);
      }
    }
  }
  EXPECT_EQ(inPlace, 2 * T);
  for (size_t l = 0; l < shapes.size(); l++) {
    std::vector<float> k, v, rk, rv;
    gather(*kv, int(l), shapes[l], T, k, v);
    gather(*ref, int(l), shapes[l], T, rk, rv);
    ASSERT_EQ(0, std::memcmp(k.data(), data[l].k.data(), k.size() * 4)) << "layer " << l;
    ASSERT_EQ(0, std::memcmp(v.data(), data[l].v.data(), v.size() * 4)) << "layer " << l;
  }
  const KVStats &a = *kv->stats(), &b = *ref->stats();
  EXPECT_GT(a.spilledBlocks, 0);
  EXPECT_EQ(a.spilledBlocks, b.spilledBlocks);
  EXPECT_EQ(a.device.tokens, b.device.tokens);
  EXPECT_EQ(a.device.blocks, b.device.blocks);
  EXPECT_EQ(a.host.tokens, b.host.tokens);

  // Declined, nothing changed: rows across a block boundary, and a cache that re-encodes full device blocks.
  float* k = nullptr;
  float* v = nullptr;
  auto fresh = makePagedKVCache(*be, shapes, T, o);
  fill(*fresh, data, B - 1, 1);
  EXPECT_FALSE(fresh->writeInPlace(0, B - 1, 2, &k, &v));
  EXPECT_EQ(fresh->length(0), B - 1);
  EXPECT_EQ(k, nullptr);
  PagedKVOptions c = o;
  c.dtype = KVDType::Int8;
  c.compress = KVCompress::All;
  auto compressed = makePagedKVCache(*be, shapes, T, c);
  EXPECT_FALSE(compressed->writeInPlace(0, 0, 1, &k, &v));
  EXPECT_EQ(compressed->length(0), 0);

  // Rewinding in place drops the later tokens, as write() does; the rows handed out are position 3's.
  ASSERT_TRUE(kv->writeInPlace(0, 3, 1, &k, &v));
  EXPECT_EQ(kv->length(0), 4);
  const int64_t kr = shapes[0].kvHeads * shapes[0].headDim, vr = shapes[0].kvHeads * shapes[0].vDim;
  std::memcpy(k, data[0].k.data() + 10 * kr, size_t(kr) * 4);
  std::memcpy(v, data[0].v.data() + 10 * vr, size_t(vr) * 4);
  std::vector<float> gk, gv;
  gather(*kv, 0, shapes[0], 4, gk, gv);
  EXPECT_EQ(0, std::memcmp(gk.data(), data[0].k.data(), size_t(3 * kr) * 4));
  EXPECT_EQ(0, std::memcmp(gk.data() + 3 * kr, data[0].k.data() + 10 * kr, size_t(kr) * 4));
  EXPECT_EQ(0, std::memcmp(gv.data() + 3 * vr, data[0].v.data() + 10 * vr, size_t(vr) * 4));
}

// Attention over chunks of a spilled f32 cache gives bit-identical results to the contiguous cache.
TEST(PagedKV, AttentionBitIdenticalToContiguous) {
  const KVLayerShape s{2, 16, 16};
  const int64_t T = 100, H = 4;
  LayerData d = randomLayer(s, T, 5);
  auto be = makeCpuBackend();
  auto ref = makeContiguousKVCache(*be, {s}, T);
  PagedKVOptions o;
  o.deviceBytes = uint64_t(perToken({s}, KVDType::F32, 16) * 20);
  o.hostBytes = kKVUnlimited;
  auto paged = makePagedKVCache(*be, {s}, T, o);
  std::vector<float> q(size_t(T * H * s.headDim));
  std::mt19937 rng(9);
  std::normal_distribution<float> nd;
  for (auto& x : q) x = nd(rng);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; i++) pos[size_t(i)] = i;
  for (int64_t window : {int64_t(0), int64_t(21)}) {
    AttentionParams ap;
    ap.numHeads = H;
    ap.numKvHeads = s.kvHeads;
    ap.headDim = s.headDim;
    ap.vDim = s.vDim;
    ap.scale = 0.25f;
    ap.window = window;
    std::vector<float> a(size_t(T * H * s.vDim)), b(a.size());
    // prefill 60, then decode one by one
    ref->write(0, 0, 60, d.k.data(), d.v.data());
    paged->write(0, 0, 60, d.k.data(), d.v.data());
    std::vector<KVChunk> ca, cb;
    ref->chunks(0, 60, ca);
    paged->chunks(0, 60, cb);
    EXPECT_GT(cb.size(), 1u);
    be->attention(q.data(), 60, pos.data(), ca.data(), int64_t(ca.size()), ap, a.data());
    be->attention(q.data(), 60, pos.data(), cb.data(), int64_t(cb.size()), ap, b.data());
    for (int64_t p = 60; p < T; p++) {
      const size_t ko = size_t(p * s.kvHeads * s.headDim);
      ref->write(0, p, 1, d.k.data() + ko, d.v.data() + ko);
      paged->write(0, p, 1, d.k.data() + ko, d.v.data() + ko);
      ref->chunks(0, p + 1, ca);
      paged->chunks(0, p + 1, cb);
      const size_t qo = size_t(p * H * s.headDim), oo = size_t(p * H * s.vDim);
      be->attention(q.data() + qo, 1, &pos[size_t(p)], ca.data(), int64_t(ca.size()), ap, a.data() + oo);
      be->attention(q.data() + qo, 1, &pos[size_t(p)], cb.data(), int64_t(cb.size()), ap, b.data() + oo);
    }
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << "window " << window;
    EXPECT_GT(paged->stats()->spilledBlocks, 0);
  }
}

// Compressed KV: values come back within the codec's error, for all blocks or only the spilled ones.
TEST(PagedKV, CompressedAllOrSpilledOnly) {
  const auto shapes = mixedShapes();
  const int64_t T = 70, B = 16;
  std::vector<LayerData> data;
  for (size_t l = 0; l < shapes.size(); l++) data.push_back(randomLayer(shapes[l], T, uint32_t(20 + l)));
  for (KVCompress c : {KVCompress::All, KVCompress::Spilled}) {
    auto be = makeCpuBackend();
    PagedKVOptions o;
    o.dtype = KVDType::Int8;
    o.compress = c;
    o.deviceBytes = uint64_t(perToken(shapes, KVDType::F32, B) * 2 * B);
    auto kv = makePagedKVCache(*be, shapes, T, o);
    fill(*kv, data, T, 5);
    const KVStats& st = *kv->stats();
    EXPECT_GT(st.host.blocks, 0);
    for (size_t l = 0; l < shapes.size(); l++) {
      std::vector<float> k, v;
      gather(*kv, int(l), shapes[l], T, k, v);
      const int64_t kr = shapes[l].kvHeads * shapes[l].headDim;
      float amax = 0;
      for (float x : data[l].k) amax = std::max(amax, std::fabs(x));
      const float tol = amax / 127.0f * 0.5001f;  // the block-and-head absmax is at most the layer's
      int64_t exactTokens = 0;
      for (int64_t t = 0; t < T; t++) {
        bool exact = std::memcmp(k.data() + t * kr, data[l].k.data() + t * kr, size_t(kr) * 4) == 0;
        exactTokens += exact;
        for (int64_t i = 0; i < kr; i++)
          ASSERT_NEAR(k[size_t(t * kr + i)], data[l].k[size_t(t * kr + i)], tol)
              << "layer " << l << " token " << t;
      }
      // the tail block (64..69) is f32; with "spilled", sealed blocks still on the device are f32 too
      if (c == KVCompress::All)
        EXPECT_EQ(exactTokens, T % B) << "layer " << l;
      else
        EXPECT_GT(exactTokens, T % B) << "layer " << l;
    }
    EXPECT_DOUBLE_EQ(st.deviceBytesPerToken, perToken(shapes, c == KVCompress::All ? KVDType::Int8 : KVDType::F32, B));
    EXPECT_DOUBLE_EQ(st.hostBytesPerToken, perToken(shapes, KVDType::Int8, B));
    EXPECT_GT(st.decodedBlocks, 0);
  }
}

TEST(PagedKV, SlidingWindowFreesBlocksOutsideTheWindow) {
  const KVLayerShape full{2, 8, 8}, sliding{2, 8, 8, /*window=*/12};
  const std::vector<KVLayerShape> shapes{sliding, full};
  const int64_t T = 200, B = 4;
  std::vector<LayerData> data{randomLayer(sliding, T, 1), randomLayer(full, T, 2)};
  auto be = makeCpuBackend();
  PagedKVOptions o;
  o.blockTokens = B;
  o.deviceBytes = uint64_t(perToken(shapes, KVDType::F32, B) * 24);
  auto kv = makePagedKVCache(*be, shapes, T, o);
  fill(*kv, data, 20, 20);  // prefill 20 then decode
  for (int64_t p = 20; p < T; p++) {
    for (size_t l = 0; l < 2; l++)
      kv->write(int(l), p, 1, data[l].k.data() + p * 16, data[l].v.data() + p * 16);
    std::vector<float> k, v;
    int64_t first = -1;
    gather(*kv, 0, sliding, p + 1, k, v, &first);
    // the query at p needs keys (p - 12, p]; blocks wholly before p - 11 are gone
    EXPECT_LE(first, p - 11);
    EXPECT_GT(first + B, p - 11 - B) << "p " << p;
    for (int64_t t = std::max<int64_t>(0, p - 11); t <= p; t++)
      ASSERT_EQ(0, std::memcmp(k.data() + t * 16, data[0].k.data() + t * 16, 64)) << "p " << p << " t " << t;
  }
  const KVStats& st = *kv->stats();
  EXPECT_EQ(st.windowFreedBlocks, (T - 12) / B);
  // the full layer holds all T tokens, the sliding one only its window (rounded out to whole blocks)
  EXPECT_EQ(kv->length(0), T);
  EXPECT_EQ(st.device.tokens + st.host.tokens - T, 12);
  EXPECT_GT(st.spilledBlocks, 0);
}

TEST(PagedKV, RewindDropsLaterTokens) {
  const KVLayerShape s{2, 8, 4};
  const int64_t T = 64, B = 8;
  LayerData a = randomLayer(s, T, 1), b = randomLayer(s, T, 2);
  for (KVDType dt : {KVDType::F32, KVDType::Int8}) {
    auto be = makeCpuBackend();
    PagedKVOptions o;
    o.blockTokens = B;
    o.dtype = dt;
    o.deviceBytes = uint64_t(perToken({s}, KVDType::F32, B) * 2 * B);
    auto kv = makePagedKVCache(*be, {s}, T, o);
    kv->write(0, 0, 50, a.k.data(), a.v.data());
    // rewind into a spilled, compressed block and write different tokens from there
    kv->write(0, 13, 20, b.k.data() + 13 * 16, b.v.data() + 13 * 8);
    EXPECT_EQ(kv->length(0), 33);
    std::vector<float> k, v;
    gather(*kv, 0, s, 33, k, v);
    float amax = 0;
    for (float x : a.k) amax = std::max(amax, std::fabs(x));
    for (float x : b.k) amax = std::max(amax, std::fabs(x));
    // int8: 0..12 went through int8 (8..12 decoded back into the f32 tail), 13..31 sealed to int8 again
    const float tol = dt == KVDType::F32 ? 0.0f : amax / 127.0f * 0.5001f;
    for (int64_t t = 0; t < 33; t++) {
      const auto& src = t < 13 ? a : b;
      const float tt = t >= 8 && t < 13 ? 2 * tol : tol;  // quantized twice (block 1 was re-sealed)
      for (int64_t i = 0; i < 16; i++) ASSERT_NEAR(k[size_t(t * 16 + i)], src.k[size_t(t * 16 + i)], tt) << t;
    }
    EXPECT_EQ(0, std::memcmp(k.data() + 32 * 16, b.k.data() + 32 * 16, 64));  // the f32 tail
    const KVStats& st = *kv->stats();
    EXPECT_EQ(st.device.tokens + st.host.tokens, 33);
    EXPECT_THROW(kv->write(0, 40, 1, a.k.data(), a.v.data()), Error);  // a gap
  }
}

// Caches sharing one KVStats (the engine's, across eval passes) leave it at zero when they are gone, also when
// their last block was partly filled.
TEST(PagedKV, SharedStatsReturnToZero) {
  const KVLayerShape s{2, 8, 4};
  LayerData a = randomLayer(s, 40, 3);
  auto be = makeCpuBackend();
  auto stats = std::make_shared<KVStats>();
  PagedKVOptions o;
  o.blockTokens = 8;
  o.deviceBytes = uint64_t(perToken({s}, KVDType::F32, 8) * 16);  // 2 blocks on the device, the rest spill
  for (int64_t n : {5, 21, 40}) {
    auto kv = makePagedKVCache(*be, {s}, 40, o, stats);
    kv->write(0, 0, n, a.k.data(), a.v.data());
    EXPECT_EQ(stats->device.tokens + stats->host.tokens, n);
    kv.reset();
    EXPECT_EQ(stats->device.tokens, 0) << n;
    EXPECT_EQ(stats->host.tokens, 0) << n;
    EXPECT_EQ(stats->device.blocks + stats->host.blocks, 0) << n;
  }
}

TEST(PagedKV, OutOfMemoryNamesContextAndBudgets) {
  const std::vector<KVLayerShape> shapes(2, KVLayerShape{2, 16, 16});  // 512 bytes/token in f32
  std::vector<LayerData> data{randomLayer(shapes[0], 100, 1), randomLayer(shapes[1], 100, 2)};
  {
    auto be = makeCpuBackend();
    PagedKVOptions o;
    o.deviceBytes = 16 * 1024;  // 32 tokens
    o.hostBytes = 0;            // no spill
    auto kv = makePagedKVCache(*be, shapes, 100, o);
    try {
      fill(*kv, data, 100, 1);
      FAIL() << "no error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("out of memory at context length 32 tokens"), std::string::npos) << m;
      EXPECT_NE(m.find("of 16.0 KiB (--kv-vram)"), std::string::npos) << m;
      EXPECT_NE(m.find("of 0 B (--kv-ram)"), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos);
    }
    // the cache stays usable for what it holds
    std::vector<float> k, v;
    gather(*kv, 1, shapes[1], 32, k, v);
    EXPECT_EQ(0, std::memcmp(k.data(), data[1].k.data(), k.size() * 4));
  }
  {  // spill into a bounded host tier, then run out there too (int8 on the host)
    auto be = makeCpuBackend();
    PagedKVOptions o;
    o.deviceBytes = 16 * 1024;
    o.hostBytes = 8 * 1024;
    o.dtype = KVDType::Int8;
    o.compress = KVCompress::Spilled;
    auto kv = makePagedKVCache(*be, shapes, 100, o);
    try {
      fill(*kv, data, 100, 10);
      FAIL() << "no error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("out of memory at context length"), std::string::npos) << m;
      EXPECT_NE(m.find("of 8.0 KiB (--kv-ram)"), std::string::npos) << m;
      EXPECT_GT(kv->stats()->host.blocks, 0);
    }
  }
  {  // a device budget that cannot hold even the blocks being filled
    auto be = makeCpuBackend();
    PagedKVOptions o;
    o.deviceBytes = 1000;
    auto kv = makePagedKVCache(*be, shapes, 100, o);
    EXPECT_THROW(kv->write(0, 0, 1, data[0].k.data(), data[0].v.data()), Error);
  }
}

TEST(PagedKV, BadInputsAreErrors) {
  auto be = makeCpuBackend();
  const std::vector<KVLayerShape> shapes{KVLayerShape{2, 8, 8}};
  PagedKVOptions o;
  o.blockTokens = 0;
  EXPECT_THROW(makePagedKVCache(*be, shapes, 10, o), Error);
  o.blockTokens = 4;
  EXPECT_THROW(makePagedKVCache(*be, {KVLayerShape{0, 8, 8}}, 10, o), Error);
  auto kv = makePagedKVCache(*be, shapes, 10, o);
  std::vector<float> x(11 * 16);
  EXPECT_THROW(kv->write(0, 0, 11, x.data(), x.data()), Error);  // over capacity
  EXPECT_THROW(kv->write(1, 0, 1, x.data(), x.data()), Error);   // no such layer
  std::vector<KVChunk> ch;
  EXPECT_THROW(kv->chunks(0, 1, ch), Error);  // nothing stored yet
  EXPECT_EQ(parseKVDType("int8"), KVDType::Int8);
  EXPECT_EQ(parseKVCompress("spilled"), KVCompress::Spilled);
  try {
    parseKVDType("fp8", "--kv-dtype");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-dtype: unknown KV dtype 'fp8'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parseKVCompress("some"), Error);
}

TEST(PagedKV, StatsJsonHasSpillKeys) {
  KVStats s;
  s.deviceBudget = 1024;
  s.spilledBytes = 5;
  s.restoredBytes = 7;
  auto j = kvStatsJson(s);
  EXPECT_EQ(j["spilled_bytes"], 5);
  EXPECT_EQ(j["spill_restored_bytes"], 7);
  EXPECT_EQ(j["device"]["budget_bytes"], 1024);
  EXPECT_TRUE(j["host"]["budget_bytes"].is_null());
  EXPECT_TRUE(j["device"].contains("bytes_per_token"));
}

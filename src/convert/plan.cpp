#include "convert/plan.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "convert/naming.h"
#include "core/error.h"

namespace doppler {

// ---------------------------------------------------------------------------------------------------------
// Options

void parseFuseList(const std::string& list, ConvertOptions& opts) {
  opts.fuseQkv = opts.fuseGateUp = false;
  if (list.empty() || list == "none") return;
  size_t b = 0;
  for (;;) {
    size_t e = list.find(',', b);
    std::string item = list.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (item == "qkv") opts.fuseQkv = true;
    else if (item == "gate_up") opts.fuseGateUp = true;
    else fail("--fuse: unknown item '{}' (expected a comma-separated list of qkv, gate_up)", item);
    if (e == std::string::npos) break;
    b = e + 1;
  }
}

void checkConvertOptions(const ConvertOptions& o) {
  check(o.tp >= 1 && o.tp <= 1024, "--tp: {} is out of range [1, 1024]", o.tp);
  check(o.shardSize >= 4096, "--shard-size: {} bytes is too small (at least 4K)", o.shardSize);
  if (o.dtype)
    check(*o.dtype == DType::F32 || *o.dtype == DType::F16 || *o.dtype == DType::BF16,
          "--dtype: {} is not supported (keep, bf16, f16 or f32)", dtypeName(*o.dtype));
  if (o.fuseQkv || o.fuseGateUp) {
    check(o.layout == Layout::Row, "--fuse needs --layout row (fused tensors are stored row-major)");
    check(o.tp == 1, "--fuse cannot be combined with --tp {} (fused tensors are stored whole)", o.tp);
  }
}

// ---------------------------------------------------------------------------------------------------------
// PlannedTensor

int64_t PlannedTensor::rows() const {
  int64_t r = 0;
  for (const auto& p : parts) r += p.rows;
  return r;
}

uint64_t PlannedTensor::bytes() const {
  uint64_t n = 1;
  for (auto d : shape) n *= uint64_t(d);
  return dtypeBytes(dtype, n);  // block types (mxfp4) too
}

bool PlannedTensor::isPlainCopy() const {
  return parts.size() == 1 && parts[0].contiguous() && layout == Layout::Row && c0 == 0 && c1 == parts[0].cols &&
         dtype == parts[0].dtype;
}

uint64_t PlannedGroup::bytes(uint64_t align) const {
  uint64_t at = 0;
  std::string prev;
  for (const auto& t : tensors) {
    std::string base = t.name.substr(0, t.name.find('#'));
    if (base != prev) at = (at + align - 1) / align * align;  // slices of one tensor stay back to back
    prev = base;
    at += t.bytes();
  }
  return at;
}

// ---------------------------------------------------------------------------------------------------------
// Producing bytes

namespace {

template <size_t S>
inline void copyElem(uint8_t* d, const uint8_t* s) {
  std::memcpy(d, s, S);
}

// Rows [r0, r1) of the stacked parts, columns [c0, c1), row-major into dst (source dtype).
template <size_t S>
void gatherRows(const PlannedTensor& t, int64_t r0, int64_t r1, uint8_t* dst) {
  int64_t W = t.c1 - t.c0;
  int64_t base = 0;
  for (const auto& p : t.parts) {
    int64_t a = std::max(r0, base), b = std::min(r1, base + p.rows);
    for (int64_t r = a; r < b; r++) {
      const uint8_t* src = p.base + size_t((r - base) * p.rowStride + t.c0 * p.colStride) * S;
      if (p.colStride == 1) {
        std::memcpy(dst, src, size_t(W) * S);
      } else {
        for (int64_t c = 0; c < W; c++) copyElem<S>(dst + size_t(c) * S, src + size_t(c * p.colStride) * S);
      }
      dst += size_t(W) * S;
    }
    base += p.rows;
  }
}

// The whole stacked tensor, columns [c0, c1), column-major (dst[c * R + r]) in the source dtype.
template <size_t S>
void gatherColumns(const PlannedTensor& t, uint8_t* dst) {
  int64_t W = t.c1 - t.c0, R = t.rows();
  constexpr int64_t kBlock = 32;  // rows per tile: 32 source rows stay in cache while we walk the columns
  int64_t base = 0;
  for (const auto& p : t.parts) {
    for (int64_t rb = 0; rb < p.rows; rb += kBlock) {
      int64_t re = std::min(p.rows, rb + kBlock);
      for (int64_t c = 0; c < W; c++) {
        uint8_t* d = dst + size_t(c * R + base + rb) * S;
        const uint8_t* s = p.base + size_t(rb * p.rowStride + (t.c0 + c) * p.colStride) * S;
        for (int64_t r = rb; r < re; r++, d += S, s += size_t(p.rowStride) * S) copyElem<S>(d, s);
      }
    }
    base += p.rows;
  }
}

// MXFP4 rows [r0, r1) of the stacked parts: per row, each 32-value block's scale byte then its 16 code bytes.
void gatherMxfp4Rows(const PlannedTensor& t, int64_t r0, int64_t r1, uint8_t* dst) {
  check(t.c0 == 0 && t.c1 == t.parts.front().cols, "tensor {}: mxfp4 tensors are stored whole", t.name);
  int64_t base = 0;
  for (const auto& p : t.parts) {
    check(p.dtype == DType::MXFP4 && p.scales != nullptr && p.cols % 32 == 0,
          "tensor {}: an mxfp4 part needs scales and rows of whole 32-value blocks", t.name);
    const int64_t blocks = p.cols / 32;
    int64_t a = std::max(r0, base), b = std::min(r1, base + p.rows);
    for (int64_t r = a; r < b; r++) {
      const uint8_t* codes = p.base + size_t((r - base) * p.rowStride);
      const uint8_t* scales = p.scales + size_t((r - base) * p.scaleRowStride);
      for (int64_t k = 0; k < blocks; k++) {
        *dst++ = scales[k];
        std::memcpy(dst, codes + k * 16, 16);
        dst += 16;
      }
    }
    base += p.rows;
  }
}

template <class F>
void dispatchSize(size_t es, F&& f) {
  switch (es) {
    case 1: return f(std::integral_constant<size_t, 1>{});
    case 2: return f(std::integral_constant<size_t, 2>{});
    case 4: return f(std::integral_constant<size_t, 4>{});
    case 8: return f(std::integral_constant<size_t, 8>{});
    default: fail("unsupported element size {}", es);
  }
}

}  // namespace

void produceRows(const PlannedTensor& t, int64_t r0, int64_t r1, uint8_t* dst) {
  check(t.layout == Layout::Row || t.is1D, "produceRows: tensor {} is column-major", t.name);
  DType from = t.parts.front().dtype;
  if (from == DType::MXFP4) {
    check(t.dtype == DType::MXFP4, "tensor {}: mxfp4 is stored as mxfp4 (asked for {})", t.name, dtypeName(t.dtype));
    return gatherMxfp4Rows(t, r0, r1, dst);
  }
  size_t es = dtypeSize(from);
  int64_t W = t.c1 - t.c0;
  size_t n = size_t((r1 - r0) * W);
  if (from == t.dtype) {
    dispatchSize(es, [&](auto S) { gatherRows<decltype(S)::value>(t, r0, r1, dst); });
    return;
  }
  std::vector<uint8_t> staging(n * es);
  dispatchSize(es, [&](auto S) { gatherRows<decltype(S)::value>(t, r0, r1, staging.data()); });
  convertElements(staging.data(), from, dst, t.dtype, n);
}

void produceTensor(const PlannedTensor& t, uint8_t* dst) {
  if (t.layout == Layout::Row || t.is1D) return produceRows(t, 0, t.rows(), dst);
  DType from = t.parts.front().dtype;
  size_t es = dtypeSize(from);
  size_t n = size_t(t.rows() * (t.c1 - t.c0));
  if (from == t.dtype) {
    dispatchSize(es, [&](auto S) { gatherColumns<decltype(S)::value>(t, dst); });
    return;
  }
  std::vector<uint8_t> staging(n * es);
  dispatchSize(es, [&](auto S) { gatherColumns<decltype(S)::value>(t, staging.data()); });
  convertElements(staging.data(), from, dst, t.dtype, n);
}

// ---------------------------------------------------------------------------------------------------------
// Planning

namespace {

struct LogicalSrc {
  std::string name;
  TensorRole role;
  int layer = -1, expert = -1;
  std::vector<SourceMatrix> parts;
  bool is1D = false;
  std::string from;  // Hugging Face name(s), for messages
};

SourceMatrix plainSource(const SafetensorsCheckpoint::Entry& e, const std::string& what, const std::string& hf) {
  const SafetensorInfo& info = *e.info;
  auto bytes = e.file->bytes(info);
  SourceMatrix s;
  s.base = bytes.data();
  s.dtype = info.dtype;
  if (info.shape.size() == 1) {
    s.rows = info.shape[0];
    s.cols = 1;
    s.rowStride = 1;
  } else if (info.shape.size() == 2) {
    s.rows = info.shape[0];
    s.cols = info.shape[1];
    s.rowStride = s.cols;
  } else {
    fail("{}: tensor '{}' has shape {}; expected 1 or 2 dimensions", what, hf, shapeString(info.shape));
  }
  return s;
}

// One per-expert tensor cut out of gpt_oss's fused expert tensors: "layers.L.experts.E.<suffix>".
LogicalSrc expertSrc(int layer, int expert, const char* suffix, const SourceMatrix& s, bool is1D,
                     const std::string& from) {
  LogicalSrc l;
  l.name = fmt::format("layers.{}.experts.{}.{}", layer, expert, suffix);
  l.role = TensorRole::Expert;
  l.layer = layer;
  l.expert = expert;
  l.parts = {s};
  l.is1D = is1D;
  l.from = from;
  return l;
}

// gpt_oss's released MXFP4 form of one layer's experts -> per-expert MXFP4 tensors (kept MXFP4; transformers'
// integrations/mxfp4.py): gate_up_proj_blocks [E, 2I, H/32, 16] u8 and gate_up_proj_scales [E, 2I, H/32] u8 hold
// the transpose of gate_up_proj, i.e. rows of W[2I, H] with gate = even rows and up = odd rows; down_proj_blocks
// [E, H, I/32, 16] / down_proj_scales [E, H, I/32] hold down.weight [H, I] itself. Biases as in the bf16 form.
void splitGptOssMxfp4(const SafetensorsCheckpoint& ckpt, const std::map<std::string, std::string>& fields, int layer,
                      const ModelConfig& cfg, const std::string& what, std::vector<LogicalSrc>& out) {
  const std::string p = fmt::format("model.layers.{}.mlp.experts.", layer);
  auto get = [&](const char* f) -> SafetensorsCheckpoint::Entry {
    auto it = fields.find(f);
    check(it != fields.end(), "{}: layer {}: gpt_oss MXFP4 tensor '{}{}' is missing", what, layer, p, f);
    return ckpt.get(it->second);
  };
  auto gb = get("gate_up_proj_blocks"), gs = get("gate_up_proj_scales"), gub = get("gate_up_proj_bias");
  auto db = get("down_proj_blocks"), ds = get("down_proj_scales"), dnb = get("down_proj_bias");
  for (const char* f : {"gate_up_proj", "down_proj"})
    check(!fields.count(f), "{}: layer {}: '{}{}' and its MXFP4 form are both present", what, layer, p, f);
  for (auto* e : {&gb, &gs, &db, &ds})
    check(e->info->dtype == DType::U8, "{}: tensor '{}' has dtype {}, expected u8 (MXFP4 blocks / scales)", what,
          e->info->name, dtypeName(e->info->dtype));
  const int64_t E = cfg.numExperts, H = cfg.hiddenSize;
  const auto& gbs = gb.info->shape;  // [E, 2I, H/32, 16]
  check(gbs.size() == 4 && gbs[0] == E && gbs[1] % 2 == 0 && gbs[2] * 32 == H && gbs[3] == 16,
        "{}: tensor '{}gate_up_proj_blocks' has shape {}, expected [{}, 2*intermediate, {}, 16]", what, p,
        shapeString(gbs), E, H / 32);
  const int64_t I = gbs[1] / 2;
  check(I % 32 == 0, "{}: layer {}: intermediate size {} is not a multiple of 32 (MXFP4 blocks)", what, layer, I);
  auto want = [&](const SafetensorsCheckpoint::Entry& e, std::vector<int64_t> shape, const char* f) {
    check(e.info->shape == shape, "{}: tensor '{}{}' has shape {}, expected {}", what, p, f,
          shapeString(e.info->shape), shapeString(shape));
  };
  want(gs, {E, 2 * I, H / 32}, "gate_up_proj_scales");
  want(gub, {E, 2 * I}, "gate_up_proj_bias");
  want(db, {E, H, I / 32, 16}, "down_proj_blocks");
  want(ds, {E, H, I / 32}, "down_proj_scales");
  want(dnb, {E, H}, "down_proj_bias");
  const uint8_t* GB = gb.file->bytes(*gb.info).data();
  const uint8_t* GS = gs.file->bytes(*gs.info).data();
  const uint8_t* GUB = gub.file->bytes(*gub.info).data();
  const uint8_t* DB = db.file->bytes(*db.info).data();
  const uint8_t* DS = ds.file->bytes(*ds.info).data();
  const uint8_t* DNB = dnb.file->bytes(*dnb.info).data();
  const size_t esb = dtypeSize(gub.info->dtype), esdb = dtypeSize(dnb.info->dtype);
  for (int64_t e = 0; e < E; e++) {
    auto add = [&](const char* suffix, SourceMatrix s, bool is1D, const std::string& from) {
      out.push_back(expertSrc(layer, int(e), suffix, s, is1D, p + from));
    };
    auto mx = [&](const uint8_t* codes, const uint8_t* scales, int64_t rows, int64_t cols, int64_t rowStride,
                  int64_t scaleRowStride) {
      SourceMatrix s;
      s.base = codes;
      s.dtype = DType::MXFP4;
      s.rows = rows;
      s.cols = cols;
      s.rowStride = rowStride;
      s.scales = scales;
      s.scaleRowStride = scaleRowStride;
      return s;
    };
    // gate.weight row j = row 2j of the expert's [2I, H] matrix, up.weight row j = row 2j + 1.
    const uint8_t* ge = GB + size_t(e * 2 * I * (H / 2));
    const uint8_t* gse = GS + size_t(e * 2 * I * (H / 32));
    add("gate.weight", mx(ge, gse, I, H, H, H / 16), false, "gate_up_proj_blocks");
    add("up.weight", mx(ge + H / 2, gse + H / 32, I, H, H, H / 16), false, "gate_up_proj_blocks");
    const uint8_t* gbe = GUB + size_t(e * 2 * I) * esb;
    add("gate.bias", {gbe, gub.info->dtype, I, 1, 2, 1}, true, "gate_up_proj_bias");
    add("up.bias", {gbe + esb, gub.info->dtype, I, 1, 2, 1}, true, "gate_up_proj_bias");
    add("down.weight", mx(DB + size_t(e * H * (I / 2)), DS + size_t(e * H * (I / 32)), H, I, I / 2, I / 32), false,
        "down_proj_blocks");
    add("down.bias", {DNB + size_t(e * H) * esdb, dnb.info->dtype, H, 1, 1, 1}, true, "down_proj_bias");
  }
}

// gpt_oss fused experts of one layer -> per-expert tensors (see docs/rdrr.md).
void splitGptOss(const SafetensorsCheckpoint& ckpt, const std::map<std::string, std::string>& fields, int layer,
                 const ModelConfig& cfg, const std::string& what, std::vector<LogicalSrc>& out) {
  auto get = [&](const char* f) -> SafetensorsCheckpoint::Entry {
    auto it = fields.find(f);
    check(it != fields.end(), "{}: layer {}: gpt_oss tensor 'model.layers.{}.mlp.experts.{}' is missing", what, layer,
          layer, f);
    return ckpt.get(it->second);
  };
  if (fields.count("gate_up_proj_blocks") || fields.count("down_proj_blocks"))
    return splitGptOssMxfp4(ckpt, fields, layer, cfg, what, out);
  auto gu = get("gate_up_proj"), gub = get("gate_up_proj_bias"), dn = get("down_proj"), dnb = get("down_proj_bias");
  const auto& gs = gu.info->shape;  // [E, hidden, 2I]
  const auto& ds = dn.info->shape;  // [E, I, hidden]
  std::string p = fmt::format("model.layers.{}.mlp.experts.", layer);
  check(gs.size() == 3 && gs[0] == cfg.numExperts && gs[1] == cfg.hiddenSize && gs[2] % 2 == 0,
        "{}: tensor '{}gate_up_proj' has shape {}, expected [{}, {}, 2*intermediate]", what, p, shapeString(gs),
        cfg.numExperts, cfg.hiddenSize);
  int64_t E = gs[0], H = gs[1], I = gs[2] / 2;
  check(ds.size() == 3 && ds[0] == E && ds[1] == I && ds[2] == H, "{}: tensor '{}down_proj' has shape {}, expected {}",
        what, p, shapeString(ds), shapeString({E, I, H}));
  check(gub.info->shape == std::vector<int64_t>{E, 2 * I}, "{}: tensor '{}gate_up_proj_bias' has shape {}, expected {}",
        what, p, shapeString(gub.info->shape), shapeString({E, 2 * I}));
  check(dnb.info->shape == std::vector<int64_t>{E, H}, "{}: tensor '{}down_proj_bias' has shape {}, expected {}", what,
        p, shapeString(dnb.info->shape), shapeString({E, H}));
  const uint8_t* GU = gu.file->bytes(*gu.info).data();
  const uint8_t* GUB = gub.file->bytes(*gub.info).data();
  const uint8_t* D = dn.file->bytes(*dn.info).data();
  const uint8_t* DB = dnb.file->bytes(*dnb.info).data();
  size_t es = dtypeSize(gu.info->dtype), esb = dtypeSize(gub.info->dtype), esd = dtypeSize(dn.info->dtype),
         esdb = dtypeSize(dnb.info->dtype);
  for (int64_t e = 0; e < E; e++) {
    auto add = [&](const char* suffix, SourceMatrix s, bool is1D, const std::string& from) {
      out.push_back(expertSrc(layer, int(e), suffix, s, is1D, p + from));
    };
    // gate.weight[j, h] = gate_up_proj[e][h, 2j]; up.weight[j, h] = gate_up_proj[e][h, 2j+1]
    const uint8_t* ge = GU + size_t(e * H * 2 * I) * es;
    add("gate.weight", {ge, gu.info->dtype, I, H, 2, 2 * I}, false, "gate_up_proj");
    add("up.weight", {ge + es, gu.info->dtype, I, H, 2, 2 * I}, false, "gate_up_proj");
    // gate.bias[j] = gate_up_proj_bias[e][2j]; up.bias[j] = gate_up_proj_bias[e][2j+1]
    const uint8_t* gbe = GUB + size_t(e * 2 * I) * esb;
    add("gate.bias", {gbe, gub.info->dtype, I, 1, 2, 1}, true, "gate_up_proj_bias");
    add("up.bias", {gbe + esb, gub.info->dtype, I, 1, 2, 1}, true, "gate_up_proj_bias");
    // down.weight[h, j] = down_proj[e][j, h]
    add("down.weight", {D + size_t(e * I * H) * esd, dn.info->dtype, H, I, 1, H}, false, "down_proj");
    add("down.bias", {DB + size_t(e * H) * esdb, dnb.info->dtype, H, 1, 1, 1}, true, "down_proj_bias");
  }
}

std::string groupOf(const LogicalSrc& l) {
  if (l.role == TensorRole::Embedding) return kEmbeddingGroup;
  if (l.role == TensorRole::Head) return kHeadGroup;
  if (l.layer < 0) return kFinalGroup;
  if (l.expert >= 0) return expertGroupName(l.layer, l.expert);
  return denseGroupName(l.layer);
}

}  // namespace

ConversionPlan planConversion(const SafetensorsCheckpoint& ckpt, const ModelConfig& cfg,
                              const nlohmann::json& rawConfig, const ConvertOptions& opts, const std::string& what) {
  checkConvertOptions(opts);
  ConversionPlan plan;
  plan.config = cfg;

  // 1. Map names; gather gpt_oss fused expert tensors per layer.
  std::vector<LogicalSrc> srcs;
  std::map<int, std::map<std::string, std::string>> gptOss;  // layer -> field -> hf name
  std::set<std::string> notes;
  for (const auto& hf : ckpt.names()) {
    HfNameMapping m = mapHfName(hf, cfg, what);
    if (m.kind == HfNameMapping::Skip) {
      notes.insert(m.note);
      continue;
    }
    if (m.kind == HfNameMapping::GptOssExperts) {
      gptOss[m.layer][m.field] = hf;
      continue;
    }
    LogicalSrc l;
    l.name = m.name;
    l.role = m.role;
    l.layer = m.layer;
    l.expert = m.expert;
    auto e = ckpt.get(hf);
    l.parts = {plainSource(e, what, hf)};
    l.is1D = e.info->shape.size() == 1;
    l.from = hf;
    srcs.push_back(std::move(l));
  }
  for (const auto& [layer, fields] : gptOss) splitGptOss(ckpt, fields, layer, cfg, what, srcs);

  std::map<std::string, size_t> byName;
  for (size_t i = 0; i < srcs.size(); i++) {
    auto [it, fresh] = byName.emplace(srcs[i].name, i);
    check(fresh, "{}: tensors '{}' and '{}' both map to '{}'", what, srcs[it->second].from, srcs[i].from, srcs[i].name);
  }
  check(byName.count("embed.weight"), "{}: the checkpoint has no model.embed_tokens.weight", what);
  check(byName.count("output_norm.weight"), "{}: the checkpoint has no model.norm.weight", what);
  check(cfg.tieWordEmbeddings || byName.count("lm_head.weight"),
        "{}: the checkpoint has no lm_head.weight and tie_word_embeddings is false", what);
  for (int64_t L = 0; L < cfg.numLayers; L++)
    check(byName.count(fmt::format("layers.{}.attn_norm.weight", L)),
          "{}: layer {} is missing (no model.layers.{}.input_layernorm.weight)", what, L, L);

  auto storedDtype = [&](const LogicalSrc& l) {
    DType src = l.parts.front().dtype;
    if (!opts.dtype || !isFloat(src)) return src;
    if (l.name.ends_with(".router.score_bias")) return src;  // routing precision: kept as in the checkpoint
    return *opts.dtype;
  };

  // 2. Fusion: replace components by one stacked tensor.
  std::vector<std::vector<std::string>> fuseSets;  // {fused, part0, part1, ...}
  for (int64_t L = 0; L < cfg.numLayers; L++) {
    std::string pre = fmt::format("layers.{}.", L);
    if (opts.fuseQkv)
      for (const char* kind : {"weight", "bias"})
        fuseSets.push_back({pre + "attn.qkv." + kind, pre + "attn.q." + kind, pre + "attn.k." + kind,
                            pre + "attn.v." + kind});
    if (opts.fuseGateUp) {
      for (const char* kind : {"weight", "bias"}) {
        fuseSets.push_back({pre + "ffn.gate_up." + kind, pre + "ffn.gate." + kind, pre + "ffn.up." + kind});
        fuseSets.push_back({pre + "shared.gate_up." + kind, pre + "shared.gate." + kind, pre + "shared.up." + kind});
        for (int64_t E = 0; E < cfg.numExperts; E++) {
          std::string ep = fmt::format("{}experts.{}.", pre, E);
          fuseSets.push_back({ep + "gate_up." + kind, ep + "gate." + kind, ep + "up." + kind});
        }
      }
    }
  }
  std::set<std::string> removed;
  for (const auto& set : fuseSets) {
    bool all = true;
    for (size_t i = 1; i < set.size(); i++) all = all && byName.count(set[i]);
    if (!all) continue;  // e.g. no biases, MLA attention, a dense layer without experts
    const LogicalSrc& first = srcs[byName[set[1]]];
    LogicalSrc f;
    f.name = set[0];
    f.role = first.role;
    f.layer = first.layer;
    f.expert = first.expert;
    f.is1D = first.is1D;
    RdrrFused fu;
    fu.name = set[0];
    int64_t row = 0;
    for (size_t i = 1; i < set.size(); i++) {
      const LogicalSrc& c = srcs[byName[set[i]]];
      check(c.is1D == first.is1D && c.parts[0].cols == first.parts[0].cols &&
                c.parts[0].dtype == first.parts[0].dtype,
            "{}: cannot fuse '{}' and '{}': shapes or dtypes differ", what, first.from, c.from);
      f.parts.push_back(c.parts[0]);
      fu.parts.push_back({set[i], row, c.parts[0].rows});
      row += c.parts[0].rows;
      removed.insert(set[i]);
      f.from += (i > 1 ? "+" : "") + c.from;
    }
    plan.manifest.fused.emplace(fu.name, std::move(fu));
    srcs.push_back(std::move(f));
  }
  if (!removed.empty()) {
    std::vector<LogicalSrc> kept;
    for (auto& s : srcs)
      if (!removed.count(s.name)) kept.push_back(std::move(s));
    srcs = std::move(kept);
  }

  // 3. Groups, layout, TP slices.
  std::map<std::string, std::vector<const LogicalSrc*>> grouped;
  for (const auto& s : srcs) grouped[groupOf(s)].push_back(&s);
  std::vector<std::string> order;
  auto addGroup = [&](const std::string& g) {
    if (grouped.count(g)) order.push_back(g);
  };
  addGroup(kEmbeddingGroup);
  for (int64_t L = 0; L < cfg.numLayers; L++) {
    addGroup(denseGroupName(int(L)));
    for (int64_t E = 0; E < cfg.numExperts; E++) addGroup(expertGroupName(int(L), int(E)));
  }
  addGroup(kFinalGroup);
  addGroup(kHeadGroup);
  check(order.size() == grouped.size(), "{}: internal error: tensors outside the known groups", what);

  size_t unsliced = 0;
  for (const auto& g : order) {
    auto members = grouped[g];
    std::stable_sort(members.begin(), members.end(), [](const LogicalSrc* a, const LogicalSrc* b) {
      int oa = canonicalOrder(a->name), ob = canonicalOrder(b->name);
      return oa != ob ? oa < ob : a->name < b->name;
    });
    PlannedGroup pg;
    pg.name = g;
    for (const LogicalSrc* s : members) {
      PlannedTensor t;
      t.role = s->role;
      t.layer = s->layer;
      t.expert = s->expert;
      t.parts = s->parts;
      t.is1D = s->is1D;
      t.dtype = storedDtype(*s);
      int64_t rows = 0;
      for (const auto& p : s->parts) rows += p.rows;
      int64_t cols = s->parts.front().cols;
      bool matrix = !s->is1D;
      bool isEmbed = s->role == TensorRole::Embedding;
      const bool blockType = dtypeBlockSize(t.dtype) > 1;  // mxfp4: row-major, whole
      t.layout = (matrix && !isEmbed && !blockType) ? opts.layout : Layout::Row;
      t.originalShape = matrix ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
      int n = 1;
      if (opts.tp > 1 && matrix && !isEmbed && !blockType) {
        if (cols % opts.tp == 0) n = opts.tp;
        else unsliced++;
      }
      for (int i = 0; i < n; i++) {
        PlannedTensor st = t;
        st.c0 = matrix ? cols / n * i : 0;
        st.c1 = matrix ? cols / n * (i + 1) : 1;
        if (n > 1) {
          st.name = fmt::format("{}#{}", s->name, i);
          st.sliceDim = 1;
          st.sliceIdx = i;
          st.sliceCount = n;
        } else {
          st.name = s->name;
        }
        st.shape = matrix ? std::vector<int64_t>{rows, st.c1 - st.c0} : std::vector<int64_t>{rows};
        plan.totalBytes += st.bytes();
        pg.tensors.push_back(std::move(st));
      }
    }
    plan.groups.push_back(std::move(pg));
  }
  if (unsliced) notes.insert(fmt::format("{} matrices stay whole: their input dimension is not divisible by --tp {}",
                                         unsliced, opts.tp));
  if (opts.tp > 1) notes.insert("embed.weight stays whole and row-major (rows are gathered by token id)");
  plan.notes.assign(notes.begin(), notes.end());

  // 4. Manifest skeleton.
  Manifest& mf = plan.manifest;
  mf.formatVersion = kRdrrFormatVersion;
  mf.modelId = opts.modelId;
  mf.architecture = std::string(archName(cfg.arch));
  mf.config = rawConfig;
  mf.hashAlgorithm = "sha256";
  mf.defaultWeightLayout = opts.layout;
  if (cfg.numExperts > 0) {
    RdrrMoe moe;
    moe.numExperts = cfg.numExperts;
    moe.topK = cfg.topK;
    bool first = true;
    for (const auto& g : plan.groups) {
      if (g.tensors.empty() || g.tensors.front().expert < 0) continue;
      uint64_t b = 0;
      for (const auto& t : g.tensors) b += t.bytes();
      if (first) moe.expertBytes = b;
      check(b == moe.expertBytes, "{}: expert group {} holds {} bytes, other experts {}", what, g.name, b,
            moe.expertBytes);
      first = false;
    }
    mf.moe = moe;
  }
  for (const auto& g : plan.groups) {
    auto& names = mf.groups[g.name];
    for (const auto& t : g.tensors) {
      names.push_back(t.name);
      RdrrTensor e;
      e.name = t.name;
      e.shape = t.shape;
      e.dtype = t.dtype;
      e.layout = t.layout;
      e.originalShape = t.originalShape;
      e.sliceDim = t.sliceDim;
      e.sliceIdx = t.sliceIdx;
      e.sliceCount = t.sliceCount;
      e.role = t.role;
      e.layer = t.layer;
      e.expert = t.expert;
      e.size = t.bytes();
      mf.tensors.emplace(t.name, std::move(e));
    }
  }
  return plan;
}

}  // namespace doppler

// Hugging Face -> RDRR -> reader round trips on all six fixture models: every tensor read back equals the
// source bit for bit after undoing the documented transforms (names, gpt_oss split, transposes, dtype,
// slices, fusion); TP slices and column ranges read exactly the bytes they need; groups are one read.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "convert/convert.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "core/json_util.h"
#include "format/hf_config.h"
#include "format/rdrr_reader.h"
#include "format/safetensors.h"
#include "test_util.h"

namespace doppler {
namespace {

namespace fs = std::filesystem;

std::string fixture(const std::string& arch) { return test::dataPath("hf/" + arch); }

using Tmp = test::TempDir;

// ---- the expected logical tensors, computed independently of src/convert ----

struct Expected {
  DType dtype;
  std::vector<int64_t> shape;   // [out, in] or [n]
  std::vector<uint8_t> bytes;   // row-major, source dtype
};

// Hugging Face name -> canonical name by plain prefix replacement (docs/rdrr.md's table). "" = not stored.
std::string canonicalName(const std::string& hf, bool tied) {
  if (hf == "model.embed_tokens.weight") return "embed.weight";
  if (hf.rfind("model.norm.", 0) == 0) return "output_norm." + hf.substr(11);
  if (hf == "lm_head.weight") return tied ? "" : hf;
  if (hf == "lm_head.bias") return hf;
  const std::string pre = "model.layers.";
  if (hf.rfind(pre, 0) != 0) return "?";
  size_t dot = hf.find('.', pre.size());
  std::string layer = hf.substr(pre.size(), dot - pre.size());
  std::string rest = hf.substr(dot + 1);
  static const std::vector<std::pair<std::string, std::string>> repl = {
      {"input_layernorm.", "attn_norm."},
      {"post_attention_layernorm.", "ffn_norm."},
      {"self_attn.q_a_proj.", "attn.q_a."},
      {"self_attn.q_a_layernorm.", "attn.q_a_norm."},
      {"self_attn.q_b_proj.", "attn.q_b."},
      {"self_attn.kv_a_proj_with_mqa.", "attn.kv_a."},
      {"self_attn.kv_a_layernorm.", "attn.kv_a_norm."},
      {"self_attn.kv_b_proj.", "attn.kv_b."},
      {"self_attn.q_proj.", "attn.q."},
      {"self_attn.k_proj.", "attn.k."},
      {"self_attn.v_proj.", "attn.v."},
      {"self_attn.o_proj.", "attn.o."},
      {"self_attn.q_norm.", "attn.q_norm."},
      {"self_attn.k_norm.", "attn.k_norm."},
      {"self_attn.sinks", "attn.sinks"},
      {"block_sparse_moe.gate.", "router."},
      {"mlp.gate.e_score_correction_bias", "router.score_bias"},
      {"mlp.gate.weight", "router.weight"},
      {"mlp.router.", "router."},
      {"mlp.shared_experts.gate_proj.", "shared.gate."},
      {"mlp.shared_experts.up_proj.", "shared.up."},
      {"mlp.shared_experts.down_proj.", "shared.down."},
      {"mlp.gate_proj.", "ffn.gate."},
      {"mlp.up_proj.", "ffn.up."},
      {"mlp.down_proj.", "ffn.down."},
  };
  for (const auto& [from, to] : repl)
    if (rest.rfind(from, 0) == 0) return "layers." + layer + "." + to + rest.substr(from.size());
  // Experts: "<block>.experts.E.<w>.weight"
  for (const std::string block : {"block_sparse_moe.experts.", "mlp.experts."}) {
    if (rest.rfind(block, 0) != 0) continue;
    std::string tail = rest.substr(block.size());
    size_t d = tail.find('.');
    std::string e = tail.substr(0, d), w = tail.substr(d + 1);
    static const std::map<std::string, std::string> ws = {
        {"w1.weight", "gate.weight"},      {"w3.weight", "up.weight"},     {"w2.weight", "down.weight"},
        {"gate_proj.weight", "gate.weight"}, {"up_proj.weight", "up.weight"}, {"down_proj.weight", "down.weight"}};
    if (ws.count(w)) return "layers." + layer + ".experts." + e + "." + ws.at(w);
  }
  return "?";
}

std::map<std::string, Expected> expectedTensors(const std::string& arch) {
  ModelConfig cfg = readHfConfig(fixture(arch) + "/config.json");
  SafetensorsCheckpoint ck(fixture(arch));
  std::map<std::string, Expected> out;
  for (const auto& hf : ck.names()) {
    auto e = ck.get(hf);
    auto bytes = e.file->bytes(*e.info);
    if (arch == "gpt_oss" && hf.find(".mlp.experts.") != std::string::npos) continue;  // below
    std::string name = canonicalName(hf, cfg.tieWordEmbeddings);
    if (name.empty()) continue;
    EXPECT_NE(name, "?") << hf;
    out[name] = Expected{e.info->dtype, e.info->shape, std::vector<uint8_t>(bytes.begin(), bytes.end())};
  }
  if (arch == "gpt_oss") {
    // gate_up_proj [E, H, 2I] used as x @ W: gate = even columns, up = odd columns; stored transposed [I, H].
    for (int64_t L = 0; L < cfg.numLayers; L++) {
      std::string p = "model.layers." + std::to_string(L) + ".mlp.experts.";
      auto gu = ck.get(p + "gate_up_proj"), gub = ck.get(p + "gate_up_proj_bias");
      auto dn = ck.get(p + "down_proj"), dnb = ck.get(p + "down_proj_bias");
      int64_t E = gu.info->shape[0], H = gu.info->shape[1], I = gu.info->shape[2] / 2;
      auto GU = gu.file->bytes(*gu.info), GUB = gub.file->bytes(*gub.info);
      auto D = dn.file->bytes(*dn.info), DB = dnb.file->bytes(*dnb.info);
      auto el = [](std::span<const uint8_t> s, int64_t idx) {  // bf16 element
        uint16_t v;
        std::memcpy(&v, s.data() + idx * 2, 2);
        return v;
      };
      for (int64_t e = 0; e < E; e++) {
        std::string c = "layers." + std::to_string(L) + ".experts." + std::to_string(e) + ".";
        std::vector<uint16_t> gate(static_cast<size_t>(I * H)), up(static_cast<size_t>(I * H)),
            down(static_cast<size_t>(H * I));
        std::vector<uint16_t> gb(static_cast<size_t>(I)), ub(static_cast<size_t>(I)), db(static_cast<size_t>(H));
        for (int64_t j = 0; j < I; j++)
          for (int64_t h = 0; h < H; h++) {
            gate[size_t(j * H + h)] = el(GU, (e * H + h) * 2 * I + 2 * j);
            up[size_t(j * H + h)] = el(GU, (e * H + h) * 2 * I + 2 * j + 1);
          }
        for (int64_t h = 0; h < H; h++)
          for (int64_t j = 0; j < I; j++) down[size_t(h * I + j)] = el(D, (e * I + j) * H + h);
        for (int64_t j = 0; j < I; j++) {
          gb[size_t(j)] = el(GUB, e * 2 * I + 2 * j);
          ub[size_t(j)] = el(GUB, e * 2 * I + 2 * j + 1);
        }
        for (int64_t h = 0; h < H; h++) db[size_t(h)] = el(DB, e * H + h);
        auto put = [&](const std::string& n, const std::vector<uint16_t>& v, std::vector<int64_t> shape) {
          std::vector<uint8_t> b(v.size() * 2);
          std::memcpy(b.data(), v.data(), b.size());
          out[c + n] = Expected{DType::BF16, shape, b};
        };
        put("gate.weight", gate, {I, H});
        put("up.weight", up, {I, H});
        put("down.weight", down, {H, I});
        put("gate.bias", gb, {I});
        put("up.bias", ub, {I});
        put("down.bias", db, {H});
      }
    }
  }
  return out;
}

// ---- transforms applied to expected data ----

std::vector<uint8_t> transpose(const std::vector<uint8_t>& a, int64_t rows, int64_t cols, size_t es) {
  std::vector<uint8_t> t(a.size());
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) std::memcpy(&t[size_t(c * rows + r) * es], &a[size_t(r * cols + c) * es], es);
  return t;
}

std::vector<uint8_t> columnsOf(const std::vector<uint8_t>& a, int64_t rows, int64_t cols, size_t es, int64_t c0,
                               int64_t c1) {
  std::vector<uint8_t> o(size_t(rows * (c1 - c0)) * es);
  for (int64_t r = 0; r < rows; r++)
    std::memcpy(&o[size_t(r * (c1 - c0)) * es], &a[size_t(r * cols + c0) * es], size_t(c1 - c0) * es);
  return o;
}

std::vector<uint8_t> convertTo(const std::vector<uint8_t>& a, DType from, DType to) {
  if (from == to) return a;
  size_t n = a.size() / dtypeSize(from);
  std::vector<uint8_t> o(n * dtypeSize(to));
  convertElements(a.data(), from, o.data(), to, n);
  return o;
}

// Expected stored bytes of W (or of W[:, c0:c1]) for the layout and dtype the model reports.
std::vector<uint8_t> storedForm(const Expected& x, DType to, Layout layout, int64_t c0 = -1, int64_t c1 = -1) {
  std::vector<uint8_t> b = convertTo(x.bytes, x.dtype, to);
  if (x.shape.size() != 2) return b;
  size_t es = dtypeSize(to);
  int64_t rows = x.shape[0], cols = x.shape[1];
  if (c0 >= 0) {
    b = columnsOf(b, rows, cols, es, c0, c1);
    cols = c1 - c0;
  }
  return layout == Layout::Column ? transpose(b, rows, cols, es) : b;
}

// ---- the variants ----

struct Variant {
  std::string label;
  ConvertOptions opts;
};

ConvertOptions fastOpts() {
  ConvertOptions o;
  o.sync = false;
  return o;
}

std::vector<Variant> variants() {
  std::vector<Variant> v;
  auto add = [&](std::string label, auto f) {
    ConvertOptions o;
    o.sync = false;  // no fsyncs: the tests do not need durability, and fsync is slow on CI VMs
    f(o);
    v.push_back({std::move(label), o});
  };
  add("row", [](ConvertOptions&) {});
  add("column", [](ConvertOptions& o) { o.layout = Layout::Column; });
  add("column_tp2", [](ConvertOptions& o) { o.layout = Layout::Column; o.tp = 2; });
  add("column_tp4", [](ConvertOptions& o) { o.layout = Layout::Column; o.tp = 4; });
  add("row_tp2", [](ConvertOptions& o) { o.tp = 2; });
  add("f32", [](ConvertOptions& o) { o.dtype = DType::F32; });
  add("f16_column", [](ConvertOptions& o) { o.dtype = DType::F16; o.layout = Layout::Column; });
  add("bf16_small_shards", [](ConvertOptions& o) { o.dtype = DType::BF16; o.shardSize = 16 << 10; });
  add("fuse", [](ConvertOptions& o) { o.fuseQkv = o.fuseGateUp = true; });
  return v;
}

const std::vector<std::string> kArchs = {"llama", "mixtral", "qwen3_moe", "gpt_oss", "phimoe", "deepseek_v3"};

class RdrrRoundTrip : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(RdrrRoundTrip, EveryTensorMatchesTheSource) {
  const std::string arch = std::get<0>(GetParam());
  const Variant var = variants()[size_t(std::get<1>(GetParam()))];
  const ConvertOptions& o = var.opts;
  Tmp tmp;
  std::string out = tmp / "m.rdrr";
  ConvertResult res = convertHfToRdrr(fixture(arch), out, o);
  EXPECT_FALSE(res.manifest.shards.empty());
  auto m = RdrrModel::open(out);
  const Manifest& mf = m->manifest();
  EXPECT_EQ(mf.architecture, arch);
  EXPECT_EQ(mf.defaultWeightLayout, o.layout);
  EXPECT_EQ(mf.modelId, arch);
  EXPECT_EQ(mf.config, readJsonFile(fixture(arch) + "/config.json"));
  // Tokenizer files copied with their hashes.
  std::set<std::string> tok;
  for (const auto& f : mf.tokenizerFiles) tok.insert(f.filename);
  EXPECT_EQ(tok, (std::set<std::string>{"tokenizer.json", "tokenizer_config.json", "generation_config.json"}));
  EXPECT_EQ(readFile(out + "/tokenizer.json"), readFile(fixture(arch) + "/tokenizer.json"));

  auto expected = expectedTensors(arch);
  ASSERT_FALSE(expected.empty());
  // The model's logical names are exactly the expected ones (plus the fused tensors themselves).
  std::set<std::string> names;
  for (const auto& n : m->names())
    if (!mf.fused.count(n)) names.insert(n);
  std::set<std::string> want;
  for (const auto& [n, _] : expected) want.insert(n);
  EXPECT_EQ(names, want);
  if (arch == "qwen3_moe") EXPECT_FALSE(m->has("lm_head.weight"));  // tied: dropped

  for (const auto& [name, x] : expected) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(m->has(name));
    EXPECT_EQ(m->shape(name), x.shape);
    bool matrix = x.shape.size() == 2;
    bool isEmbed = name == "embed.weight";
    Layout wantLayout = matrix && !isEmbed ? o.layout : Layout::Row;
    EXPECT_EQ(m->layout(name), wantLayout);
    DType wantType = x.dtype;
    if (o.dtype && isFloat(x.dtype) && !name.ends_with("score_bias")) wantType = *o.dtype;
    EXPECT_EQ(m->dtype(name), wantType);
    if (name.ends_with("score_bias")) EXPECT_EQ(m->dtype(name), DType::F32);

    std::vector<uint8_t> got = m->readTensor(name);
    ASSERT_EQ(got, storedForm(x, wantType, wantLayout));
    // Undo the transforms explicitly too: back to row-major in the source dtype, bit for bit.
    std::vector<uint8_t> back = got;
    if (wantLayout == Layout::Column) back = transpose(back, x.shape[1], x.shape[0], dtypeSize(wantType));
    if (wantType == DType::F32 && x.dtype == DType::BF16) {
      std::vector<uint8_t> b16(back.size() / 2);
      convertElements(back.data(), DType::F32, b16.data(), DType::BF16, back.size() / 4);
      back = b16;
    }
    if (wantType == x.dtype || (wantType == DType::F32 && x.dtype == DType::BF16)) EXPECT_EQ(back, x.bytes);

    // Zero-copy view where the bytes are contiguous.
    int n = m->sliceCount(name);
    auto v = m->view(name);
    if (n == 1 || wantLayout == Layout::Column) {
      ASSERT_TRUE(v.has_value());
      EXPECT_EQ(std::memcmp(v->data, got.data(), got.size()), 0);
      EXPECT_EQ(v->shape, x.shape);
    } else {
      EXPECT_FALSE(v.has_value());
    }

    // TP slices: slice i is exactly columns [i*K/N, (i+1)*K/N), and reading it reads exactly 1/N of the bytes.
    bool sliceable = matrix && !isEmbed && o.tp > 1 && x.shape[1] % o.tp == 0;
    EXPECT_EQ(n, sliceable ? o.tp : 1);
    if (n > 1) {
      int64_t K = x.shape[1];
      for (int i = 0; i < n; i++) {
        m->resetBytesRead();
        auto s = m->readSlice(name, i);
        EXPECT_EQ(m->bytesRead(), m->byteSize(name) / uint64_t(n));
        EXPECT_EQ(s, storedForm(x, wantType, wantLayout, i * K / n, (i + 1) * K / n));
      }
      EXPECT_THROW(m->readSlice(name, n), Error);
    }
    // Column ranges: in column layout only the bytes of those columns are read.
    if (matrix && x.shape[1] >= 3) {
      int64_t K = x.shape[1], c0 = 1, c1 = K - 1;
      m->resetBytesRead();
      auto cols = m->readColumns(name, c0, c1);
      EXPECT_EQ(cols, storedForm(x, wantType, wantLayout, c0, c1));
      if (wantLayout == Layout::Column)
        EXPECT_EQ(m->bytesRead(), uint64_t(x.shape[0] * (c1 - c0)) * dtypeSize(wantType));
    }
  }

  // Groups: each is one contiguous read; expert groups hold exactly their expert's tensors.
  for (const auto& [g, members] : mf.groups) {
    SCOPED_TRACE(g);
    auto span = m->groupSpan(g);
    m->resetBytesRead();
    auto parts = m->readGroup(g);
    EXPECT_EQ(m->bytesRead(), span.size);
    uint64_t sum = 0;
    for (const auto& mem : members) sum += mf.tensors.at(mem).size;
    EXPECT_GE(span.size, sum);
    EXPECT_LT(span.size, sum + 64 * members.size());
    for (const auto& [n, bytes] : parts) EXPECT_EQ(bytes, m->readTensor(n)) << n;
    if (g.find(".expert.") != std::string::npos) {
      ASSERT_TRUE(mf.moe.has_value());
      EXPECT_EQ(sum, mf.moe->expertBytes);
      for (const auto& mem : members) EXPECT_EQ(mf.tensors.at(mem).role, TensorRole::Expert);
    }
  }
  // Shards: never larger than the shard size unless they hold a single group.
  std::map<int, std::set<std::string>> groupsPerShard;
  for (const auto& [g, members] : mf.groups) groupsPerShard[mf.tensors.at(members.front()).shard].insert(g);
  for (const auto& s : mf.shards)
    if (s.size > o.shardSize) EXPECT_EQ(groupsPerShard[s.index].size(), 1u) << s.filename;
  m->verify();
}

INSTANTIATE_TEST_SUITE_P(AllModels, RdrrRoundTrip,
                         ::testing::Combine(::testing::ValuesIn(kArchs), ::testing::Range(0, int(variants().size()))),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + variants()[size_t(std::get<1>(info.param))].label;
                         });

// ---- focused checks ----

TEST(RdrrConvert, FusionRecordsPartsAndReadsComponentsTransparently) {
  Tmp tmp;
  ConvertOptions o = fastOpts();
  o.fuseQkv = o.fuseGateUp = true;
  convertHfToRdrr(fixture("gpt_oss"), tmp / "m.rdrr", o);
  auto m = RdrrModel::open(tmp / "m.rdrr");
  const auto& f = m->manifest().fused.at("layers.0.attn.qkv.weight");
  ASSERT_EQ(f.parts.size(), 3u);
  EXPECT_EQ(f.parts[0].name, "layers.0.attn.q.weight");
  EXPECT_EQ(f.parts[1].start, 64);  // q has heads*head_dim = 64 rows
  EXPECT_EQ(f.parts[2].count, 32);
  EXPECT_TRUE(m->manifest().fused.count("layers.0.attn.qkv.bias"));
  EXPECT_TRUE(m->manifest().fused.count("layers.1.experts.7.gate_up.weight"));
  EXPECT_TRUE(m->manifest().fused.count("layers.1.experts.7.gate_up.bias"));
  EXPECT_FALSE(m->manifest().tensors.count("layers.0.attn.q.weight"));
  EXPECT_EQ(m->shape("layers.0.attn.qkv.weight"), (std::vector<int64_t>{128, 64}));
  // The fused tensor equals its components stacked.
  auto qkv = m->readTensor("layers.0.attn.qkv.weight");
  auto q = m->readTensor("layers.0.attn.q.weight"), k = m->readTensor("layers.0.attn.k.weight"),
       v = m->readTensor("layers.0.attn.v.weight");
  std::vector<uint8_t> cat = q;
  cat.insert(cat.end(), k.begin(), k.end());
  cat.insert(cat.end(), v.begin(), v.end());
  EXPECT_EQ(qkv, cat);
  // A component is read with exactly its bytes.
  m->resetBytesRead();
  m->readTensor("layers.0.attn.k.weight");
  EXPECT_EQ(m->bytesRead(), 32u * 64 * 2);
}

TEST(RdrrConvert, RejectsFusionWithColumnLayoutOrTp) {
  Tmp tmp;
  ConvertOptions o = fastOpts();
  o.fuseQkv = true;
  o.layout = Layout::Column;
  EXPECT_THROW(convertHfToRdrr(fixture("llama"), tmp / "a.rdrr", o), Error);
  o.layout = Layout::Row;
  o.tp = 2;
  EXPECT_THROW(convertHfToRdrr(fixture("llama"), tmp / "b.rdrr", o), Error);
  EXPECT_FALSE(fs::exists(tmp / "a.rdrr"));
  EXPECT_FALSE(fs::exists(tmp / "b.rdrr"));
}

TEST(RdrrConvert, ExpertsAreContiguousAndOversizedGroupsGetTheirOwnShard) {
  Tmp tmp;
  ConvertOptions o = fastOpts();
  o.shardSize = 16 << 10;  // mixtral's experts are 48 KiB: each gets a shard of its own
  convertHfToRdrr(fixture("mixtral"), tmp / "m.rdrr", o);
  auto m = RdrrModel::open(tmp / "m.rdrr");
  const Manifest& mf = m->manifest();
  ASSERT_TRUE(mf.moe.has_value());
  EXPECT_EQ(mf.moe->numExperts, 8);
  EXPECT_EQ(mf.moe->topK, 2);
  EXPECT_EQ(mf.moe->expertBytes, 3u * 128 * 64 * 2);
  for (int L = 0; L < 3; L++)
    for (int E = 0; E < 8; E++) {
      const auto& members = mf.groups.at(expertGroupName(L, E));
      ASSERT_EQ(members.size(), 3u);
      const RdrrTensor& first = mf.tensors.at(members[0]);
      const auto& shard = mf.shards.at(size_t(first.shard));
      EXPECT_EQ(shard.size, mf.moe->expertBytes);  // alone in its shard, no padding
      uint64_t at = 0;
      for (const auto& n : members) {  // gate, up, down back to back
        const RdrrTensor& t = mf.tensors.at(n);
        EXPECT_EQ(t.shard, first.shard);
        EXPECT_EQ(t.offset, at);
        at += t.size;
      }
      EXPECT_EQ(members[0], fmt::format("layers.{}.experts.{}.gate.weight", L, E));
      EXPECT_EQ(members[2], fmt::format("layers.{}.experts.{}.down.weight", L, E));
    }
  for (const auto& s : mf.shards) EXPECT_EQ(s.filename, fmt::format("shard-{:05}.bin", s.index));
}

TEST(RdrrConvert, DefaultShardSizeKeepsSmallModelInOneShard) {
  Tmp tmp;
  convertHfToRdrr(fixture("phimoe"), tmp / "m.rdrr", fastOpts());
  auto m = RdrrModel::open(tmp / "m.rdrr");
  EXPECT_EQ(m->manifest().shards.size(), 1u);
  // Every tensor starts at a multiple of 64 bytes.
  for (const auto& [n, t] : m->manifest().tensors) EXPECT_EQ(t.offset % 64, 0u) << n;
}

TEST(RdrrReader, OpenChecksShardFiles) {
  Tmp tmp;
  convertHfToRdrr(fixture("llama"), tmp / "m.rdrr", fastOpts());
  fs::resize_file(tmp / "m.rdrr/shard-00000.bin", 100);
  try {
    RdrrModel::open(tmp / "m.rdrr");
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("shard-00000.bin"), std::string::npos) << msg;
    EXPECT_NE(msg.find("100 bytes"), std::string::npos) << msg;
  }
  fs::remove(tmp / "m.rdrr/shard-00000.bin");
  EXPECT_THROW(RdrrModel::open(tmp / "m.rdrr"), Error);
  EXPECT_THROW(RdrrModel::open(tmp / "nothing"), Error);
}

TEST(RdrrReader, ReadRangeIsBoundsChecked) {
  Tmp tmp;
  convertHfToRdrr(fixture("llama"), tmp / "m.rdrr", fastOpts());
  auto m = RdrrModel::open(tmp / "m.rdrr");
  uint64_t size = m->manifest().shards[0].size;
  std::vector<uint8_t> buf(16);
  m->resetBytesRead();
  m->readRange(0, size - 16, 16, buf.data());
  EXPECT_EQ(m->bytesRead(), 16u);
  EXPECT_THROW(m->readRange(0, size - 15, 16, buf.data()), Error);
  EXPECT_THROW(m->readRange(0, ~uint64_t(0) - 4, 16, buf.data()), Error);
  EXPECT_THROW(m->readRange(1, 0, 1, buf.data()), Error);
  EXPECT_THROW(m->readColumns("layers.0.attn.q.weight", 10, 65), Error);
  EXPECT_THROW(m->readColumns("output_norm.weight", 0, 1), Error);
  EXPECT_THROW(m->readTensor("no.such.tensor"), Error);
}

TEST(RdrrReader, VerifyNamesTheCorruptShard) {
  Tmp tmp;
  ConvertOptions o = fastOpts();
  o.shardSize = 64 << 10;
  convertHfToRdrr(fixture("mixtral"), tmp / "m.rdrr", o);
  auto m = RdrrModel::open(tmp / "m.rdrr");
  ASSERT_GE(m->manifest().shards.size(), 3u);
  EXPECT_NO_THROW(m->verify());
  {
    std::string p = tmp / "m.rdrr/shard-00002.bin";
    std::string data = readFile(p);
    data[data.size() / 2] ^= 1;
    fs::remove(p);
    writeFile(p, data);
  }
  try {
    m->verify();
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("shard-00002.bin"), std::string::npos) << msg;
    EXPECT_NE(msg.find("SHA-256"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace doppler

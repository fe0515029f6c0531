// safetensors reader / writer: the six fixture checkpoints, a sharded checkpoint built here, and one test per
// kind of bad input (each checks that the error names the file and the problem).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/dtype.h"
#include "core/error.h"
#include "format/safetensors.h"

using namespace doppler;
namespace fs = std::filesystem;

namespace {

const std::string kHf = std::string(DOPPLER_TEST_DATA) + "/hf";

// A fresh temporary directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            fmt::format("doppler_st_{}_{}_{}", ::getpid(), info ? info->test_suite_name() : "x",
                        info ? info->name() : "y");
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

void writeBytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}

// Tiny independent writer: u64 header length, the header text verbatim, then `data`.
std::string rawFile(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

std::string f32Bytes(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

// Expects parsing/opening to throw an Error whose message contains every fragment.
template <class F>
void expectError(F&& f, std::initializer_list<std::string> fragments) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    std::string m = e.what();
    for (const auto& frag : fragments) EXPECT_NE(m.find(frag), std::string::npos) << "'" << frag << "' not in: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "multi-line message: " << m;
  }
}

// Writes a one-file checkpoint with the given header/data and expects opening it to fail.
void expectBadFile(const std::string& bytes, std::initializer_list<std::string> fragments) {
  TempDir d;
  std::string p = d.file("bad.safetensors");
  writeBytes(p, bytes);
  std::vector<std::string> frags(fragments);
  frags.push_back(p);
  try {
    SafetensorsFile f(p);
    ADD_FAILURE() << "no error thrown for " << p;
  } catch (const Error& e) {
    std::string m = e.what();
    for (const auto& frag : frags) EXPECT_NE(m.find(frag), std::string::npos) << "'" << frag << "' not in: " << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

uint16_t u16At(std::span<const uint8_t> b, size_t i) {
  uint16_t v;
  std::memcpy(&v, b.data() + 2 * i, 2);
  return v;
}
uint32_t u32At(std::span<const uint8_t> b, size_t i) {
  uint32_t v;
  std::memcpy(&v, b.data() + 4 * i, 4);
  return v;
}

}  // namespace

// ---------------------------------------------------------------- fixtures

TEST(Safetensors, FixtureTensorCountsAndMetadata) {
  const std::pair<const char*, size_t> expected[] = {{"llama", 21},   {"mixtral", 96}, {"qwen3_moe", 174},
                                                     {"gpt_oss", 71}, {"phimoe", 127}, {"deepseek_v3", 139}};
  for (const auto& [arch, n] : expected) {
    SafetensorsFile f(kHf + "/" + arch + "/model.safetensors");
    EXPECT_EQ(f.tensors().size(), n) << arch;
    ASSERT_EQ(f.metadata().count("format"), 1u) << arch;
    EXPECT_EQ(f.metadata().at("format"), "pt");
    // file order: ascending, contiguous ranges from 0
    uint64_t at = 0;
    for (const auto& t : f.tensors()) {
      EXPECT_EQ(t.begin, at) << arch << " " << t.name;
      at = t.end;
    }
  }
}

TEST(Safetensors, LlamaBf16TensorsHaveExpectedBits) {
  SafetensorsFile f(kHf + "/llama/model.safetensors");
  const SafetensorInfo* emb = f.find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dtype, DType::BF16);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{1024, 64}));
  EXPECT_EQ(emb->begin, 131072u);
  EXPECT_EQ(emb->bytes(), 1024u * 64 * 2);
  auto b = f.bytes(*emb);
  ASSERT_EQ(b.size(), 131072u);
  // Expected values read with python3 (struct.unpack('<8H', ...)) from the same file.
  const uint16_t first[8] = {0xbc98, 0xbd8f, 0x3e67, 0x3d66, 0x3e0e, 0xbd8b, 0xbd0f, 0xbccc};
  for (size_t i = 0; i < 8; i++) EXPECT_EQ(u16At(b, i), first[i]) << i;
  EXPECT_EQ(u16At(b, 1024 * 64 - 1), 0x3d85);
  EXPECT_FLOAT_EQ(bf16ToF32(u16At(b, 0)), -0.0185546875f);

  const SafetensorInfo* norm = f.find("model.norm.weight");
  ASSERT_NE(norm, nullptr);
  EXPECT_EQ(norm->shape, (std::vector<int64_t>{64}));
  auto nb = f.bytes(*norm);
  const uint16_t normFirst[8] = {0x3f92, 0x3f96, 0x3f89, 0x3f80, 0x3f90, 0x3f87, 0x3f83, 0x3f4a};
  for (size_t i = 0; i < 8; i++) EXPECT_EQ(u16At(nb, i), normFirst[i]) << i;

  const SafetensorInfo* k = f.find("model.layers.1.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (std::vector<int64_t>{32, 64}));  // [kv_heads * head_dim, hidden]
  EXPECT_EQ(u16At(f.bytes(*k), 0), 0xbcae);
  EXPECT_EQ(u16At(f.bytes(*k), 32 * 64 - 1), 0xbd35);
  EXPECT_EQ(f.find("model.layers.2.self_attn.k_proj.weight"), nullptr);
}

TEST(Safetensors, ReferenceFileF32AndI32) {
  SafetensorsFile f(kHf + "/llama/reference.safetensors");
  EXPECT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.metadata().at("n_prompt"), "34");
  EXPECT_EQ(f.metadata().at("prompt_text"), "The quick brown fox jumps over the lazy dog. def main(): return 0");
  const SafetensorInfo* logits = f.find("logits");
  ASSERT_NE(logits, nullptr);
  EXPECT_EQ(logits->dtype, DType::F32);
  EXPECT_EQ(logits->shape, (std::vector<int64_t>{74, 1024}));
  const uint32_t l0[4] = {0x3f372128, 0xbe3a783d, 0x3f5567d5, 0x3e8a4358};
  for (size_t i = 0; i < 4; i++) EXPECT_EQ(u32At(f.bytes(*logits), i), l0[i]);
  const SafetensorInfo* ids = f.find("prompt_ids");
  ASSERT_NE(ids, nullptr);
  EXPECT_EQ(ids->dtype, DType::I32);
  EXPECT_EQ(ids->shape, (std::vector<int64_t>{34}));
  const int32_t want[10] = {1017, 51, 272, 220, 569, 872, 300, 316, 86, 77};
  for (size_t i = 0; i < 10; i++) EXPECT_EQ(int32_t(u32At(f.bytes(*ids), i)), want[i]) << i;
}

TEST(Safetensors, DeepseekMixedDtypes) {
  SafetensorsFile f(kHf + "/deepseek_v3/model.safetensors");
  const SafetensorInfo* bias = f.find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->dtype, DType::F32);
  EXPECT_EQ(bias->shape, (std::vector<int64_t>{16}));  // [n_routed_experts]
  EXPECT_EQ(bias->begin, 0u);
  EXPECT_EQ(f.tensors().front().name, bias->name);  // ascending begin
  const uint32_t want[4] = {0xbca50000, 0xbcb00000, 0xbdb90000, 0xbd3c0000};
  for (size_t i = 0; i < 4; i++) EXPECT_EQ(u32At(f.bytes(*bias), i), want[i]);
  const SafetensorInfo* kvb = f.find("model.layers.0.self_attn.kv_b_proj.weight");
  ASSERT_NE(kvb, nullptr);
  EXPECT_EQ(kvb->dtype, DType::BF16);
  EXPECT_EQ(kvb->shape, (std::vector<int64_t>{128, 32}));  // [heads * (nope + v), kv_lora_rank]
}

TEST(Safetensors, SingleFileCheckpoint) {
  SafetensorsCheckpoint ck(kHf + "/gpt_oss");
  EXPECT_EQ(ck.files().size(), 1u);
  EXPECT_EQ(ck.names().size(), 71u);
  EXPECT_TRUE(std::is_sorted(ck.names().begin(), ck.names().end()));
  EXPECT_TRUE(ck.has("model.layers.3.mlp.experts.gate_up_proj"));
  EXPECT_FALSE(ck.has("model.layers.4.mlp.experts.gate_up_proj"));
  auto e = ck.get("model.layers.0.mlp.experts.gate_up_proj");
  EXPECT_EQ(e.info->shape, (std::vector<int64_t>{8, 64, 128}));  // [experts, hidden, 2 * intermediate]
  EXPECT_EQ(e.file, ck.files()[0].get());
  expectError([&] { ck.get("no.such.tensor"); }, {"gpt_oss", "'no.such.tensor'"});
}

// ---------------------------------------------------------------- sharded checkpoint

TEST(Safetensors, ShardedCheckpointViaIndex) {
  TempDir d;
  // shard 1: a [2,2] f32 and a [3] i32 with a gap; shard 2: a [2] bf16 and an unlisted tensor
  std::string d1 = f32Bytes({1.0f, 2.0f, 3.0f, 4.0f}) + "PAD!" + std::string("\x07\0\0\0\x08\0\0\0\x09\0\0\0", 12);
  writeBytes(d.file("model-00001-of-00002.safetensors"),
             rawFile(R"({"a.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                     R"("b.ids":{"dtype":"I32","shape":[3],"data_offsets":[20,32]}})",
                     d1));
  writeBytes(d.file("model-00002-of-00002.safetensors"),
             rawFile(R"({"__metadata__":{"format":"pt"},"c.norm":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},)"
                     R"("d.extra":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}})",
                     std::string("\x80\x3f\x00\x40\x2a", 5)));
  writeBytes(d.file("model.safetensors.index.json"),
             R"({"metadata":{"total_size":40},"weight_map":{"a.weight":"model-00001-of-00002.safetensors",)"
             R"("b.ids":"model-00001-of-00002.safetensors","c.norm":"model-00002-of-00002.safetensors"}})");
  SafetensorsCheckpoint ck(d.str());
  EXPECT_EQ(ck.files().size(), 2u);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a.weight", "b.ids", "c.norm"}));  // only the index's tensors
  EXPECT_FALSE(ck.has("d.extra"));

  auto a = ck.get("a.weight");
  EXPECT_NE(a.file->path().find("model-00001-of-00002.safetensors"), std::string::npos);
  EXPECT_EQ(a.info->shape, (std::vector<int64_t>{2, 2}));
  auto ab = a.file->bytes(*a.info);
  float av[4];
  std::memcpy(av, ab.data(), 16);
  EXPECT_EQ(av[0], 1.0f);
  EXPECT_EQ(av[3], 4.0f);

  auto b = ck.get("b.ids");
  EXPECT_EQ(b.file, a.file);
  EXPECT_EQ(b.info->dtype, DType::I32);
  EXPECT_EQ(u32At(b.file->bytes(*b.info), 0), 7u);
  EXPECT_EQ(u32At(b.file->bytes(*b.info), 2), 9u);

  auto c = ck.get("c.norm");
  EXPECT_NE(c.file, a.file);
  EXPECT_EQ(c.info->dtype, DType::BF16);
  EXPECT_EQ(bf16ToF32(u16At(c.file->bytes(*c.info), 0)), 1.0f);
  EXPECT_EQ(bf16ToF32(u16At(c.file->bytes(*c.info), 1)), 2.0f);
  EXPECT_EQ(c.file->metadata().at("format"), "pt");
}

TEST(Safetensors, IndexNamingMissingFile) {
  TempDir d;
  writeBytes(d.file("model-00001-of-00002.safetensors"),
             rawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32Bytes({1.0f})));
  writeBytes(d.file("model.safetensors.index.json"),
             R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  expectError([&] { SafetensorsCheckpoint ck(d.str()); },
              {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "does not exist", "'b'"});
}

TEST(Safetensors, IndexTensorNotInItsFile) {
  TempDir d;
  writeBytes(d.file("shard.safetensors"),
             rawFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f32Bytes({1.0f})));
  writeBytes(d.file("model.safetensors.index.json"),
             R"({"weight_map":{"a":"shard.safetensors","ghost":"shard.safetensors"}})");
  expectError([&] { SafetensorsCheckpoint ck(d.str()); },
              {"model.safetensors.index.json", "'ghost'", "shard.safetensors", "no such tensor"});
}

TEST(Safetensors, IndexOutsideDirectoryRejected) {
  TempDir d;
  writeBytes(d.file("model.safetensors.index.json"), R"({"weight_map":{"a":"../elsewhere.safetensors"}})");
  expectError([&] { SafetensorsCheckpoint ck(d.str()); }, {"model.safetensors.index.json", "not a file inside"});
}

TEST(Safetensors, DirectoryWithoutWeights) {
  TempDir d;
  expectError([&] { SafetensorsCheckpoint ck(d.str()); },
              {d.str(), "no model.safetensors or model.safetensors.index.json"});
}

// ---------------------------------------------------------------- bad inputs, one per problem

TEST(SafetensorsBad, FileShorterThan8Bytes) {
  expectBadFile(std::string("\x05\0\0\0\0", 5), {"5 bytes", "too short"});
  expectBadFile("", {"0 bytes", "too short"});
}

TEST(SafetensorsBad, TruncatedRealFile) {
  std::ifstream in(kHf + "/llama/model.safetensors", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), {});
  ASSERT_EQ(all.size(), 412416u);
  // cut in the middle of the data: the last tensors now run past the end
  expectBadFile(all.substr(0, 300000), {"run past end of file", "model."});
}

TEST(SafetensorsBad, HeaderLengthPastEof) {
  expectBadFile(le64(1000) + R"({"a":{}})", {"header length 1000", "past end of file"});
}

TEST(SafetensorsBad, AbsurdHeaderLength) {
  expectBadFile(le64(0xffffffffffffull) + "{}", {"header length 281474976710655", "absurd"});
}

TEST(SafetensorsBad, InvalidHeaderJson) {
  expectBadFile(rawFile(R"({"a":{"dtype":"F32",)", ""), {"not valid JSON"});
}

TEST(SafetensorsBad, HeaderNotAnObject) { expectBadFile(rawFile("[1,2,3]", ""), {"not a JSON object", "array"}); }

TEST(SafetensorsBad, UnknownDtype) {
  expectBadFile(rawFile(R"({"w":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}})", "abcd"),
                {"tensor 'w'", "unknown dtype 'F17'"});
}

TEST(SafetensorsBad, ShapeSizeMismatch) {
  // F32 [2,3] needs 24 bytes, the range holds 20
  expectBadFile(rawFile(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", std::string(24, '\0')),
                {"tensor 'w'", "F32", "[2, 3]", "needs 24 bytes", "span 20"});
}

TEST(SafetensorsBad, DtypeSizeMismatch) {
  // the same 8 bytes hold 4 BF16 values, not 4 F32 values
  expectBadFile(rawFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}})", std::string(8, '\0')),
                {"tensor 'w'", "F32", "needs 16 bytes", "span 8"});
}

TEST(SafetensorsBad, NegativeOrNonIntegerShape) {
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", ""),
                {"tensor 'w'", "'shape' must be a list of non-negative integers", "-1"});
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "x"),
                {"tensor 'w'", "'shape' must be a list of non-negative integers"});
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":"4","data_offsets":[0,4]}})", "xxxx"),
                {"tensor 'w'", "'shape' must be a list"});
}

TEST(SafetensorsBad, ShapeOverflow) {
  expectBadFile(rawFile(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
                {"tensor 'w'", "overflows"});
}

TEST(SafetensorsBad, BeginAfterEnd) {
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "xxxx"),
                {"tensor 'w'", "begin 4 > end 0"});
}

TEST(SafetensorsBad, RangePastEof) {
  expectBadFile(rawFile(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(12, '\0')),
                {"tensor 'w'", "[0, 16]", "past end of file", "12 bytes"});
}

TEST(SafetensorsBad, OverlappingRanges) {
  expectBadFile(rawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                        std::string(12, '\0')),
                {"'a' [0, 8]", "'b' [4, 12]", "overlap"});
  // a small tensor inside a big one, not adjacent to it in sorted order
  expectBadFile(rawFile(R"({"big":{"dtype":"U8","shape":[100],"data_offsets":[0,100]},)"
                        R"("mid":{"dtype":"U8","shape":[0],"data_offsets":[50,50]},)"
                        R"("late":{"dtype":"U8","shape":[10],"data_offsets":[60,70]}})",
                        std::string(100, '\0')),
                {"'big' [0, 100]", "overlap"});
}

TEST(SafetensorsBad, MetadataValueNotString) {
  expectBadFile(rawFile(R"({"__metadata__":{"format":"pt","step":1000}})", ""),
                {"__metadata__", "'step'", "must be a string"});
}

TEST(SafetensorsBad, DuplicateTensorName) {
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                        "xy"),
                {"duplicate tensor name 'w'"});
}

TEST(SafetensorsBad, MissingOrMalformedOffsets) {
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[1]}})", "x"), {"tensor 'w'", "missing 'data_offsets'"});
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "x"),
                {"tensor 'w'", "'data_offsets' must be a list of 2"});
  expectBadFile(rawFile(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,-1]}})", "x"),
                {"tensor 'w'", "'data_offsets' must be non-negative integers"});
}

TEST(SafetensorsBad, ControlCharactersInNamesStayOnOneLine) {
  expectBadFile(rawFile("{\"bad\\nname\":{\"dtype\":\"Q\",\"shape\":[],\"data_offsets\":[0,0]}}", ""),
                {"'bad\\x0aname'", "unknown dtype"});
}

TEST(SafetensorsBad, RandomMutationsOnlyThrowError) {
  // A cheap, deterministic stand-in for the fuzzer: mutate a valid file's bytes; parsing must either succeed
  // or throw doppler::Error (anything else fails the test by escaping).
  std::string good = rawFile(R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                             R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})",
                             std::string(22, '\x11'));
  std::mt19937 rng(7);
  int ok = 0, errors = 0;
  for (int iter = 0; iter < 3000; iter++) {
    std::string s = good;
    int nmut = 1 + int(rng() % 4);
    for (int m = 0; m < nmut; m++) {
      size_t pos = rng() % s.size();
      switch (rng() % 4) {
        case 0: s[pos] = char(rng()); break;
        case 1: s.erase(pos, 1 + rng() % 4); break;
        case 2: s.insert(pos, 1, "{}[]\",:0-9e"[rng() % 11]); break;
        case 3: s.resize(pos); break;
      }
      if (s.empty()) break;
    }
    try {
      auto h = parseSafetensorsHeader(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "mutant");
      for (const auto& t : h.tensors) ASSERT_LE(h.dataStart + t.end, s.size());
      ok++;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("mutant"), std::string::npos) << e.what();
      errors++;
    }
  }
  EXPECT_GT(errors, 1000);
  EXPECT_GT(ok, 0);
}

// ---------------------------------------------------------------- writer

TEST(SafetensorsWriter, RoundTripWithAlignedHeader) {
  TempDir d;
  std::string p = d.file("w.safetensors");
  const float a[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t b[3] = {0x3f80, 0x4000, 0xc040};
  const uint8_t c[1] = {0x2a};
  writeSafetensors(p,
                   {{"z.first", DType::F32, {2, 3}, {reinterpret_cast<const uint8_t*>(a), sizeof a}},
                    {"a.second", DType::BF16, {3}, {reinterpret_cast<const uint8_t*>(b), sizeof b}},
                    {"empty", DType::F16, {0, 4}, {}},
                    {"m.third", DType::U8, {1}, {c, 1}}},
                   {{"format", "pt"}, {"note", "hi"}});
  std::ifstream in(p, std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), {});
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | uint8_t(raw[size_t(i)]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + 24 + 6 + 1);
  EXPECT_EQ(raw[8], '{');
  size_t close = raw.rfind('}', 8 + n);
  for (size_t i = close + 1; i < 8 + n; i++) EXPECT_EQ(raw[i], ' ');

  SafetensorsFile f(p);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hi");
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "z.first");  // data in the given order
  EXPECT_EQ(f.tensors()[0].begin, 0u);
  const SafetensorInfo* sb = f.find("a.second");
  ASSERT_NE(sb, nullptr);
  EXPECT_EQ(sb->begin, 24u);
  EXPECT_EQ(sb->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(u16At(f.bytes(*sb), 2), 0xc040);
  const SafetensorInfo* e = f.find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->bytes(), 0u);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(f.bytes(*f.find("m.third"))[0], 0x2a);
  float back[6];
  std::memcpy(back, f.bytes(*f.find("z.first")).data(), sizeof back);
  EXPECT_EQ(back[5], 6.0f);
}

TEST(SafetensorsWriter, RejectsBadInput) {
  TempDir d;
  std::string p = d.file("w.safetensors");
  const uint8_t x[4] = {};
  expectError([&] { writeSafetensors(p, {{"t", DType::F32, {2}, {x, 4}}}); },
              {p, "tensor 't'", "needs 8 bytes, got 4"});
  expectError([&] { writeSafetensors(p, {{"t", DType::U8, {4}, {x, 4}}, {"t", DType::U8, {4}, {x, 4}}}); },
              {p, "duplicate tensor 't'"});
  expectError([&] { writeSafetensors(p, {{"__metadata__", DType::U8, {4}, {x, 4}}}); }, {p, "__metadata__"});
  expectError([&] { writeSafetensors(d.file("no/such/dir/w.safetensors"), {}); }, {"cannot open for writing"});
}

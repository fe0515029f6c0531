// `doppler convert / verify / info` through the CLI binary: bad inputs each give exit != 0, exactly one line
// on stderr naming the file and the problem, and no partial output; good inputs convert, verify and describe.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "core/error.h"
#include "core/fs_util.h"
#include "test_util.h"

namespace doppler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string fixture(const std::string& arch) { return test::dataPath("hf/" + arch); }

using Tmp = test::TempDir;
using CliRun = test::CliResult;

CliRun doppler(const std::string& args) { return test::runCli(args); }

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n + (!s.empty() && s.back() != '\n');
}

// A copy of a fixture model we can damage.
std::string copyModel(const Tmp& t, const std::string& arch, const std::string& name = "src") {
  std::string dst = t / name;
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(fixture(arch)))
    if (e.path().filename() != "reference.safetensors") fs::copy_file(e.path(), dst + "/" + e.path().filename().string());
  return dst;
}

// Rewrites a safetensors file with an edited header (data section unchanged).
void editHeader(const std::string& path, const std::function<void(json&)>& f) {
  std::string data = readFile(path);
  uint64_t n;
  std::memcpy(&n, data.data(), 8);
  json h = json::parse(data.substr(8, n));
  f(h);
  std::string hs = h.dump();
  uint64_t m = hs.size();
  std::string out(reinterpret_cast<const char*>(&m), 8);
  out += hs + data.substr(8 + n);
  fs::remove(path);
  writeFile(path, out);
}

// Nothing at OUT and no OUT.tmp-* / OUT.old-* beside it.
void expectNoOutput(const std::string& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  fs::path parent = fs::path(out).parent_path();
  if (!fs::is_directory(parent)) return;
  std::string base = fs::path(out).filename().string();
  for (const auto& e : fs::directory_iterator(parent))
    EXPECT_NE(e.path().filename().string().rfind(base + ".", 0), 0u) << "left behind: " << e.path();
}

// The failure contract: exit != 0, exactly one line on stderr containing every needle, nothing written.
void expectFailure(const CliRun& r, const std::string& out, std::initializer_list<std::string> needles) {
  EXPECT_NE(r.exitCode, 0);
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("doppler: error: ", 0), 0u) << r.err;
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "missing '" << n << "' in: " << r.err;
  if (!out.empty()) expectNoOutput(out);
}

CliRun convert(const std::string& src, const std::string& out, const std::string& extra = "") {
  return doppler("convert " + test::shellQuote(src) + " -o " + test::shellQuote(out) + " " + extra);
}

// ---- bad inputs ----

TEST(ConvertCli, TruncatedSafetensors) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  fs::resize_file(src + "/model.safetensors", fs::file_size(src + "/model.safetensors") / 2);
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors"});
}

TEST(ConvertCli, HeaderLengthPastEof) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  std::string p = src + "/model.safetensors";
  std::string d = readFile(p);
  uint64_t n = d.size() + 1000;
  std::memcpy(d.data(), &n, 8);
  fs::remove(p);
  writeFile(p, d);
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors"});
}

TEST(ConvertCli, InvalidHeaderJson) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  std::string p = src + "/model.safetensors";
  std::string d = readFile(p);
  d[8] = '[';  // "{..." -> "[..." : not valid JSON any more
  fs::remove(p);
  writeFile(p, d);
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors", "JSON"});
}

TEST(ConvertCli, ShapeSizeMismatch) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  editHeader(src + "/model.safetensors", [](json& h) { h["model.norm.weight"]["shape"] = {65}; });
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors", "model.norm.weight"});
}

TEST(ConvertCli, DtypeSizeMismatch) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  editHeader(src + "/model.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "F32"; });
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors", "model.norm.weight"});
}

TEST(ConvertCli, UnknownDtype) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  editHeader(src + "/model.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "Q4"; });
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors", "model.norm.weight"});
}

TEST(ConvertCli, OverlappingRanges) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  editHeader(src + "/model.safetensors", [](json& h) {
    // Two 128-byte norms: point the second at the first one's bytes.
    h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] =
        h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.safetensors", "overlap"});
}

TEST(ConvertCli, IndexNamingAMissingFile) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  fs::rename(src + "/model.safetensors", src + "/model-00001-of-00002.safetensors");
  json idx;
  idx["metadata"] = json::object();
  idx["weight_map"]["model.embed_tokens.weight"] = "model-00001-of-00002.safetensors";
  idx["weight_map"]["lm_head.weight"] = "model-00002-of-00002.safetensors";
  writeFile(src + "/model.safetensors.index.json", idx.dump());
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model-00002-of-00002.safetensors"});
}

TEST(ConvertCli, UnknownArchitecture) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  json c = json::parse(readFile(src + "/config.json"));
  c["model_type"] = "gpt2";
  c["architectures"] = {"GPT2LMHeadModel"};
  fs::remove(src + "/config.json");
  writeFile(src + "/config.json", c.dump());
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"config.json", "gpt2", "llama"});
}

TEST(ConvertCli, UnknownTensorName) {
  Tmp t;
  std::string src = copyModel(t, "llama");
  editHeader(src + "/model.safetensors", [](json& h) {
    h["model.layers.0.mlp.mystery.weight"] = h["model.norm.weight"];
    h.erase("model.norm.weight");
  });
  std::string out = t / "out.rdrr";
  expectFailure(convert(src, out), out, {"model.layers.0.mlp.mystery.weight", "not a known llama weight"});
}

TEST(ConvertCli, NotAModelDirectory) {
  Tmp t;
  fs::create_directories(t / "empty");
  std::string out = t / "out.rdrr";
  expectFailure(convert(t / "empty", out), out, {"empty", "config.json"});
  expectFailure(convert(t / "missing", out), out, {"missing", "no such directory"});
}

TEST(ConvertCli, UnwritableOutputParentIsAFile) {
  Tmp t;
  writeFile(t / "afile", "x");
  std::string out = t / "afile/out.rdrr";
  expectFailure(convert(fixture("llama"), out), "", {"afile", "not a directory"});
  EXPECT_EQ(readFile(t / "afile"), "x");
}

TEST(ConvertCli, UnwritableOutputDirectory) {
  Tmp t;
  fs::create_directories(t / "ro");
  fs::permissions(t / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  std::string out = t / "ro/out.rdrr";
  CliRun r = convert(fixture("llama"), out);
  fs::permissions(t / "ro", fs::perms::owner_all);
  if (r.exitCode == 0) GTEST_SKIP() << "running with privileges that ignore directory permissions (root)";
  expectFailure(r, out, {"ro/out.rdrr", "cannot create"});
}

// The same failure where even root cannot write (CI runs as root): /proc takes no new directories.
TEST(ConvertCli, OutputDirectoryNobodyCanWrite) {
  const std::string out = "/proc/doppler-test-out.rdrr";
  CliRun r = convert(fixture("llama"), out);
  expectFailure(r, out, {"/proc/doppler-test-out.rdrr", "cannot create"});
}

TEST(ConvertCli, RefusesToOverwriteWithoutForce) {
  Tmp t;
  std::string out = t / "m.rdrr";
  ASSERT_EQ(convert(fixture("llama"), out, "-q").exitCode, 0);
  std::string before = readFile(out + "/manifest.json");
  CliRun r = convert(fixture("mixtral"), out, "-q");
  EXPECT_NE(r.exitCode, 0);
  EXPECT_EQ(lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("already exists"), std::string::npos) << r.err;
  EXPECT_EQ(readFile(out + "/manifest.json"), before);
  // --force replaces it.
  CliRun f = convert(fixture("mixtral"), out, "-q --force");
  EXPECT_EQ(f.exitCode, 0) << f.err;
  EXPECT_NE(readFile(out + "/manifest.json"), before);
  EXPECT_NE(readFile(out + "/manifest.json").find("\"architecture\": \"mixtral\""), std::string::npos);
  for (const auto& e : fs::directory_iterator(t.path()))
    EXPECT_EQ(e.path().filename().string(), "m.rdrr") << "left behind: " << e.path();
}

TEST(ConvertCli, BadOptions) {
  Tmp t;
  std::string out = t / "o.rdrr";
  expectFailure(convert(fixture("llama"), out, "--tp 0"), out, {"--tp"});
  expectFailure(convert(fixture("llama"), out, "--layout diagonal"), out, {"--layout", "diagonal"});
  expectFailure(convert(fixture("llama"), out, "--dtype i8"), out, {"--dtype", "i8"});
  expectFailure(convert(fixture("llama"), out, "--shard-size 12Q"), out, {"--shard-size", "12Q"});
  expectFailure(convert(fixture("llama"), out, "--fuse qkv --layout column"), out, {"--fuse", "row"});
  expectFailure(convert(fixture("llama"), out, "--fuse qkv,up"), out, {"--fuse", "up"});
}

// ---- bad RDRR models ----

TEST(VerifyCli, ManifestTensorPastItsShardsEnd) {
  Tmp t;
  std::string m = t / "m.rdrr";
  ASSERT_EQ(convert(fixture("llama"), m, "-q").exitCode, 0);
  json j = json::parse(readFile(m + "/manifest.json"));
  uint64_t shardSize = j["shards"][0]["size"];
  j["tensors"]["output_norm.weight"]["offset"] = shardSize - 64;
  fs::remove(m + "/manifest.json");
  writeFile(m + "/manifest.json", j.dump());
  for (const char* cmd : {"verify", "info"}) {
    CliRun r = doppler(std::string(cmd) + " " + test::shellQuote(m));
    expectFailure(r, "", {"manifest.json", "output_norm.weight", "past the end of shard 0"});
  }
}

TEST(VerifyCli, ShardHashMismatchNamesTheShard) {
  Tmp t;
  std::string m = t / "m.rdrr";
  ASSERT_EQ(convert(fixture("qwen3_moe"), m, "-q --shard-size 256K").exitCode, 0);
  CliRun ok = doppler("verify -q " + test::shellQuote(m));
  EXPECT_EQ(ok.exitCode, 0) << ok.err;
  EXPECT_NE(ok.out.find("OK"), std::string::npos);
  std::string p = m + "/shard-00001.bin";
  ASSERT_TRUE(fs::exists(p));
  std::string d = readFile(p);
  d[100] ^= 0x40;
  fs::remove(p);
  writeFile(p, d);
  CliRun r = doppler("verify -q " + test::shellQuote(m));
  EXPECT_EQ(r.exitCode, 1);
  expectFailure(r, "", {"shard-00001.bin", "SHA-256"});
}

TEST(VerifyCli, TruncatedShardIsNamed) {
  Tmp t;
  std::string m = t / "m.rdrr";
  ASSERT_EQ(convert(fixture("llama"), m, "-q").exitCode, 0);
  fs::resize_file(m + "/shard-00000.bin", 1000);
  expectFailure(doppler("verify -q " + test::shellQuote(m)), "", {"shard-00000.bin", "1000 bytes"});
}

TEST(VerifyCli, NotAModel) {
  Tmp t;
  expectFailure(doppler("verify " + test::shellQuote(t.path())), "", {"manifest.json"});
}

// ---- good paths ----

TEST(ConvertCli, ConvertVerifyInfo) {
  Tmp t;
  std::string m = t / "mixtral.rdrr";
  CliRun c = convert(fixture("mixtral"), m, "--layout column --tp 2 --shard-size 128K");
  ASSERT_EQ(c.exitCode, 0) << c.err;
  EXPECT_NE(c.out.find("converted"), std::string::npos) << c.out;
  CliRun v = doppler("verify -q " + test::shellQuote(m));
  EXPECT_EQ(v.exitCode, 0) << v.err;
  CliRun i = doppler("info " + test::shellQuote(m));
  ASSERT_EQ(i.exitCode, 0) << i.err;
  // Numbers from transformers (the fixture's parameter count) and from the shapes.
  EXPECT_NE(i.out.find("architecture: mixtral"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("parameters:   759744"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("expert bytes: 49152 per expert"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("layout column, tp slices 2"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("shard-00000.bin"), std::string::npos) << i.out;
  // dense = embed + lm_head + 3 layers * (attention 2*64*64 + 2*32*64, router 8*64, 2 norms 64) + final norm
  uint64_t dense = 2 * (1024 * 64 * 2 + 3 * ((2 * 64 * 64 + 2 * 32 * 64) + 8 * 64 + 2 * 64) + 64);
  EXPECT_NE(i.out.find("dense bytes:  " + std::to_string(dense)), std::string::npos) << i.out;
}

TEST(InfoCli, ParameterCountsMatchTransformers) {
  // transformers' num_parameters() for each fixture (tied embeddings counted once). doppler counts every
  // stored element, so deepseek_v3 adds its e_score_correction_bias buffers (2 MoE layers x 16 experts), which
  // transformers registers as buffers, not parameters.
  const std::pair<const char*, uint64_t> want[] = {{"llama", 205120},  {"mixtral", 759744}, {"qwen3_moe", 548384},
                                                   {"gpt_oss", 583024}, {"phimoe", 749568},
                                                   {"deepseek_v3", 422576 + 2 * 16}};
  for (const auto& [arch, params] : want) {
    SCOPED_TRACE(arch);
    CliRun hf = doppler("info " + test::shellQuote(fixture(arch)));
    ASSERT_EQ(hf.exitCode, 0) << hf.err;
    EXPECT_NE(hf.out.find("parameters:   " + std::to_string(params)), std::string::npos) << hf.out;
    EXPECT_NE(hf.out.find(std::string("architecture: ") + arch), std::string::npos) << hf.out;
  }
  Tmp t;
  std::string m = t / "q.rdrr";
  ASSERT_EQ(convert(fixture("qwen3_moe"), m, "-q").exitCode, 0);
  CliRun r = doppler("info " + test::shellQuote(m));
  EXPECT_NE(r.out.find("parameters:   548384"), std::string::npos) << r.out;
  CliRun g = doppler("info " + test::shellQuote(fixture("gpt_oss")));
  EXPECT_NE(g.out.find("experts:      8 per MoE layer, top-2"), std::string::npos) << g.out;
}

TEST(ConvertCli, ProgressOnNonTerminalIsAtMostOneFinalLine) {
  Tmp t;
  CliRun c = convert(fixture("llama"), t / "m.rdrr");
  ASSERT_EQ(c.exitCode, 0) << c.err;
  EXPECT_LE(lines(c.err), 1) << c.err;
  EXPECT_EQ(c.err.find('\r'), std::string::npos);
  if (!c.err.empty()) EXPECT_NE(c.err.find("convert: 100%"), std::string::npos) << c.err;
}

TEST(AtomicDir, FailureLeavesNothingAndCommitPublishes) {
  Tmp t;
  std::string dest = t / "out.rdrr";
  try {
    AtomicDir d(dest, false);
    writeFile(d.path() + "/a.bin", "partial");
    EXPECT_TRUE(fs::exists(d.path() + "/a.bin"));
    throw Error("simulated failure mid-write");
  } catch (const Error&) {
  }
  expectNoOutput(dest);
  {
    AtomicDir d(dest, false);
    writeFile(d.path() + "/a.bin", "complete");
    d.commit();
  }
  EXPECT_EQ(readFile(dest + "/a.bin"), "complete");
  EXPECT_THROW(AtomicDir(dest, false), Error);
  {
    AtomicDir d(dest, true);
    writeFile(d.path() + "/b.bin", "new");
    d.commit();
  }
  EXPECT_FALSE(fs::exists(dest + "/a.bin"));
  EXPECT_EQ(readFile(dest + "/b.bin"), "new");
  for (const auto& e : fs::directory_iterator(t.path())) EXPECT_EQ(e.path().filename().string(), "out.rdrr");
}

}  // namespace
}  // namespace doppler

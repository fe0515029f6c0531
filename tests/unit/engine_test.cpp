// Issue #3: transformers parity through the whole stack (convert -> RDRR -> CPU forward), the run CLI, and
// bad-input handling.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "convert/convert.h"
#include "engine/engine.h"
#include "engine/eval.h"
#include "parity_case.h"
#include "test_util.h"

using namespace doppler;
using doppler::test::runCli;
using doppler::test::shellQuote;
using doppler::test::TempDir;

namespace {

using test::ParityCase;
using test::parityCaseName;

class Parity : public ::testing::TestWithParam<ParityCase> {};

TEST_P(Parity, EvalWithinTolerance) {
  TempDir tmp;
  EngineOptions eo;
  eo.quiet = true;
  auto engine = Engine::open(test::convertParityCase(GetParam(), tmp.path()), eo);
  test::expectParity(test::evalParityCase(*engine, GetParam()), 40);
}

TEST_P(Parity, GreedyPickMatchesLogits) {
  TempDir tmp;
  EngineOptions eo;
  eo.quiet = true;
  auto engine = Engine::open(test::convertParityCase(GetParam(), tmp.path()), eo);
  test::expectGreedyMatchesLogits(*engine, 12);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity,
                         ::testing::Values(ParityCase{"llama", Layout::Row}, ParityCase{"llama", Layout::Column},
                                           ParityCase{"mixtral", Layout::Row}, ParityCase{"mixtral", Layout::Column},
                                           ParityCase{"qwen3_moe", Layout::Row},
                                           ParityCase{"qwen3_moe", Layout::Column}),
                         parityCaseName);

// The embedded default model (real, trained weights) against its transformers reference, through the CLI:
// the Hugging Face dir is converted into the cache on first use.
TEST(EvalCli, TrainedDefaultModelPassesAndConvertsOnce) {
  TempDir cache;
  const std::string model = std::string(DOPPLER_SOURCE_DIR) + "/models/qwen3moe-code-9m";
  auto r = runCli("eval " + shellQuote(model) + " --reference " +
                  shellQuote(test::dataPath("trained/reference.safetensors")) + " --cache-dir " + cache.path());
  EXPECT_EQ(r.exitCode, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("converting"), std::string::npos) << r.err;
  auto again = runCli("eval " + shellQuote(model) + " --reference " +
                      shellQuote(test::dataPath("trained/reference.safetensors")) + " --cache-dir " + cache.path());
  EXPECT_EQ(again.exitCode, 0) << again.err;
  EXPECT_EQ(again.err.find("converting"), std::string::npos) << "converted twice: " << again.err;
}

TEST(EvalCli, FailsAboveTolerance) {
  TempDir tmp;
  auto r = runCli("eval " + shellQuote(test::dataPath("hf/llama")) + " --reference " +
                  shellQuote(test::dataPath("hf/llama/reference.safetensors")) + " --tol 1e-12 --cache-dir " +
                  tmp.path());
  EXPECT_EQ(r.exitCode, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("FAIL"), std::string::npos) << r.out;
}

TEST(RunCli, DefaultModelStreamsSameTextForSameSeed) {
  TempDir cache;
  const std::string args = "run -p 'def fibonacci(n):' -n 24 --seed 7 --cache-dir " + cache.path();
  auto a = runCli(args), b = runCli(args);
  ASSERT_EQ(a.exitCode, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.out.rfind("def fibonacci(n):", 0), 0u) << a.out;
  EXPECT_GT(a.out.size(), std::string("def fibonacci(n):").size() + 10);
  EXPECT_NE(a.err.find("decode:"), std::string::npos) << a.err;
  EXPECT_NE(a.err.find("tok/s"), std::string::npos) << a.err;
  auto greedy = runCli("run -p 'import os' -n 16 --temp 0 --cache-dir " + cache.path());
  auto greedy2 = runCli("run -p 'import os' -n 16 --temp 0 --seed 99 --cache-dir " + cache.path());
  EXPECT_EQ(greedy.out, greedy2.out);
}

// ---- bad input: one clear line on stderr, non-zero exit ----

// The error is the last line of stderr and the only one that says "error" (an earlier line may report a
// one-time conversion of the default model into the cache).
void expectCleanError(const test::CliResult& r, const std::string& needle) {
  EXPECT_NE(r.exitCode, 0);
  EXPECT_LT(r.exitCode, 128) << "crashed: " << r.err;
  auto last = r.err.rfind("doppler: error: ");
  ASSERT_NE(last, std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("error"), last + 9) << r.err;  // no earlier line says "error"
  EXPECT_EQ(test::lineCount(r.err.substr(last)), 1) << r.err;
  EXPECT_NE(r.err.find(needle, last), std::string::npos) << r.err;
}

TEST(RunCli, PromptLongerThanContext) {
  TempDir cache;
  expectCleanError(runCli("run -p 'def a(b, c, d):' --ctx 3 --cache-dir " + cache.path()), "context");
}

TEST(RunCli, EmptyPrompt) {
  TempDir cache;
  expectCleanError(runCli("run -p '' --cache-dir " + cache.path()), "empty");
}

TEST(RunCli, InvalidUtf8Prompt) {
  TempDir cache;
  expectCleanError(runCli("run -p \"$(printf 'ab\\377\\376')\" --cache-dir " + cache.path()), "UTF-8");
}

TEST(RunCli, ModelWithoutTokenizer) {
  TempDir tmp;
  convertHfToRdrr(test::dataPath("hf/llama"), tmp / "m.rdrr", ConvertOptions{});
  std::filesystem::remove(tmp / "m.rdrr/tokenizer.json");
  // the manifest lists tokenizer.json: opening the model names the missing file
  auto r = runCli("run " + shellQuote(tmp / "m.rdrr") + " -p hi");
  expectCleanError(r, "tokenizer.json");
}

TEST(RunCli, WeightOfTheWrongShape) {
  TempDir tmp;
  convertHfToRdrr(test::dataPath("hf/llama"), tmp / "m.rdrr", ConvertOptions{});
  // Same byte size, wrong shape: [64, 64] -> [32, 128] for layer 1's q projection.
  std::string path = tmp / "m.rdrr/manifest.json";
  std::ifstream in(path);
  nlohmann::json m = nlohmann::json::parse(in);
  in.close();
  m["tensors"]["layers.1.attn.q.weight"]["shape"] = {32, 128};
  m["tensors"]["layers.1.attn.q.weight"]["originalShape"] = {32, 128};
  std::ofstream(path) << m.dump(1);
  auto r = runCli("run " + shellQuote(tmp / "m.rdrr") + " -p hi -n 2");
  expectCleanError(r, "layers.1.attn.q.weight");
}

TEST(RunCli, NotAModelDirectory) {
  TempDir tmp;
  expectCleanError(runCli("run " + tmp.path() + " -p hi"), "not a model directory");
  expectCleanError(runCli("run " + tmp.path() + "/nope -p hi"), "no such model directory");
}

}  // namespace

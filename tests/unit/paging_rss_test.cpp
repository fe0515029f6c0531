// Issue #4: a model larger than its --ram budget runs with the process's peak RSS below the budgets plus a small
// stated overhead. A synthetic Mixtral-shaped model (hidden 512, 8 experts of 4.5 MiB, 4 layers: ~151 MB of
// bf16 weights) is evaluated by the CLI in a child process whose ru_maxrss (wait4) is read: with --vram 24M
// --ram 40M (the CPU backend's emulated device tier lives in host RAM too, so both count) the peak RSS stays
// below 24 + 40 + 48 MiB of overhead (binary, libraries, activations, KV cache, the reference file), while the
// resident run of the same model maps and touches all of it. The paged logits equal the resident ones exactly.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cstring>
#include <filesystem>

#include "convert/convert.h"
#include "convert/synthetic.h"
#include "core/fs_util.h"
#include "core/json_util.h"
#include "engine/engine.h"
#include "format/safetensors.h"
#include "test_util.h"

using namespace doppler;
using doppler::test::TempDir;

namespace {

constexpr uint64_t kMiB = uint64_t(1) << 20;

struct ChildRun {
  int exitCode = -1;
  uint64_t maxRssBytes = 0;
  std::string out, err;
};

// Runs the doppler CLI in a child process and reads its peak RSS with wait4.
ChildRun runChild(const std::vector<std::string>& args, const TempDir& tmp) {
  const std::string outPath = tmp / "child.out", errPath = tmp / "child.err";
  pid_t pid = fork();
  if (pid == 0) {
    int o = ::open(outPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(errPath.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> argv;
    std::string bin = DOPPLER_BIN;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  ChildRun r;
  int status = 0;
  struct rusage ru {};
  if (wait4(pid, &status, 0, &ru) == pid) {
    r.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.maxRssBytes = uint64_t(ru.ru_maxrss) * 1024;  // kilobytes on Linux
  }
  r.out = readFile(outPath);
  r.err = readFile(errPath);
  return r;
}

TEST(PagingRss, ModelLargerThanRamBudgetStaysWithinBudgets) {
  TempDir tmp;
  // ~151 MB: 4 layers x 8 experts x 3 x [1536, 512] bf16 = 144 MiB of experts, ~7 MiB dense.
  nlohmann::json cfg = syntheticConfig("mixtral-8x7b", 4, 512);
  cfg["hidden_size"] = 512;
  cfg["intermediate_size"] = 1536;
  cfg["num_attention_heads"] = 8;
  cfg["num_key_value_heads"] = 4;
  cfg["head_dim"] = 64;
  const uint64_t ckptBytes = writeSyntheticCheckpoint(tmp / "hf", cfg, 42, 0.05f);
  ASSERT_GT(ckptBytes, 140 * kMiB);
  ConvertOptions co;
  co.sync = false;
  convertHfToRdrr(tmp / "hf", tmp / "m.rdrr", co);
  std::filesystem::remove_all(tmp / "hf");

  // Reference logits from the resident run in this process (prefill 6 tokens, decode 3), as doppler eval runs them.
  const std::vector<int32_t> ids = {5, 17, 300, 42, 511, 7, 99, 256, 3};
  const int64_t P = 6, N = int64_t(ids.size()), V = 512;
  std::vector<float> logits(size_t(N * V));
  {
    EngineOptions eo;
    eo.quiet = true;
    auto e = Engine::open(tmp / "m.rdrr", eo);
    auto kv = e->newKVCache(N);
    e->model().forward(ids.data(), P, 0, *kv, true, logits.data());
    for (int64_t i = P; i < N; i++) e->model().forward(&ids[size_t(i)], 1, i, *kv, false, logits.data() + i * V);
  }
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + P);
  writeSafetensors(tmp / "ref.safetensors",
                   {{"prompt_ids", DType::I32, {P}, {reinterpret_cast<const uint8_t*>(prompt.data()), size_t(P) * 4}},
                    {"ids", DType::I32, {N}, {reinterpret_cast<const uint8_t*>(ids.data()), size_t(N) * 4}},
                    {"logits", DType::F32, {N, V},
                     {reinterpret_cast<const uint8_t*>(logits.data()), logits.size() * 4}}});

  const uint64_t vram = 24 * kMiB, ram = 40 * kMiB, overhead = 48 * kMiB;
  ChildRun paged = runChild({"eval", tmp / "m.rdrr", "--reference", tmp / "ref.safetensors", "--vram", "24M",
                             "--ram", "40M", "--tol", "1e-30", "--stats-json", tmp / "stats.json"},
                            tmp);
  ASSERT_EQ(paged.exitCode, 0) << paged.out << paged.err;  // tolerance 1e-30: bit-identical to the resident run
  EXPECT_NE(paged.out.find("worst relative error 0.000e+00"), std::string::npos) << paged.out;
  EXPECT_LT(paged.maxRssBytes, vram + ram + overhead)
      << "peak RSS " << paged.maxRssBytes / kMiB << " MiB for a " << ckptBytes / kMiB << " MiB model; stats: "
      << readFile(tmp / "stats.json");
  Json st = parseJson(readFile(tmp / "stats.json"), "stats.json");
  EXPECT_LE(st["tiers"]["device"]["peak_bytes"].get<uint64_t>(), vram);
  EXPECT_LE(st["tiers"]["host"]["peak_bytes"].get<uint64_t>(), ram);
  EXPECT_GT(st["tiers"]["host"]["evictions"].get<uint64_t>(), 0u);  // the experts did not fit in host RAM

  // The resident run of the same model maps and touches every weight.
  ChildRun resident = runChild({"eval", tmp / "m.rdrr", "--reference", tmp / "ref.safetensors", "--tol", "1e-30"}, tmp);
  ASSERT_EQ(resident.exitCode, 0) << resident.out << resident.err;
  EXPECT_GT(resident.maxRssBytes, ckptBytes * 9 / 10);
  std::printf("peak RSS: paged %.1f MiB (budgets %.0f MiB + %.0f MiB overhead allowed), resident %.1f MiB, model %.1f MiB\n",
              double(paged.maxRssBytes) / kMiB, double(vram + ram) / kMiB, double(overhead) / kMiB,
              double(resident.maxRssBytes) / kMiB, double(ckptBytes) / kMiB);
}

}  // namespace

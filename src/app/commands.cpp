#include "app/commands.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "core/error.h"

namespace doppler::app {

namespace {
std::vector<Command>& registry() {
  static std::vector<Command> r;
  return r;
}
}  // namespace

bool registerCommand(Command c) {
  registry().push_back(std::move(c));
  return true;
}

int runMain(int argc, char** argv) {
  CLI::App app{"doppler: run LLMs far larger than the GPU by paging MoE experts across memory tiers\n"
               "(GPU VRAM <-> host RAM <-> disk cache <-> peers)."};
  app.set_version_flag("--version", std::string("doppler ") + DOPPLER_VERSION);
  app.footer(
      "Environment:\n"
      "  DOPPLER_CACHE           cache directory (else $XDG_CACHE_HOME/doppler, else ~/.cache/doppler)\n"
      "  DOPPLER_CUBLAS=0        --backend cuda: prefill matrix products on doppler's own GEMM kernel instead of\n"
      "                          cuBLAS (loaded at run time when libcublas is installed)\n"
      "  DOPPLER_CUDA_GRAPHS=0   --backend cuda: launch each op of a decode step instead of replaying the step as\n"
      "                          a CUDA graph\n"
      "  DOPPLER_CUDA_PDL=0      --backend cuda: chain a step graph's kernels with full dependencies instead of\n"
      "                          programmatic ones (the next kernel no longer starts while one finishes)\n"
      "  DOPPLER_HYBRID_PREDICT=1  --backend cuda with paged experts: also copy predicted experts ahead in hybrid\n"
      "                          execution (off by default: docs/tiers.md)\n"
      "  DOPPLER_HYBRID_JOINT=0  --backend cuda with paged experts: never run an expert jointly (gate/up on the CPU,\n"
      "                          down copied to the GPU); whole experts only");
  app.require_subcommand(1);
  auto cmds = registry();
  std::sort(cmds.begin(), cmds.end(), [](const Command& a, const Command& b) { return a.order < b.order; });
  std::vector<std::pair<CLI::App*, Runner>> runners;
  for (auto& c : cmds) {
    CLI::App* sub = app.add_subcommand(c.name, c.help);
    runners.emplace_back(sub, c.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "doppler: error: %s\n", e.what());
    return 2;
  }
  try {
    for (auto& [sub, run] : runners)
      if (sub->parsed()) return run();
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "doppler: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace doppler::app

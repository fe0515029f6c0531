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

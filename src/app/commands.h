// Subcommand registry. Each cmd_*.cpp defines one subcommand:
//
//   static const bool kRegistered = registerCommand({"info", "Print what a model holds", 30,
//     [](CLI::App& sub) -> Runner {
//       auto opts = std::make_shared<Opts>();
//       sub.add_option("MODEL", opts->model, "...")->required();
//       return [opts] { ...; return 0; };
//     }});
//
// runMain parses argv, runs the chosen subcommand and turns a doppler::Error into one line on stderr
// ("doppler: error: ...") and exit code 1. CLI usage errors exit 2 (CLI11's convention is kept).
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace doppler::app {

using Runner = std::function<int()>;
struct Command {
  std::string name;
  std::string help;
  int order;  // position in --help
  std::function<Runner(CLI::App&)> setup;
};

bool registerCommand(Command c);
int runMain(int argc, char** argv);

}  // namespace doppler::app

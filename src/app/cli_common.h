// Options shared by the commands that open a model.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fmt/format.h>
#include <string>
#include <utility>

#include "core/fs_util.h"
#include "core/size.h"
#include "core/trace.h"
#include "app/swarm_cli.h"
#include "engine/engine.h"

namespace doppler::app {

// Weight tiers and run statistics (issue #4, docs/tiers.md).
inline void addTierOptions(CLI::App& sub, EngineOptions& o) {
  sub.add_option_function<std::string>(
      "--vram", [&o](const std::string& s) { o.vram = parseSize(s, "--vram"); },
      "Device-tier budget for weights, e.g. 8G; with --vram or --ram weights are paged (routed experts, and whole "
      "layers when the dense weights do not fit) (default: all resident)");
  sub.add_option_function<std::string>(
      "--ram", [&o](const std::string& s) { o.ram = parseSize(s, "--ram"); },
      "Host-RAM budget for weights, e.g. 32G; the rest is read from disk on demand (default: usable RAM minus "
      "headroom)");
  sub.add_flag("!--no-hybrid", o.hybrid,
               "With --backend cuda and paged experts: copy every missed expert to the GPU instead of letting the CPU "
               "compute some of them from host RAM (hybrid execution, the default)");
  sub.add_flag("--stats", o.printStats, "Print tier/prefetch/speed statistics on stderr after the command");
  sub.add_option("--stats-json", o.statsJson, "Write the statistics as JSON to PATH after the command");
  sub.add_option("--trace", o.tracePath,
                 "Write a timeline of the run to PATH (Chrome trace JSON; open it in ui.perfetto.dev): forward passes, "
                 "layers, waits for the GPU and for weights, disk reads, copies (with their time on the GPU's copy "
                 "engine), hybrid splits and CPU experts");
}

// --trace PATH: records from construction; write() ends the trace and writes the file (Error when it cannot).
// A command that fails before write() still leaves its timeline, written best-effort by the destructor.
class TraceFile {
 public:
  explicit TraceFile(std::string path) : path_(std::move(path)) {
    if (!path_.empty()) trace::start();
  }
  ~TraceFile() {
    if (path_.empty()) return;
    try {
      write();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "doppler: %s\n", e.what());
    }
  }
  TraceFile(const TraceFile&) = delete;
  TraceFile& operator=(const TraceFile&) = delete;
  void write() {
    if (path_.empty()) return;
    const std::string path = std::exchange(path_, std::string());
    writeFile(path, trace::stop(), /*sync=*/false);
  }

 private:
  std::string path_;
};

// The statistics as text: the tier table, then one line per other section (so new sections print too).
inline std::string formatStats(const nlohmann::json& j) {
  std::string out;
  auto num = [](const nlohmann::json& v) -> std::string {
    if (v.is_number_float()) return fmt::format("{:.4g}", v.get<double>());
    if (v.is_string()) return v.get<std::string>();
    return v.dump();
  };
  if (j.contains("tiers") && j["tiers"].is_object()) {
    out += fmt::format("{:<8}{:>12}{:>12}{:>12}{:>9}{:>9}{:>12}{:>12}{:>10}\n", "tier", "budget", "peak", "resident",
                       "hits", "misses", "in", "out", "evicted");
    for (const auto& [name, t] : j["tiers"].items())
      out += fmt::format("{:<8}{:>12}{:>12}{:>12}{:>9}{:>9}{:>12}{:>12}{:>10}\n", name,
                         formatSize(t.value("budget_bytes", uint64_t(0))), formatSize(t.value("peak_bytes", uint64_t(0))),
                         formatSize(t.value("resident_bytes", uint64_t(0))), t.value("hits", uint64_t(0)),
                         t.value("misses", uint64_t(0)), formatSize(t.value("bytes_in", uint64_t(0))),
                         formatSize(t.value("bytes_out", uint64_t(0))), t.value("evictions", uint64_t(0)));
  }
  for (const auto& [key, v] : j.items()) {
    if (key == "tiers") continue;
    if (v.is_object()) {
      std::string line;
      for (const auto& [k, x] : v.items()) line += fmt::format("{}{} {}", line.empty() ? "" : ", ", k, num(x));
      out += fmt::format("{}: {}\n", key, line);
    } else {
      out += fmt::format("{}: {}\n", key, num(v));
    }
  }
  return out;
}

// After a command: --stats prints the engine's statistics on stderr, --stats-json writes them.
inline void reportStats(const Engine& e, const EngineOptions& o) {
  if (!o.printStats && o.statsJson.empty()) return;
  nlohmann::json j = e.stats();
  if (o.printStats) {
    std::fflush(stdout);
    std::fputs(formatStats(j).c_str(), stderr);
  }
  if (!o.statsJson.empty()) writeFile(o.statsJson, j.dump(2) + "\n", /*sync=*/false);
}

inline void addEngineOptions(CLI::App& sub, EngineOptions& o) {
  sub.add_option("--cache-dir", o.cacheDir,
                 "Cache directory (default: $DOPPLER_CACHE, else $XDG_CACHE_HOME/doppler, else ~/.cache/doppler)");
  sub.add_option("-t,--threads", o.threads, "CPU threads (default: one per core)")->check(CLI::NonNegativeNumber);
  sub.add_option("--backend", o.backend,
                 "Where the model runs: cpu, cuda (the GPU; weights in its memory, --vram limits them) or auto "
                 "(cuda when a GPU is usable, else cpu) (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  // KV cache (docs/kv-cache.md)
  sub.add_option_function<std::string>(
      "--kv-vram", [&o](const std::string& s) { o.kvVram = parseSize(s, "--kv-vram"); },
      "Device-tier budget for KV blocks, e.g. 512M (default: unlimited); older blocks spill to --kv-ram");
  sub.add_option_function<std::string>(
      "--kv-ram", [&o](const std::string& s) { o.kvRam = parseSize(s, "--kv-ram"); },
      "Host-RAM budget for spilled KV blocks, e.g. 8G (default: unlimited; 0 = no spill)");
  sub.add_option_function<std::string>(
      "--kv-dtype", [&o](const std::string& s) { o.kvDtype = parseKVDType(s, "--kv-dtype"); },
      "KV storage type: f32, f16, bf16 or int8 (one scale per token and head) (default f32)");
  sub.add_option_function<std::string>(
      "--kv-compress", [&o](const std::string& s) { o.kvCompress = parseKVCompress(s, "--kv-compress"); },
      "Store all full KV blocks in --kv-dtype, or only the spilled ones: all|spilled (default all)");
  sub.add_option("--kv-block", o.kvBlock, "Tokens per KV block (default 16)")->check(CLI::Range(1, 65536));
  addTierOptions(sub, o);
  // The swarm tier for models served by the store (docs/swarm.md).
  addSwarmOptions(sub, o.swarm.swarm, true);
  sub.add_flag("--no-origin", o.swarm.noOrigin, "With --peer: never fetch shard bytes from the model's origin");
}

}  // namespace doppler::app

// Options shared by the commands that open a model.
#pragma once
#include <CLI/CLI.hpp>

#include "engine/engine.h"

namespace doppler::app {

inline void addEngineOptions(CLI::App& sub, EngineOptions& o) {
  sub.add_option("--cache-dir", o.cacheDir,
                 "Cache directory (default: $DOPPLER_CACHE, else $XDG_CACHE_HOME/doppler, else ~/.cache/doppler)");
  sub.add_option("-t,--threads", o.threads, "CPU threads (default: one per core)")->check(CLI::NonNegativeNumber);
}

}  // namespace doppler::app

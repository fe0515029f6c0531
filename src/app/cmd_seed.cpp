// doppler seed MODEL [--listen HOST:PORT] [--peer HOST:PORT]... [--upload-limit R] [--max-connections N] [--stats-json P]
// Shares a model (a local RDRR directory, or a cached model: id, id@rev, or the URL it was pulled from) with the
// swarm until SIGINT/SIGTERM (docs/swarm.md).
#include <csignal>
#include <cstdio>

#include "app/commands.h"
#include "app/swarm_cli.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "engine/model_source.h"
#include "storage/store.h"
#include "storage/swarm.h"

namespace doppler::app {

namespace {
volatile std::sig_atomic_t gStop = 0;
void onSignal(int) { gStop = 1; }

struct Opts {
  std::string model, cacheDir, statsJson;
  bool stats = false;
  SwarmOptions swarm;
  Opts() { swarm.listen = "127.0.0.1:6881"; }
};

const bool kRegistered = registerCommand(
    {"seed", "Share a model with peers (BitTorrent) until stopped", 42, [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("MODEL", o->model,
                      "An RDRR directory, or a cached model (ID, ID@REV, or the URL it was pulled from)")
           ->required();
       sub.add_option("--cache-dir", o->cacheDir,
                      "Cache directory (default: $DOPPLER_CACHE, else $XDG_CACHE_HOME/doppler, else ~/.cache/doppler)");
       addSwarmOptions(sub, o->swarm, false);
       sub.add_flag("--stats", o->stats, "Print upload statistics on stderr when stopped");
       sub.add_option("--stats-json", o->statsJson, "Write the statistics as JSON to PATH when stopped");
       return [o] {
         std::string dir;
         ModelLease lease;
         if (isDirectory(o->model) || (isRegularFile(o->model) && baseName(o->model) == kRdrrManifestName)) {
           dir = isDirectory(o->model) ? o->model : parentDir(o->model);
           check(isRegularFile(joinPath(dir, kRdrrManifestName)), "{}: not an RDRR directory (no {})", dir,
                 kRdrrManifestName);
         } else {
           Store probe(cacheRoot(o->cacheDir), true, false);
           std::optional<ModelRef> ref;
           if (probe.exists()) ref = probe.find(o->model);
           check(ref.has_value(), "{}: no such RDRR directory, and no model '{}' in the cache ({})", o->model, o->model,
                 probe.dir());
           Store store(cacheRoot(o->cacheDir));
           lease = store.lease(*ref);  // gc leaves it alone while it is shared
           dir = ref->dir;
         }
         ModelTorrent t = modelTorrentOf(dir, true);
         struct sigaction sa {};
         sa.sa_handler = onSignal;
         sigemptyset(&sa.sa_mask);
         ::sigaction(SIGINT, &sa, nullptr);
         ::sigaction(SIGTERM, &sa, nullptr);
         SwarmStats st;
         seedModel(
             dir, t, o->swarm, [] { return gStop != 0; },
             [&](const std::string& listen, int have, int total) {
               std::printf("seeding %s (%d/%d pieces) on %s\ninfo-hash %s\nmagnet %s\n", dir.c_str(), have, total,
                           listen.c_str(), t.infoHashV2.c_str(), t.magnet().c_str());
               std::fflush(stdout);
             },
             &st);
         std::printf("stopped: uploaded %s to %zu peer connection(s)\n", formatSize(st.bytesUploaded).c_str(),
                     st.peers.size());
         if (o->stats) std::fputs(formatSwarmStats(st).c_str(), stderr);
         if (!o->statsJson.empty()) writeFile(o->statsJson, nlohmann::json{{"swarm", st.toJson()}}.dump(2) + "\n", false);
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app

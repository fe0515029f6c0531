// doppler pull SOURCE [--cache-dir DIR] [--pin] [--max SIZE] [--timeout S] [--retries N] [-q]
//              [--peer HOST:PORT]... [--no-origin] [--listen HOST:PORT] [--upload-limit R] [--download-limit R]
//              [--linger S] [--stats] [--stats-json PATH]
// Downloads a model (an http(s) URL of its manifest, a local RDRR directory, a magnet link / info-hash or a
// .torrent) into the shard store with a progress bar on a terminal (plain lines otherwise); with peers the files
// come from the swarm first, the origin after (docs/cache.md, docs/swarm.md).
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "app/commands.h"
#include "app/swarm_cli.h"
#include "core/fs_util.h"
#include "core/error.h"
#include "core/size.h"
#include "engine/model_source.h"
#include "storage/store.h"
#include "storage/swarm.h"

namespace doppler::app {

namespace {
volatile std::sig_atomic_t gStop = 0;
void onSignal(int) { gStop = 1; }

struct Opts {
  std::string source, cacheDir, max;
  bool pin = false, quiet = false;
  double timeout = -1, connectTimeout = -1, retryDelay = -1;
  int retries = -1;
  SwarmOptions swarm;
  bool noOrigin = false, stats = false;
  double linger = 0;
  std::string statsJson;
};

const bool kRegistered = registerCommand(
    {"pull", "Download a model (http(s) URL of its manifest, or an RDRR dir) into the cache", 40,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("SOURCE", o->source,
                      "http(s) URL of a manifest.json (or of its directory), a local RDRR directory, a magnet link or "
                      "info-hash, or a .torrent file")
           ->required();
       sub.add_option("--cache-dir", o->cacheDir,
                      "Cache directory (default: $DOPPLER_CACHE, else $XDG_CACHE_HOME/doppler, else ~/.cache/doppler)");
       sub.add_flag("--pin", o->pin, "Pin the model: gc never evicts it");
       sub.add_option("--max", o->max,
                      "Cache budget after the pull, e.g. 20G: evict least recently used models' shards (default: "
                      "$DOPPLER_CACHE_MAX, else no limit)");
       sub.add_option("--timeout", o->timeout,
                      "Seconds without data before an attempt is retried (default 30, or $DOPPLER_HTTP_TIMEOUT)")
           ->check(CLI::PositiveNumber);
       sub.add_option("--connect-timeout", o->connectTimeout, "Seconds to connect (default 15)")
           ->check(CLI::PositiveNumber);
       sub.add_option("--retries", o->retries, "Retries after a transient failure (default 5)")
           ->check(CLI::NonNegativeNumber);
       sub.add_option("--retry-delay", o->retryDelay, "Seconds before the first retry, doubling (default 0.5)")
           ->check(CLI::NonNegativeNumber);
       sub.add_flag("-q,--quiet", o->quiet, "No progress output");
       addSwarmOptions(sub, o->swarm, true);
       sub.add_flag("--no-origin", o->noOrigin,
                    "Never fetch shard bytes from the origin: peers only (a URL SOURCE still provides the manifest "
                    "and swarm.torrent)");
       sub.add_option("--linger", o->linger, "Keep sharing with peers for S seconds after the pull")
           ->check(CLI::NonNegativeNumber);
       sub.add_flag("--stats", o->stats, "Print where the bytes came from (cache, origin, each peer) on stderr");
       sub.add_option("--stats-json", o->statsJson, "Write those statistics as JSON to PATH");
       return [o] {
         FetchOptions f = FetchOptions::fromEnvironment();
         if (o->timeout > 0) f.stallTimeout = o->timeout;
         if (o->connectTimeout > 0) f.connectTimeout = o->connectTimeout;
         if (o->retries >= 0) f.retries = o->retries;
         if (o->retryDelay >= 0) f.retryDelay = o->retryDelay;
         std::optional<uint64_t> max;
         if (!o->max.empty()) max = parseSize(o->max, "--max");
         else if (const char* e = std::getenv("DOPPLER_CACHE_MAX"); e && *e) max = parseSize(e, "DOPPLER_CACHE_MAX");

         Store store(cacheRoot(o->cacheDir));
         auto src = openPullSource(o->source, o->swarm, o->noOrigin, f, joinPath(store.dir(), "swarm"), o->quiet);
         auto* swarm = dynamic_cast<SwarmSource*>(src.get());
         std::unique_ptr<ProgressBar> bar;
         if (!o->quiet) bar = std::make_unique<ProgressBar>("pull", 0);
         PullStats st;
         ModelLease lease = store.pull(*src, bar.get(), &st);
         if (bar) bar->finish();
         if (o->pin) store.setPinned(lease.ref.name(), true);
         std::printf("pulled %s into %s: %d files, %s; fetched %d (%s) in %.2f s (%s), %d already cached%s\n",
                     lease.ref.name().c_str(), lease.ref.dir.c_str(), st.files, formatSize(st.bytesTotal).c_str(),
                     st.fetched, formatSize(st.bytesFetched).c_str(), st.seconds,
                     ProgressBar::formatRate(st.bytesFetched, st.seconds).c_str(), st.files - st.fetched,
                     st.healed ? fmt::format(", {} healed (failed verification, quarantined)", st.healed).c_str() : "");
         std::fflush(stdout);
         if (swarm) {
           // Keep the torrent beside the manifest: `doppler seed` of this model then needs no re-hash.
           std::string side = joinPath(lease.ref.dir, kSwarmTorrentName);
           if (!isRegularFile(side) && !swarm->torrentBytes().empty()) {
             try {
               writeFile(side + ".tmp", swarm->torrentBytes(), false);
               std::rename((side + ".tmp").c_str(), side.c_str());
             } catch (const Error&) {
             }
           }
           if (o->linger > 0) {
             struct sigaction sa {};
             sa.sa_handler = onSignal;
             sigemptyset(&sa.sa_mask);
             ::sigaction(SIGINT, &sa, nullptr);
             ::sigaction(SIGTERM, &sa, nullptr);
             std::fprintf(stderr, "swarm: sharing for %.0f s (SIGINT/SIGTERM stops)\n", o->linger);
             swarm->linger(o->linger, [] { return gStop != 0; });
           }
         }
         if (o->stats || !o->statsJson.empty()) {
           nlohmann::json j = {{"files", st.files},
                               {"files_fetched", st.fetched},
                               {"bytes_total", st.bytesTotal},
                               {"bytes_fetched", st.bytesFetched},
                               {"bytes_from_cache", st.bytesTotal - std::min(st.bytesTotal, st.bytesFetched)},
                               {"seconds", st.seconds}};
           nlohmann::json all = {{"pull", j}};
           if (swarm) all["swarm"] = swarm->stats().toJson();
           else all["pull"]["bytes_from_origin"] = st.bytesFetched;
           if (o->stats) {
             std::fflush(stdout);
             std::fprintf(stderr, "from cache %s, fetched %s\n", formatSize(j["bytes_from_cache"].get<uint64_t>()).c_str(),
                          formatSize(st.bytesFetched).c_str());
             if (swarm) std::fputs(formatSwarmStats(swarm->stats()).c_str(), stderr);
           }
           if (!o->statsJson.empty()) writeFile(o->statsJson, all.dump(2) + "\n", false);
         }
         if (max) {
           GcReport g = store.gc(max);
           std::printf("cache budget %s: evicted %d blobs (%s), %s in the cache\n", formatSize(*max).c_str(), g.evicted,
                       formatSize(g.evictedBytes).c_str(), formatSize(g.after).c_str());
         }
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app

// doppler pull SOURCE [--cache-dir DIR] [--pin] [--max SIZE] [--timeout S] [--retries N] [-q]
// Downloads a model (an http(s) URL of its manifest, or a local RDRR directory) into the shard store with a
// progress bar on a terminal (plain lines otherwise); docs/cache.md.
#include <cstdio>
#include <cstdlib>

#include "app/commands.h"
#include "core/error.h"
#include "core/size.h"
#include "engine/model_source.h"
#include "storage/store.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string source, cacheDir, max;
  bool pin = false, quiet = false;
  double timeout = -1, connectTimeout = -1, retryDelay = -1;
  int retries = -1;
};

const bool kRegistered = registerCommand(
    {"pull", "Download a model (http(s) URL of its manifest, or an RDRR dir) into the cache", 40,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("SOURCE", o->source,
                      "http(s) URL of a manifest.json (or of its directory), or a local RDRR directory")
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
         auto src = openSource(o->source, f);
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

// doppler cache ls | verify | gc [--max SIZE] | rm MODEL | pin MODEL | unpin MODEL   (docs/cache.md)
#include <cstdio>
#include <ctime>

#include "app/commands.h"
#include "core/error.h"
#include "core/size.h"
#include "engine/model_source.h"
#include "storage/store.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string cacheDir, model, max;
  bool quiet = false;
};

std::string ago(double t) {
  if (t <= 0) return "-";
  double s = double(std::time(nullptr)) - t;
  if (s < 120) return fmt::format("{:.0f}s ago", std::max(0.0, s));
  if (s < 7200) return fmt::format("{:.0f}m ago", s / 60);
  if (s < 172800) return fmt::format("{:.0f}h ago", s / 3600);
  return fmt::format("{:.0f}d ago", s / 86400);
}

const bool kRegistered = registerCommand(
    {"cache", "List, verify, evict or remove cached models (ls | verify | gc | rm | pin | unpin)", 41,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.require_subcommand(1);
       auto cacheOpt = [o](CLI::App* c) {
         c->add_option("--cache-dir", o->cacheDir,
                       "Cache directory (default: $DOPPLER_CACHE, else $XDG_CACHE_HOME/doppler, else ~/.cache/doppler)");
       };
       auto* ls = sub.add_subcommand("ls", "List cached models: revision, files present, size, pinned/in use, source");
       auto* verify = sub.add_subcommand("verify", "Re-hash every cached shard; exit 1 naming any corrupt one "
                                                   "(it is quarantined and fetched again on the next use)");
       verify->add_flag("-q,--quiet", o->quiet, "No progress output");
       auto* gc = sub.add_subcommand("gc", "Remove partial downloads, orphans and the quarantine; with --max, evict "
                                           "least recently used shards (never of a model in use or pinned)");
       gc->add_option("--max", o->max, "Budget for the cache's shards, e.g. 20G");
       auto* rm = sub.add_subcommand("rm", "Remove a model (ID: every revision; ID@REV: one) and its unshared shards");
       rm->add_option("MODEL", o->model, "Model id or id@revision (see `doppler cache ls`)")->required();
       auto* pin = sub.add_subcommand("pin", "Pin a model: gc never evicts it");
       pin->add_option("MODEL", o->model, "Model id or id@revision")->required();
       auto* unpin = sub.add_subcommand("unpin", "Unpin a model");
       unpin->add_option("MODEL", o->model, "Model id or id@revision")->required();
       for (auto* c : {ls, verify, gc, rm, pin, unpin}) cacheOpt(c);
       return [o, ls, verify, gc, rm, pin, unpin] {
         Store store(cacheRoot(o->cacheDir));
         if (ls->parsed()) {
           auto models = store.list();
           if (models.empty()) {
             std::printf("no models in %s\n", store.dir().c_str());
             return 0;
           }
           std::printf("%-40s %-9s %-22s %-8s %-10s %s\n", "MODEL", "FILES", "SIZE", "FLAGS", "USED", "SOURCE");
           for (const auto& m : models) {
             std::string flags = std::string(m.pinned ? "pinned" : "") + (m.inUse ? (m.pinned ? ",in-use" : "in-use") : "");
             std::printf("%-40s %-9s %-22s %-8s %-10s %s\n", m.ref.name().c_str(),
                         fmt::format("{}/{}", m.present, m.files).c_str(),
                         fmt::format("{} / {}", formatSize(m.presentBytes), formatSize(m.bytes)).c_str(),
                         flags.empty() ? "-" : flags.c_str(), ago(m.lastUsed).c_str(), m.source.c_str());
           }
           return 0;
         }
         if (verify->parsed()) {
           std::unique_ptr<ProgressBar> bar;
           if (!o->quiet) bar = std::make_unique<ProgressBar>("verify", 0);
           VerifyReport r = store.verify(bar.get());
           if (bar) bar->finish();
           for (const auto& m : r.missing) std::printf("missing: %s\n", m.c_str());
           for (const auto& b : r.bad) std::printf("CORRUPT: %s\n", b.c_str());
           std::printf("%s: %llu blobs (%s) checked, %zu corrupt, %zu files not cached\n",
                       r.bad.empty() ? "OK" : "FAIL", (unsigned long long)r.blobs, formatSize(r.bytes).c_str(),
                       r.bad.size(), r.missing.size());
           return r.bad.empty() ? 0 : 1;
         }
         if (gc->parsed()) {
           std::optional<uint64_t> max;
           if (!o->max.empty()) max = parseSize(o->max, "--max");
           GcReport r = store.gc(max);
           std::printf("gc: %s -> %s; evicted %d blobs (%s); removed %d partial downloads, %d temp dirs; %s in use "
                       "or pinned\n",
                       formatSize(r.before).c_str(), formatSize(r.after).c_str(), r.evicted,
                       formatSize(r.evictedBytes).c_str(), r.removedPartials, r.removedTemp,
                       formatSize(r.protectedBytes).c_str());
           if (max && r.after > *max) {
             std::printf("gc: still above %s: the rest belongs to models in use or pinned\n", formatSize(*max).c_str());
             return 1;
           }
           return 0;
         }
         if (rm->parsed()) {
           for (const auto& ref : store.remove(o->model)) std::printf("removed %s\n", ref.name().c_str());
           return 0;
         }
         store.setPinned(o->model, pin->parsed());
         std::printf("%s %s\n", pin->parsed() ? "pinned" : "unpinned", o->model.c_str());
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app

// doppler verify MODEL: re-hash every shard and tokenizer file, check every tensor range.
#include <cstdio>

#include "app/commands.h"
#include "core/progress.h"
#include "core/size.h"
#include "format/rdrr_reader.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string model;
  bool quiet = false;
};

const bool kRegistered = registerCommand(
    {"verify", "Re-hash every shard of an RDRR model and check every tensor range", 21,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("MODEL", o->model, "RDRR model directory")->required();
       sub.add_flag("-q,--quiet", o->quiet, "No progress output");
       return [o] {
         auto m = RdrrModel::open(o->model);
         std::unique_ptr<ProgressBar> bar;
         if (!o->quiet) bar = std::make_unique<ProgressBar>("verify", 0);
         m->verify(bar.get());
         if (bar) bar->finish();
         uint64_t bytes = 0;
         for (const auto& s : m->manifest().shards) bytes += s.size;
         std::printf("%s: OK (%zu shards, %s, %zu tensors, %zu tokenizer files)\n", o->model.c_str(),
                     m->manifest().shards.size(), formatSize(bytes).c_str(), m->manifest().tensors.size(),
                     m->manifest().tokenizerFiles.size());
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app

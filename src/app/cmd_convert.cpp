// doppler convert SRC -o OUT.rdrr [--shard-size 64M] [--layout row|column] [--tp N]
//                 [--dtype keep|bf16|f16|f32] [--fuse qkv,gate_up] [--force] [--model-id ID] [-q]
#include <cstdio>

#include "app/commands.h"
#include "convert/convert.h"
#include "core/error.h"
#include "core/size.h"

namespace doppler::app {

namespace {
struct Opts {
  std::string src, out, shardSize = "64M", layout = "row", dtype = "keep", fuse, modelId;
  int tp = 1;
  bool force = false, quiet = false;
};

ConvertOptions toOptions(const Opts& o) {
  ConvertOptions c;
  c.shardSize = parseSize(o.shardSize, "--shard-size");
  if (o.layout == "row") c.layout = Layout::Row;
  else if (o.layout == "column") c.layout = Layout::Column;
  else fail("--layout: '{}' is not row or column", o.layout);
  c.tp = o.tp;
  if (o.dtype != "keep") {
    auto d = parseDTypeName(o.dtype);
    check(d && (*d == DType::BF16 || *d == DType::F16 || *d == DType::F32),
          "--dtype: '{}' is not keep, bf16, f16 or f32", o.dtype);
    c.dtype = *d;
  }
  parseFuseList(o.fuse, c);
  c.force = o.force;
  c.modelId = o.modelId;
  checkConvertOptions(c);
  return c;
}

const bool kRegistered = registerCommand(
    {"convert", "Convert a Hugging Face checkpoint directory into an RDRR model directory", 20,
     [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       sub.add_option("SRC", o->src, "Hugging Face directory (config.json + safetensors)")->required();
       sub.add_option("-o,--output", o->out, "Output RDRR directory (e.g. model.rdrr)")->required();
       sub.add_option("--shard-size", o->shardSize, "Target shard size (default 64M; K/M/G/T suffixes)");
       sub.add_option("--layout", o->layout, "Layout of weight matrices: row | column (default row)");
       sub.add_option("--tp", o->tp, "Store each sliceable matrix as N column slices (default 1)");
       sub.add_option("--dtype", o->dtype, "keep | bf16 | f16 | f32 (float tensors; default keep)");
       sub.add_option("--fuse", o->fuse, "Fuse tensors: comma-separated qkv, gate_up (row layout, --tp 1)");
       sub.add_option("--model-id", o->modelId, "Model id recorded in the manifest (default: SRC's name)");
       sub.add_flag("--force", o->force, "Replace OUT if it exists");
       sub.add_flag("-q,--quiet", o->quiet, "No progress output");
       return [o] {
         ConvertOptions c = toOptions(*o);
         std::unique_ptr<ProgressBar> bar;
         if (!o->quiet) bar = std::make_unique<ProgressBar>("convert", 0);
         ConvertResult r = convertHfToRdrr(o->src, o->out, c, bar.get());
         for (const auto& n : r.notes) std::printf("note: %s\n", n.c_str());
         std::printf("converted %s -> %s: %zu tensors, %zu shards, %s in %.2f s (%s/s)\n", o->src.c_str(),
                     o->out.c_str(), r.manifest.tensors.size(), r.manifest.shards.size(),
                     formatSize(r.tensorBytes).c_str(), r.seconds,
                     formatSize(uint64_t(double(r.tensorBytes) / std::max(r.seconds, 1e-9))).c_str());
         return 0;
       };
     }});
}  // namespace

}  // namespace doppler::app

// doppler info MODEL: what an RDRR model holds (architecture, parameters, dense and per-expert bytes, shards);
// for a Hugging Face directory, its config summary and parameter count.
#include <cstdio>
#include <memory>
#include <optional>
#include <set>

#include "app/commands.h"
#include "convert/naming.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "core/size.h"
#include "format/hf_config.h"
#include "format/rdrr_reader.h"
#include "format/safetensors.h"
#include "backend/backend.h"
#include "engine/model_source.h"
#include "loader/placement.h"
#include "memory/budget.h"

namespace doppler::app {

namespace {

std::string countText(uint64_t n) {
  if (n >= 1000000000ull) return fmt::format("{:.2f} B", double(n) / 1e9);
  if (n >= 1000000ull) return fmt::format("{:.2f} M", double(n) / 1e6);
  if (n >= 1000ull) return fmt::format("{:.1f} K", double(n) / 1e3);
  return std::to_string(n);
}

void printConfig(const ModelConfig& c) {
  std::printf("layers:       %lld, hidden %lld, heads %lld (kv %lld, head_dim %lld), vocab %lld\n",
              (long long)c.numLayers, (long long)c.hiddenSize, (long long)c.numHeads, (long long)c.numKvHeads,
              (long long)c.headDim, (long long)c.vocabSize);
  if (c.numExperts > 0) {
    int64_t moeLayers = 0;
    for (bool b : c.layerIsMoe) moeLayers += b;
    if (c.layerIsMoe.empty()) moeLayers = c.numLayers;
    std::printf("experts:      %lld per MoE layer, top-%lld, %lld MoE layers, expert width %lld%s\n",
                (long long)c.numExperts, (long long)c.topK, (long long)moeLayers, (long long)c.moeIntermediateSize,
                c.numSharedExperts ? fmt::format(", {} shared", c.numSharedExperts).c_str() : "");
  } else {
    std::printf("experts:      none (dense, FFN width %lld)\n", (long long)c.intermediateSize);
  }
}

int infoRdrr(const std::string& dir) {
  auto m = RdrrModel::open(dir);
  const Manifest& mf = m->manifest();
  uint64_t params = 0, dense = 0, expert = 0, total = 0;
  std::set<std::string> dtypes;
  std::set<std::string> expertGroups;
  int slices = 1;
  for (const auto& [name, t] : mf.tensors) {
    params += uint64_t(t.numel());
    total += t.size;
    if (t.expert >= 0) expert += t.size;
    else dense += t.size;
    dtypes.insert(std::string(dtypeName(t.dtype)));
    slices = std::max(slices, t.sliceCount);
  }
  for (const auto& [g, _] : mf.groups)
    if (g.find(".expert.") != std::string::npos) expertGroups.insert(g);
  std::string dt;
  for (const auto& d : dtypes) dt += (dt.empty() ? "" : ", ") + d;
  std::printf("model:        %s (%s)\n", mf.modelId.c_str(), dir.c_str());
  std::printf("format:       RDRR v%d, layout %s, tp slices %d, dtypes %s%s\n", mf.formatVersion,
              std::string(layoutName(mf.defaultWeightLayout)).c_str(), slices, dt.c_str(),
              mf.fused.empty() ? "" : fmt::format(", {} fused tensors", mf.fused.size()).c_str());
  std::printf("architecture: %s\n", mf.architecture.c_str());
  std::printf("parameters:   %llu (%s)\n", (unsigned long long)params, countText(params).c_str());
  printConfig(m->config());
  std::printf("dense bytes:  %llu (%s)\n", (unsigned long long)dense, formatSize(dense).c_str());
  if (mf.moe)
    std::printf("expert bytes: %llu per expert (%s), %zu experts stored, %s in all\n",
                (unsigned long long)mf.moe->expertBytes, formatSize(mf.moe->expertBytes).c_str(),
                expertGroups.size(), formatSize(expert).c_str());
  std::printf("total bytes:  %llu (%s)\n", (unsigned long long)total, formatSize(total).c_str());
  std::printf("shards:       %zu\n", mf.shards.size());
  for (const auto& s : mf.shards)
    std::printf("  %s  %12llu  %s\n", s.filename.c_str(), (unsigned long long)s.size, s.hash.c_str());
  std::string tf;
  for (const auto& f : mf.tokenizerFiles) tf += (tf.empty() ? "" : ", ") + f.filename;
  std::printf("tokenizer:    %s\n", tf.empty() ? "(none)" : tf.c_str());
  return 0;
}

int infoHf(const std::string& dir) {
  std::string cfgPath = joinPath(dir, "config.json");
  ModelConfig cfg = readHfConfig(cfgPath);
  SafetensorsCheckpoint ck(dir);
  uint64_t params = 0, bytes = 0, skipped = 0;
  for (const auto& name : ck.names()) {
    auto e = ck.get(name);
    uint64_t n = 1;
    for (auto d : e.info->shape) n *= uint64_t(d);
    bytes += e.info->bytes();
    if (mapHfName(name, cfg, dir).kind == HfNameMapping::Skip) skipped++;
    else params += n;
  }
  std::printf("model:        %s (Hugging Face directory)\n", dir.c_str());
  std::printf("architecture: %s (model_type %s)\n", std::string(archName(cfg.arch)).c_str(), cfg.modelType.c_str());
  std::printf("parameters:   %llu (%s)\n", (unsigned long long)params, countText(params).c_str());
  printConfig(cfg);
  std::printf("checkpoint:   %zu tensors in %zu safetensors files, %llu bytes (%s)%s\n", ck.names().size(),
              ck.files().size(), (unsigned long long)bytes, formatSize(bytes).c_str(),
              skipped ? fmt::format("; {} tensors unused by the model", skipped).c_str() : "");
  return 0;
}

// ---- doppler info --tiers [MODEL] [--vram SIZE] [--ram SIZE] (issue #4, docs/tiers.md) ----
struct TierInfoOpts {
  bool tiers = false;
  std::optional<uint64_t> vram, ram;
  std::string cacheDir;
  std::string backend = "auto";
};

void addTierInfoOptions(CLI::App& sub, TierInfoOpts& t) {
  sub.add_flag("--tiers", t.tiers,
               "Print the memory tiers (device, host RAM with cgroup limits, disk), the budgets that would be used "
               "and, for an RDRR MODEL, its placement");
  sub.add_option_function<std::string>(
      "--vram", [&t](const std::string& s) { t.vram = parseSize(s, "--vram"); }, "With --tiers: a device budget");
  sub.add_option_function<std::string>(
      "--ram", [&t](const std::string& s) { t.ram = parseSize(s, "--ram"); }, "With --tiers: a host budget");
  sub.add_option("--cache-dir", t.cacheDir, "With --tiers: the cache directory whose free disk space to report");
  sub.add_option("--backend", t.backend, "With --tiers: the backend whose device tier to report: cpu, cuda or auto "
                 "(default auto)")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
}

int infoTiers(const std::string& model, const TierInfoOpts& t) {
  auto backend = makeBackend(t.backend);
  const std::string cache = cacheRoot(t.cacheDir);
  Capabilities c = detectCapabilities(*backend, cache);
  const HostMemory& h = c.host;
  std::printf("host RAM:     %s total, %s available", formatSize(h.total).c_str(), formatSize(h.available).c_str());
  if (h.cgroupVersion)
    std::printf("; cgroup v%d limit %s, usage %s (%s)", h.cgroupVersion,
                h.cgroupLimit ? formatSize(*h.cgroupLimit).c_str() : "none", formatSize(h.cgroupUsage).c_str(),
                h.cgroupPath.c_str());
  std::printf("; usable %s\n", formatSize(h.usable()).c_str());
  std::printf("disk:         %s free of %s (cache %s)\n", formatSize(c.disk.free).c_str(),
              formatSize(c.disk.total).c_str(), cache.c_str());
  std::printf("gpu:          %s\n", cudaDeviceSummary().c_str());
  std::printf("device:       %s: %s total, %s free%s\n", c.device.backend.c_str(), formatSize(c.device.total).c_str(),
              formatSize(c.device.free).c_str(),
              c.device.emulated ? " (emulated in host RAM: explicit copies, own budget)"
                                : c.device.unified ? " (unified with host memory)" : "");
  std::unique_ptr<RdrrModel> m;
  uint64_t shardBytes = 0;
  if (!model.empty()) {
    check(isRegularFile(joinPath(model, kRdrrManifestName)),
          "{}: --tiers plans placement for an RDRR directory (convert a Hugging Face directory first)", model);
    m = RdrrModel::open(model);
    for (const auto& s : m->manifest().shards) shardBytes += s.size;
  }
  TierBudgets b = resolveBudgets(c, t.vram, t.ram, shardBytes);
  std::printf("budgets:      device %s (%s), host %s (%s), disk %s; host headroom %s\n", formatSize(b.device).c_str(),
              b.deviceGiven ? "--vram" : "default", formatSize(b.host).c_str(), b.hostGiven ? "--ram" : "default",
              formatSize(b.disk).c_str(), formatSize(hostHeadroom(h)).c_str());
  if (m) {
    TierPlan p = planTiers(*m, b.device, b.host, /*check=*/false);
    std::printf("placement:    %s\n", p.summary().c_str());
    std::printf("minimum:      device %s with dense weights resident, %s streamed (%s); host %s\n",
                formatSize(p.deviceMinimumResident).c_str(), formatSize(p.deviceMinimumStreamed).c_str(),
                p.minimumBreakdown.c_str(), formatSize(p.hostMinimum).c_str());
    const bool ok = b.device >= p.deviceMinimum && b.host >= p.hostMinimum;
    std::printf("fits:         %s\n", ok ? "yes" : "no: a budget is below its minimum working set");
  }
  return 0;
}

struct Opts {
  std::string model;
  bool gpu = false;
};

const bool kRegistered = registerCommand(
    {"info", "Print what a model holds (RDRR or Hugging Face directory)", 22, [](CLI::App& sub) -> Runner {
       auto o = std::make_shared<Opts>();
       auto t = std::make_shared<TierInfoOpts>();
       sub.add_option("MODEL", o->model, "RDRR directory or Hugging Face directory (optional with --tiers)");
       addTierInfoOptions(sub, *t);
       sub.add_flag("--gpu", o->gpu, "Print the backends this build has and the GPU (CUDA) if one is usable");
       return [o, t] {
         if (t->tiers) return infoTiers(o->model, *t);
         if (o->gpu) {  // what this build and machine can run on
           std::printf("backends:     cpu%s\n", cudaCompiled() ? ", cuda" : " (built without CUDA)");
           std::printf("gpu:          %s\n", cudaDeviceSummary().c_str());
           if (o->model.empty()) return 0;
         }
         check(!o->model.empty(), "info: MODEL is required (or give --tiers or --gpu)");
         if (isRegularFile(joinPath(o->model, kRdrrManifestName))) return infoRdrr(o->model);
         if (isRegularFile(joinPath(o->model, "config.json"))) return infoHf(o->model);
         if (!isDirectory(o->model)) fail("{}: no such model directory", o->model);
         fail("{}: not a model directory (no manifest.json or config.json)", o->model);
       };
     }});
}  // namespace

}  // namespace doppler::app

#include "engine/model_source.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include "convert/convert.h"
#include "core/error.h"
#include "core/fs_util.h"
#include "core/sha256.h"
#include "storage/resolve.h"

namespace doppler {

namespace fs = std::filesystem;

std::string cacheRoot(const std::string& override) {
  if (!override.empty()) return override;
  if (const char* e = std::getenv("DOPPLER_CACHE"); e && *e) return e;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/doppler";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/doppler";
  fail("no cache directory: set --cache-dir, DOPPLER_CACHE or HOME");
}

std::string defaultModelDir() {
  // Installed layout first (<prefix>/bin/doppler -> <prefix>/share/doppler/models/...), then the build tree's
  // source checkout.
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  std::vector<fs::path> candidates;
  if (!ec) {
    candidates.push_back(exe.parent_path().parent_path() / "share/doppler/models/qwen3moe-code-9m");
    candidates.push_back(exe.parent_path().parent_path() / "models/qwen3moe-code-9m");
  }
  candidates.push_back(fs::path(DOPPLER_SOURCE_DIR) / "models/qwen3moe-code-9m");
  for (const auto& c : candidates)
    if (isHfDir(c.string()) || isRdrrDir(c.string())) return c.string();
  fail("the embedded default model is missing (looked in {}); pass a MODEL directory",
       (fs::path(DOPPLER_SOURCE_DIR) / "models/qwen3moe-code-9m").string());
}

bool isRdrrDir(const std::string& dir) { return isRegularFile(joinPath(dir, "manifest.json")); }

bool isHfDir(const std::string& dir) {
  return isRegularFile(joinPath(dir, "config.json")) &&
         (isRegularFile(joinPath(dir, "model.safetensors")) ||
          isRegularFile(joinPath(dir, "model.safetensors.index.json")));
}

namespace {
// Identity of a checkpoint for the conversion cache: absolute path + (name, size, mtime) of every file.
std::string checkpointKey(const std::string& dir) {
  std::vector<std::string> lines;
  const fs::path abs = fs::absolute(dir);
  for (const auto& e : fs::directory_iterator(abs)) {
    if (!e.is_regular_file()) continue;
    struct stat st {};
    if (::stat(e.path().c_str(), &st) != 0) continue;
    lines.push_back(fmt::format("{} {} {}.{}", e.path().filename().string(), st.st_size, st.st_mtim.tv_sec,
                                st.st_mtim.tv_nsec));
  }
  std::sort(lines.begin(), lines.end());
  std::string all = abs.string() + "\n";
  for (auto& l : lines) all += l + "\n";
  return sha256Hex(all.data(), all.size()).substr(0, 24);
}
}  // namespace

ResolvedModel resolveModelLazily(const std::string& arg, const std::string& cacheDir, bool quiet, bool lazy,
                                 const StoreSwarmOptions& swarm) {
  // An http(s) URL of a manifest, or a cache id: the shard store (storage/resolve.h).
  if (isStoreModelArg(arg)) {
    StoreModel sm = resolveStoreModel(arg, cacheRoot(cacheDir), quiet, lazy, swarm);
    return {sm.dir, std::move(sm.fetcher), std::move(sm.stats)};
  }
  return {resolveModel(arg, cacheDir, quiet), nullptr, nullptr};
}

std::string resolveModel(const std::string& arg, const std::string& cacheDir, bool quiet) {
  if (isStoreModelArg(arg)) return resolveStoreModel(arg, cacheRoot(cacheDir), quiet).dir;
  const std::string dir = arg.empty() ? defaultModelDir() : arg;
  if (isRdrrDir(dir)) return dir;
  check(isDirectory(dir), "{}: no such model directory", dir);
  if (!isHfDir(dir))
    fail("{}: not a model directory (expected manifest.json for RDRR, or config.json + model.safetensors for a "
         "Hugging Face checkpoint)", dir);
  const std::string root = cacheRoot(cacheDir);
  const std::string name = baseName(fs::absolute(dir).lexically_normal().string());
  const std::string out = joinPath(joinPath(root, "converted"), name + "-" + checkpointKey(dir) + ".rdrr");
  if (isRdrrDir(out)) return out;
  std::error_code ec;
  fs::create_directories(joinPath(root, "converted"), ec);
  check(isDirectory(joinPath(root, "converted")), "{}: cannot create the cache directory ({})",
        joinPath(root, "converted"), ec.message());
  if (!quiet) std::fprintf(stderr, "doppler: converting %s into %s (once)\n", dir.c_str(), out.c_str());
  try {
    convertCheckpoint(dir, out, ConvertOptions{}, nullptr);
  } catch (const Error&) {
    if (isRdrrDir(out)) return out;  // another process published the same conversion first
    throw;
  }
  return out;
}

}  // namespace doppler

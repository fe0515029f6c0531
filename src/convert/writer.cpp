#include "convert/writer.h"

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/fs_util.h"
#include "core/sha256.h"
#include "format/hf_config.h"
#include "format/safetensors.h"

namespace doppler {

namespace {

// Shard bytes go through a few large buffers: the calling thread fills one while a worker thread hashes
// and writes the previous ones, so hashing overlaps producing and writing.
class ShardPipeline {
 public:
  // Buffers are allocated on first use and never zero-filled: page faults are expensive on small VMs and
  // a small model never touches most of them.
  explicit ShardPipeline(size_t bufSize = size_t(8) << 20, int nbuf = 4) : bufSize_(bufSize), unallocated_(nbuf) {
    worker_ = std::thread([this] { run(); });
  }
  ~ShardPipeline() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void open(const std::string& path) {
    drain();
    file_ = FileWriter(path);
    hash_ = std::make_unique<Sha256>();
  }

  void write(const void* data, size_t n) {
    auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      if (!cur_) cur_ = take();
      size_t k = std::min(n, bufSize_ - cur_->n);
      std::memcpy(cur_->data.get() + cur_->n, p, k);
      cur_->n += k;
      p += k;
      n -= k;
      if (cur_->n == bufSize_) submit();
    }
  }

  void zeros(size_t n) {
    static const uint8_t z[256] = {};
    while (n > 0) {
      size_t k = std::min(n, sizeof z);
      write(z, k);
      n -= k;
    }
  }

  // Flushes, waits for the worker and closes the file (without fsync: the caller syncs every shard at the end,
  // so the disk flushes in the background while later shards are produced); returns its SHA-256.
  std::string close() {
    if (cur_ && cur_->n > 0) submit();
    drain();
    file_.close(false);
    return hash_->hexDigest();
  }

 private:
  struct Buf {
    explicit Buf(size_t n) : data(new uint8_t[n]) {}
    std::unique_ptr<uint8_t[]> data;
    size_t n = 0;
  };

  std::unique_ptr<Buf> take() {
    std::unique_lock<std::mutex> lk(mu_);
    rethrowLocked();
    if (free_.empty() && unallocated_ > 0) {
      unallocated_--;
      return std::make_unique<Buf>(bufSize_);
    }
    cv_.wait(lk, [&] { return !free_.empty() || error_; });
    rethrowLocked();
    auto b = std::move(free_.front());
    free_.pop_front();
    b->n = 0;
    return b;
  }
  void submit() {
    std::lock_guard<std::mutex> lk(mu_);
    full_.push_back(std::move(cur_));
    cv_.notify_all();
  }
  void drain() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return (full_.empty() && !busy_) || error_; });
    rethrowLocked();
  }
  void rethrowLocked() {
    if (error_) std::rethrow_exception(error_);
  }
  void run() {
    for (;;) {
      std::unique_ptr<Buf> b;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !full_.empty(); });
        if (full_.empty()) return;  // stop_
        b = std::move(full_.front());
        full_.pop_front();
        busy_ = true;
      }
      try {
        if (!error_) {
          hash_->update(b->data.get(), b->n);
          file_.write(b->data.get(), b->n);
        }
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        error_ = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        free_.push_back(std::move(b));
        busy_ = false;
      }
      cv_.notify_all();
    }
  }

  size_t bufSize_;
  int unallocated_;
  std::unique_ptr<Buf> cur_;
  std::deque<std::unique_ptr<Buf>> free_, full_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, busy_ = false;
  std::exception_ptr error_;
  FileWriter file_;
  std::unique_ptr<Sha256> hash_;
  std::thread worker_;
};

std::string shardFileName(int i) { return fmt::format("shard-{:05}.bin", i); }

void emitTensor(const PlannedTensor& t, ShardPipeline& out, ProgressBar* progress, std::vector<uint8_t>& scratch) {
  constexpr size_t kChunk = size_t(8) << 20;
  if (t.isPlainCopy()) {
    const auto& p = t.parts.front();
    const uint8_t* src = p.base;
    uint64_t n = t.bytes();
    for (uint64_t at = 0; at < n; at += kChunk) {
      size_t k = size_t(std::min<uint64_t>(kChunk, n - at));
      out.write(src + at, k);
      if (progress) progress->add(k);
    }
    return;
  }
  if (t.layout == Layout::Row || t.is1D) {
    int64_t rows = t.rows();
    uint64_t rowBytes = dtypeBytes(t.dtype, uint64_t(t.c1 - t.c0));  // block types (mxfp4) too
    int64_t step = std::max<int64_t>(1, int64_t(kChunk / std::max<uint64_t>(1, rowBytes)));
    for (int64_t r = 0; r < rows; r += step) {
      int64_t r1 = std::min(rows, r + step);
      size_t k = size_t(uint64_t(r1 - r) * rowBytes);
      scratch.resize(k);
      produceRows(t, r, r1, scratch.data());
      out.write(scratch.data(), k);
      if (progress) progress->add(k);
    }
    return;
  }
  scratch.resize(t.bytes());
  produceTensor(t, scratch.data());
  out.write(scratch.data(), scratch.size());
  if (progress) progress->add(scratch.size());
}

}  // namespace

const std::vector<std::string>& tokenizerFileNames() {
  static const std::vector<std::string> names = {
      "tokenizer.json",   "tokenizer_config.json",  "generation_config.json", "special_tokens_map.json",
      "tokenizer.model",  "tiktoken.model",         "tiktoken_config.json",   "chat_template.jinja",
      "chat_template.json"};
  return names;
}

std::vector<uint64_t> layoutShards(ConversionPlan& plan, uint64_t shardSize) {
  std::vector<uint64_t> sizes;
  uint64_t at = 0;
  int shard = 0;
  bool any = false;
  for (auto& g : plan.groups) {
    uint64_t gb = g.bytes(kRdrrTensorAlign);
    if (!any) {
      sizes.push_back(0);
      any = true;
    } else if (at > 0 && at + gb > shardSize) {
      shard++;
      sizes.push_back(0);
      at = 0;
    }
    std::string prev;
    for (auto& t : g.tensors) {
      std::string base = t.name.substr(0, t.name.find('#'));
      if (base != prev) at = (at + kRdrrTensorAlign - 1) / kRdrrTensorAlign * kRdrrTensorAlign;
      prev = base;
      RdrrTensor& e = plan.manifest.tensors.at(t.name);
      e.shard = shard;
      e.offset = at;
      at += t.bytes();
    }
    sizes[size_t(shard)] = at;
  }
  return sizes;
}

ConvertResult convertHfToRdrr(const std::string& srcDirIn, const std::string& outDir, const ConvertOptions& optsIn,
                              ProgressBar* progress) {
  auto t0 = std::chrono::steady_clock::now();
  std::string srcDir = srcDirIn;
  while (srcDir.size() > 1 && srcDir.back() == '/') srcDir.pop_back();
  check(isDirectory(srcDir), "{}: no such directory", srcDir);
  std::string cfgPath = joinPath(srcDir, "config.json");
  if (!isRegularFile(cfgPath)) {
    if (isRegularFile(joinPath(srcDir, kRdrrManifestName)))
      fail("{}: this is already an RDRR model (convert takes a Hugging Face directory)", srcDir);
    fail("{}: not a Hugging Face model directory (no config.json)", srcDir);
  }
  ConvertOptions opts = optsIn;
  checkConvertOptions(opts);
  if (opts.modelId.empty()) opts.modelId = baseName(srcDir);

  ModelConfig cfg = readHfConfig(cfgPath);
  SafetensorsCheckpoint ckpt(srcDir);
  ConversionPlan plan = planConversion(ckpt, cfg, cfg.raw, opts, srcDir);
  std::vector<uint64_t> sizes = layoutShards(plan, opts.shardSize);

  Manifest& mf = plan.manifest;
  for (size_t i = 0; i < sizes.size(); i++)
    mf.shards.push_back({int(i), shardFileName(int(i)), sizes[i], std::string(64, '0')});
  validateManifest(mf, outDir + "/manifest.json (before writing)");

  AtomicDir out(outDir, opts.force, opts.sync);  // declared before the pipeline: the pipeline stops first on failure
  if (progress) progress->setTotal(plan.totalBytes);
  {
    ShardPipeline pipe;
    std::vector<uint8_t> scratch;
    int shard = -1;
    uint64_t at = 0;
    for (const auto& g : plan.groups) {
      for (const auto& t : g.tensors) {
        const RdrrTensor& e = mf.tensors.at(t.name);
        if (e.shard != shard) {
          if (shard >= 0) mf.shards[size_t(shard)].hash = pipe.close();
          shard = e.shard;
          pipe.open(joinPath(out.path(), mf.shards[size_t(shard)].filename));
          at = 0;
        }
        pipe.zeros(size_t(e.offset - at));
        emitTensor(t, pipe, progress, scratch);
        at = e.offset + e.size;
      }
    }
    if (shard >= 0) mf.shards[size_t(shard)].hash = pipe.close();
  }
  if (opts.sync)  // one pass at the end, like `cp && sync`: writeback overlapped the conversion
    for (const auto& s : mf.shards) fsyncPath(joinPath(out.path(), s.filename));
  for (const auto& name : tokenizerFileNames()) {
    std::string src = joinPath(srcDir, name);
    if (!isRegularFile(src)) continue;
    std::string dst = joinPath(out.path(), name);
    RdrrFile f;
    f.filename = name;
    Sha256 h;
    f.size = copyFile(src, dst, &h, opts.sync);
    f.hash = h.hexDigest();
    mf.tokenizerFiles.push_back(std::move(f));
  }
  std::string json = manifestToJson(mf);
  parseManifest(json, outDir + "/manifest.json");  // what we write must read back
  writeFile(joinPath(out.path(), kRdrrManifestName), json, opts.sync);
  out.commit();
  if (progress) progress->finish();

  ConvertResult r;
  r.manifest = std::move(mf);
  r.notes = std::move(plan.notes);
  r.tensorBytes = plan.totalBytes;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace doppler

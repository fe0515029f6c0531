// Reading an RDRR model directory (manifest.json + shard-NNNNN.bin + tokenizer files). See docs/rdrr.md.
//
// Names are LOGICAL tensor names (the canonical names of docs/rdrr.md): a tensor stored as TP slices
// ("x#0".."x#N-1") is read as "x"; a component of a fused tensor ("layers.0.attn.k.weight" inside
// "layers.0.attn.qkv.weight") is read by its own name; the fused tensor is readable by its name too.
// Every read goes through pread (counted by bytesRead(); reads only the bytes asked for); view() is the one
// zero-copy path and maps a shard the first time it is needed. All methods are safe to call from several
// threads at once.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/tensor.h"
#include "format/hf_config.h"
#include "format/rdrr_manifest.h"

namespace doppler {

// Makes a missing shard file present (fetch, verify, publish) or throws an Error naming it. Used for models
// pulled lazily into the shard store (storage/resolve.h): shards are fetched on their first use.
using ShardFetcher = std::function<void(const RdrrShard& shard)>;

class RdrrModel {
 public:
  // Parses and validates manifest.json, parses the embedded config, and checks that every shard and
  // tokenizer file exists with the size the manifest gives (cheap: no hashing). Errors name the file.
  // With a fetcher, shards may be missing: each is fetched through it before its first read or mapping.
  static std::unique_ptr<RdrrModel> open(const std::string& dir, ShardFetcher fetcher = nullptr);
  ~RdrrModel();
  RdrrModel(const RdrrModel&) = delete;
  RdrrModel& operator=(const RdrrModel&) = delete;

  const std::string& dir() const { return dir_; }
  const Manifest& manifest() const { return manifest_; }
  const ModelConfig& config() const { return config_; }
  std::string shardPath(int shard) const;
  // True when the shard's file is present (always, unless the model was opened with a fetcher).
  bool shardPresent(int shard) const;

  // ---- logical tensors ----
  bool has(const std::string& name) const;
  std::vector<std::string> names() const;  // all logical names, sorted
  std::vector<int64_t> shape(const std::string& name) const;  // whole logical shape, [out, in] for matrices
  DType dtype(const std::string& name) const;
  Layout layout(const std::string& name) const;
  int sliceCount(const std::string& name) const;  // 1 when stored whole
  uint64_t byteSize(const std::string& name) const;  // bytes of the whole logical tensor

  // Zero-copy view into the mapped shard when the tensor's bytes lie contiguous in its stored layout (a
  // whole tensor, a fused component, or column-layout slices stored back to back); nullopt otherwise.
  // Valid for the model's lifetime.
  std::optional<WeightView> view(const std::string& name) const;
  // The whole logical tensor in its stored layout and dtype (slices reassembled, fused components cut out).
  std::vector<uint8_t> readTensor(const std::string& name) const;
  // W[:, c0:c1] of a 2-D tensor in its stored layout: column layout -> [(c1-c0) * out] column-major
  // (reads exactly those bytes); row layout -> [out, c1-c0] row-major (reads the span from row 0's c0 to
  // the last row's c1, per stored slice).
  std::vector<uint8_t> readColumns(const std::string& name, int64_t c0, int64_t c1) const;
  // TP slice idx of a tensor stored as sliceCount slices: exactly that slice's bytes ([out, K/N] in the
  // stored layout). A tensor stored whole has one slice (idx 0 = the whole tensor).
  std::vector<uint8_t> readSlice(const std::string& name, int idx) const;

  // ---- raw access ----
  // pread of [offset, offset+size) of a shard into dst; bounds-checked against the manifest's shard size.
  void readRange(int shard, uint64_t offset, uint64_t size, void* dst) const;
  struct Span {
    int shard = 0;
    uint64_t offset = 0, size = 0;
  };
  Span groupSpan(const std::string& group) const;  // the byte span a group occupies (one shard)
  // All tensors of a group with ONE contiguous read, keyed by logical name (slices reassembled; a fused
  // tensor is returned under its fused name, not split).
  std::map<std::string, std::vector<uint8_t>> readGroup(const std::string& group) const;

  uint64_t bytesRead() const { return bytesRead_.load(); }
  void resetBytesRead() { bytesRead_ = 0; }

  // Re-hashes every shard and tokenizer file and re-checks every tensor range against the files' real
  // sizes. Throws Error naming the first bad file ("<dir>/shard-00003.bin: SHA-256 mismatch ...").
  void verify(ProgressBar* progress = nullptr) const;

  // How a logical name is stored (used by the reader's methods; public for tools and tests).
  struct Logical {
    enum Kind { Whole, Sliced, FusedPart } kind = Whole;
    std::vector<const RdrrTensor*> entries;  // Whole/FusedPart: the stored tensor; Sliced: slices by index
    int64_t rowStart = 0;                    // FusedPart: first row inside the fused tensor
    std::vector<int64_t> shape;              // logical shape
    DType dtype = DType::F32;
    Layout layout = Layout::Row;
  };
  const Logical& logical(const std::string& name) const;  // Error naming the tensor if missing

 private:
  RdrrModel() = default;
  struct Fd;
  std::shared_ptr<Fd> fd(int shard) const;
  void ensurePresent(int shard) const;  // runs the fetcher for a missing shard (once at a time per model)
  const MappedFile& mapped(int shard) const;
  void readSpan(const Logical& l, const RdrrTensor& e, uint64_t off, uint64_t n, void* dst) const;

  std::string dir_;
  Manifest manifest_;
  ModelConfig config_;
  std::map<std::string, Logical> logical_;
  mutable std::mutex mu_;
  mutable std::vector<std::shared_ptr<Fd>> fds_;
  mutable std::vector<std::unique_ptr<MappedFile>> maps_;
  mutable int openFds_ = 0;
  mutable std::atomic<uint64_t> bytesRead_{0};
  ShardFetcher fetcher_;
  mutable std::mutex fetchMu_;
  mutable std::vector<uint8_t> present_;  // per shard, under fetchMu_ (with a fetcher)
};

}  // namespace doppler

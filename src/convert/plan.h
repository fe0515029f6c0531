// Conversion plan: which RDRR tensors a Hugging Face checkpoint becomes, in which groups and order, and how
// each tensor's bytes are produced from the source (strided gathers for gpt_oss splits, row stacking for
// fusion, column ranges for TP slices, transposes for column layout, dtype conversion). No I/O here beyond
// reading the mmapped checkpoint; convert/writer.h lays the plan out into shards and writes it.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "format/hf_config.h"
#include "format/rdrr_manifest.h"
#include "format/safetensors.h"

namespace doppler {

struct ConvertOptions {
  uint64_t shardSize = uint64_t(64) << 20;  // target shard size; a group larger than this gets its own shard
  Layout layout = Layout::Row;              // layout of 2-D weight matrices (embed.weight always row)
  int tp = 1;                               // store sliceable matrices as `tp` column slices
  std::optional<DType> dtype;               // nullopt = keep; else f32 | f16 | bf16 for float tensors
  bool fuseQkv = false;                     // q|k|v -> attn.qkv (row layout, tp 1 only)
  bool fuseGateUp = false;                  // gate|up -> gate_up (dense FFN, experts, shared experts)
  bool force = false;                       // replace an existing output directory
  bool sync = true;                         // fsync shards, files and directories before publishing (tests may
                                            // turn it off for speed; the publish is atomic either way)
  std::string modelId;                      // default: the source directory's name
};

// Parses "--fuse qkv,gate_up" (also "none" / ""). Error on anything else.
void parseFuseList(const std::string& list, ConvertOptions& opts);
// Rejects option combinations the format does not support, with a one-line Error.
void checkConvertOptions(const ConvertOptions& opts);

// A source matrix inside the mmapped checkpoint: element (r, c) lies at
// base + (r * rowStride + c * colStride) * dtypeSize(dtype). A 1-D tensor is rows = n, cols = 1.
struct SourceMatrix {
  const uint8_t* base = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  int64_t rowStride = 0, colStride = 1;
  // dtype MXFP4 (gpt-oss *_blocks / *_scales): row r's E2M1 codes ([cols / 32, 16] bytes) start at
  // base + r * rowStride BYTES and its E8M0 scales ([cols / 32] bytes) at scales + r * scaleRowStride; the
  // stored row interleaves them into 17-byte blocks (core/dtype.h).
  const uint8_t* scales = nullptr;
  int64_t scaleRowStride = 0;
  bool contiguous() const {
    return dtype != DType::MXFP4 && colStride == 1 && (rowStride == cols || rows <= 1);
  }
};

struct PlannedTensor {
  std::string name;  // manifest key ("<logical>#<i>" for a slice)
  TensorRole role = TensorRole::Attention;
  int layer = -1, expert = -1;
  std::vector<SourceMatrix> parts;  // stacked along rows (several only when fused); all share cols and dtype
  bool is1D = false;
  DType dtype = DType::F32;         // stored dtype
  Layout layout = Layout::Row;
  int64_t c0 = 0, c1 = 0;           // column range of the stacked source stored here ([0, cols) if whole)
  int sliceDim = -1, sliceIdx = 0, sliceCount = 1;
  std::vector<int64_t> shape;          // stored shape: [rows, c1-c0] or [n]
  std::vector<int64_t> originalShape;  // [rows, cols] or [n]
  int64_t rows() const;
  uint64_t bytes() const;
  // True when the stored bytes are the source bytes unchanged (one contiguous part, row layout, whole,
  // same dtype): the writer streams them without a staging buffer.
  bool isPlainCopy() const;
};

struct PlannedGroup {
  std::string name;                     // "embedding", "layer.L.dense", "layer.L.expert.E", "final", "head"
  std::vector<PlannedTensor> tensors;   // storage order
  uint64_t bytes(uint64_t align) const;  // with `align` padding before each logical tensor
};

struct ConversionPlan {
  ModelConfig config;
  Manifest manifest;                   // everything except shards, offsets and hashes
  std::vector<PlannedGroup> groups;    // storage order
  std::vector<std::string> notes;      // skipped tensors, tensors left unsliced, ...
  uint64_t totalBytes = 0;             // tensor bytes to write (without padding)
};

// `what` names the source directory in errors.
ConversionPlan planConversion(const SafetensorsCheckpoint& ckpt, const ModelConfig& cfg,
                              const nlohmann::json& rawConfig, const ConvertOptions& opts, const std::string& what);

// Writes the stored bytes of `t` (t.bytes() of them) to dst. Rows [r0, r1) of the stored tensor only
// (row layout; whole tensor for column layout) when r1 > r0 is given — the writer uses that to stream big
// tensors in pieces.
void produceTensor(const PlannedTensor& t, uint8_t* dst);
void produceRows(const PlannedTensor& t, int64_t r0, int64_t r1, uint8_t* dst);

}  // namespace doppler

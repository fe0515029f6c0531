// RDRR manifest (manifest.json): what an RDRR model directory holds and where every byte lies.
// docs/rdrr.md documents every field. parseManifest validates everything a hostile file can get wrong and
// is what the reader and the fuzzer (fuzz/fuzz_manifest.cpp) call; manifestToJson is its inverse.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace doppler {

inline constexpr int kRdrrFormatVersion = 1;
inline constexpr const char* kRdrrManifestName = "manifest.json";

enum class TensorRole : uint8_t { Embedding, Head, Norm, Attention, Router, Ffn, Expert, SharedExpert };
// "embedding" | "head" | "norm" | "attention" | "router" | "ffn" | "expert" | "shared_expert"
std::string_view roleName(TensorRole r);
std::optional<TensorRole> parseRoleName(std::string_view s);

struct RdrrShard {
  int index = 0;          // == position in Manifest::shards
  std::string filename;   // plain file name inside the model directory ("shard-00000.bin")
  uint64_t size = 0;      // bytes
  std::string hash;       // lowercase hex SHA-256 of the whole file
};

struct RdrrFile {  // a tokenizer file copied beside the shards
  std::string filename;
  uint64_t size = 0;
  std::string hash;  // lowercase hex SHA-256
};

struct RdrrTensor {
  std::string name;               // manifest key; a tensor-parallel slice is "<logical name>#<sliceIdx>"
  int shard = 0;                  // index into Manifest::shards
  uint64_t offset = 0, size = 0;  // byte range inside the shard
  std::vector<int64_t> shape;     // stored shape ([out, in/sliceCount] for a slice), nn.Linear order [out, in]
                                  // whatever the layout
  DType dtype = DType::F32;
  Layout layout = Layout::Row;    // row: W[o*in + i]; column: W[i*out + o] (2-D only)
  std::vector<int64_t> originalShape;  // shape of the whole logical tensor (== shape when not sliced)
  int sliceDim = -1;              // -1: not sliced; 1: column slices of W[out, K]
  int sliceIdx = 0, sliceCount = 1;  // this entry holds columns [sliceIdx*K/sliceCount, (sliceIdx+1)*K/sliceCount)
  TensorRole role = TensorRole::Attention;
  int layer = -1;                 // -1 when not in a layer
  int expert = -1;                // routed expert index, -1 otherwise

  std::string logicalName() const;  // name without "#<i>"
  int64_t numel() const;
};

// A fused tensor (e.g. q|k|v stacked along rows) and the logical tensors it holds.
struct RdrrFusedPart {
  std::string name;             // logical (canonical) name, e.g. "layers.0.attn.k.weight"
  int64_t start = 0, count = 0;  // rows [start, start+count) of the fused tensor
};
struct RdrrFused {
  std::string name;  // the stored tensor, e.g. "layers.0.attn.qkv.weight"
  int dim = 0;       // always 0 (rows) in format version 1
  std::vector<RdrrFusedPart> parts;  // in row order, tiling [0, shape[0])
};

struct RdrrMoe {
  int64_t numExperts = 0;   // routed experts per MoE layer
  int64_t topK = 0;         // experts per token
  uint64_t expertBytes = 0;  // bytes of one expert (all its tensors, no padding)
};

struct Manifest {
  int formatVersion = kRdrrFormatVersion;
  std::string modelId;
  std::string architecture;           // archName(): "llama", "mixtral", ...
  nlohmann::json config;              // the original config.json object
  std::vector<RdrrFile> tokenizerFiles;
  std::string hashAlgorithm = "sha256";
  std::vector<RdrrShard> shards;
  std::map<std::string, RdrrTensor> tensors;                // by manifest key
  std::map<std::string, std::vector<std::string>> groups;   // group -> manifest keys (in storage order)
  std::optional<RdrrMoe> moe;                               // absent for dense models
  Layout defaultWeightLayout = Layout::Row;
  std::map<std::string, RdrrFused> fused;                   // by stored (fused) tensor name
};

// Parses and validates manifest JSON. `what` names the file in errors. Every failure is one-line Error
// "<what>: <field or tensor>: <problem>". Checks: JSON types; integers non-negative and in range; known
// dtype/layout/role; shard indices in range and equal to their position; safe file names (no '/', no "..",
// no leading '.'); sha256 hex digests; size == numel * dtype size; offset + size without overflow and
// inside its shard; no overlapping ranges within a shard; slice fields consistent (sliceIdx < sliceCount,
// originalShape vs shape, every slice present, name "<base>#<sliceIdx>"); groups name existing tensors,
// every tensor in exactly one group, each group within one shard, group names well formed and matching the
// tensors' layer/expert; moe.expertBytes equal to every expert group's bytes; fused parts tiling their tensor.
Manifest parseManifest(std::string_view json, const std::string& what);
// Runs the same validation on an in-memory manifest (the converter calls it before writing).
void validateManifest(const Manifest& m, const std::string& what);
// Pretty JSON (tensors and groups in storage order). parseManifest(manifestToJson(m)) == m.
std::string manifestToJson(const Manifest& m);

// Group names.
std::string expertGroupName(int layer, int expert);  // "layer.L.expert.E"
std::string denseGroupName(int layer);               // "layer.L.dense"
inline constexpr const char* kEmbeddingGroup = "embedding";
inline constexpr const char* kHeadGroup = "head";
inline constexpr const char* kFinalGroup = "final";

// True for names safe to open inside the model directory: [A-Za-z0-9._-]+, not starting with '.', <= 255.
bool isSafeFileName(std::string_view s);

}  // namespace doppler

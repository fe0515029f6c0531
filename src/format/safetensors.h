// safetensors reader: mmap + a fully validated header. Sharded checkpoints via model.safetensors.index.json.
//
// File layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:[b,e]},
// "__metadata__": {str: str}}, then the data section; offsets are relative to the data section.
// Validation (each failure is an Error naming the file and, where there is one, the tensor):
//   file shorter than 8 bytes; N past EOF; header not valid JSON / not an object; unknown dtype;
//   shape not a list of non-negative integers; numel * dtype size != e - b; b > e; range past EOF;
//   overlapping ranges; non-string metadata; duplicate keys (tensor names, metadata keys, entry fields).
// Gaps between tensors and bytes after the last tensor are allowed.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "core/mapped_file.h"

namespace doppler {

struct SafetensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the data section
  uint64_t bytes() const { return end - begin; }
};

// Parses and validates a header. `fileSize` is the whole file's size (for range checks);
// `what` names the file in errors. Used by the reader and the fuzzer.
struct SafetensorsHeader {
  uint64_t dataStart = 0;  // 8 + N
  std::vector<SafetensorInfo> tensors;  // in file order (ascending begin)
  std::map<std::string, std::string> metadata;
};
SafetensorsHeader parseSafetensorsHeader(const uint8_t* data, size_t fileSize, const std::string& what);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // mmaps and validates
  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorInfo* find(const std::string& name) const;
  // Raw bytes of a tensor (a view into the mapping).
  std::span<const uint8_t> bytes(const SafetensorInfo& t) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// A checkpoint directory: model.safetensors, or model.safetensors.index.json naming several files.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& dir);
  struct Entry {
    const SafetensorsFile* file;
    const SafetensorInfo* info;
  };
  const std::vector<std::string>& names() const { return names_; }  // sorted
  Entry get(const std::string& name) const;  // Error if missing
  bool has(const std::string& name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> names_;
};

// Writes a safetensors file (plain, not atomic): tensors' data in the given order, header padded with spaces to
// a multiple of 8 bytes so the data section is 8-byte aligned. Each tuple is (name, dtype, shape, bytes);
// Error if a name repeats or is "__metadata__", or bytes.size() != numel(shape) * dtypeSize(dtype).
using SafetensorsWriteItem = std::tuple<std::string, DType, std::vector<int64_t>, std::span<const uint8_t>>;
void writeSafetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace doppler

#include "format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "core/json_util.h"

namespace doppler {

namespace {

namespace fs = std::filesystem;

// Headers larger than this are rejected outright (the reference implementation uses the same limit).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

// A tensor / key name for an error message: quoted, control characters escaped, long names shortened,
// so that the message stays on one line whatever the file holds.
std::string q(std::string_view s) {
  std::string out = "'";
  size_t n = std::min<size_t>(s.size(), 200);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f)
      out += fmt::format("\\x{:02x}", c);
    else
      out += static_cast<char>(c);
  }
  if (s.size() > n) out += "...";
  return out + "'";
}

// A JSON value that must be a non-negative integer; nullopt otherwise.
std::optional<uint64_t> asU64(const Json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x >= 0) return uint64_t(x);
  }
  return std::nullopt;
}

std::string shapeStr(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// numel(shape) * elemSize, or nullopt on overflow.
std::optional<uint64_t> byteSize(const std::vector<int64_t>& shape, uint64_t elemSize) {
  uint64_t n = elemSize;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(n, uint64_t(d), &n)) return std::nullopt;
  return n;
}

// Parses JSON, rejecting duplicate keys in any object (nlohmann would silently keep the last one).
Json parseNoDuplicates(const uint8_t* b, const uint8_t* e, const std::string& what) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string dup;
  bool dupTop = false;
  auto cb = [&](int /*depth*/, Json::parse_event_t ev, Json& parsed) {
    switch (ev) {
      case Json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() && !keys.back().insert(parsed.get_ref<const std::string&>()).second &&
            dup.empty()) {
          dup = parsed.get_ref<const std::string&>();
          dupTop = keys.size() == 1;
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json h;
  try {
    h = Json::parse(b, e, cb);
  } catch (const Json::exception& ex) {
    fail("{}: header is not valid JSON: {}", what, ex.what());
  }
  if (!dup.empty()) {
    if (dupTop) fail("{}: duplicate tensor name {} in header", what, q(dup));
    fail("{}: duplicate key {} in header", what, q(dup));
  }
  return h;
}

}  // namespace

SafetensorsHeader parseSafetensorsHeader(const uint8_t* data, size_t fileSize, const std::string& what) {
  check(fileSize >= 8, "{}: file is {} bytes, too short for a safetensors file (at least 8)", what, fileSize);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | data[i];
  check(n <= kMaxHeaderBytes, "{}: header length {} is absurd (limit {} bytes)", what, n, kMaxHeaderBytes);
  check(n <= fileSize - 8, "{}: header length {} runs past end of file ({} bytes, at most {} available)", what, n,
        fileSize, fileSize - 8);

  SafetensorsHeader out;
  out.dataStart = 8 + n;
  const uint64_t dataBytes = fileSize - out.dataStart;

  Json h = parseNoDuplicates(data + 8, data + 8 + n, what);
  check(h.is_object(), "{}: header is not a JSON object (got {})", what, h.type_name());

  for (const auto& [name, v] : h.items()) {
    if (name == "__metadata__") {
      if (v.is_null()) continue;
      check(v.is_object(), "{}: __metadata__ must be an object of strings (got {})", what, v.type_name());
      for (const auto& [k, mv] : v.items()) {
        check(mv.is_string(), "{}: __metadata__ value for {} must be a string (got {})", what, q(k), mv.type_name());
        out.metadata[k] = mv.get<std::string>();
      }
      continue;
    }
    check(v.is_object(), "{}: tensor {}: entry must be an object (got {})", what, q(name), v.type_name());
    SafetensorInfo t;
    t.name = name;

    auto dt = v.find("dtype");
    check(dt != v.end(), "{}: tensor {}: missing 'dtype'", what, q(name));
    check(dt->is_string(), "{}: tensor {}: 'dtype' must be a string (got {})", what, q(name), dt->type_name());
    auto parsed = parseSafetensorsDType(dt->get_ref<const std::string&>());
    check(parsed.has_value(), "{}: tensor {}: unknown dtype {}", what, q(name), q(dt->get_ref<const std::string&>()));
    t.dtype = *parsed;

    auto sh = v.find("shape");
    check(sh != v.end(), "{}: tensor {}: missing 'shape'", what, q(name));
    check(sh->is_array(), "{}: tensor {}: 'shape' must be a list of non-negative integers (got {})", what, q(name),
          sh->type_name());
    for (const auto& d : *sh) {
      auto x = asU64(d);
      check(x.has_value() && *x <= uint64_t(INT64_MAX),
            "{}: tensor {}: 'shape' must be a list of non-negative integers (found a {} element{})", what, q(name),
            d.type_name(), d.is_number_integer() ? fmt::format(" {}", d.get<int64_t>()) : std::string());
      t.shape.push_back(int64_t(*x));
    }

    auto off = v.find("data_offsets");
    check(off != v.end(), "{}: tensor {}: missing 'data_offsets'", what, q(name));
    check(off->is_array() && off->size() == 2,
          "{}: tensor {}: 'data_offsets' must be a list of 2 non-negative integers (got {}{})", what, q(name),
          off->type_name(), off->is_array() ? fmt::format(" of {} elements", off->size()) : std::string());
    auto b = asU64((*off)[0]), e = asU64((*off)[1]);
    check(b.has_value() && e.has_value(), "{}: tensor {}: 'data_offsets' must be non-negative integers", what,
          q(name));
    t.begin = *b;
    t.end = *e;
    check(t.begin <= t.end, "{}: tensor {}: data_offsets begin {} > end {}", what, q(name), t.begin, t.end);

    auto need = byteSize(t.shape, dtypeSize(t.dtype));
    check(need.has_value(), "{}: tensor {}: shape {} overflows a 64-bit byte count", what, q(name),
          shapeStr(t.shape));
    check(*need == t.bytes(), "{}: tensor {}: dtype {} shape {} needs {} bytes but data_offsets [{}, {}] span {}",
          what, q(name), safetensorsDTypeName(t.dtype), shapeStr(t.shape), *need, t.begin, t.end, t.bytes());
    check(t.end <= dataBytes, "{}: tensor {}: data_offsets [{}, {}] run past end of file (data section is {} bytes)",
          what, q(name), t.begin, t.end, dataBytes);
    out.tensors.push_back(std::move(t));
  }

  std::sort(out.tensors.begin(), out.tensors.end(), [](const SafetensorInfo& a, const SafetensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  // After sorting by begin, a tensor overlaps an earlier one iff it starts before the furthest end so far.
  size_t far = 0;
  for (size_t i = 1; i < out.tensors.size(); i++) {
    const auto& t = out.tensors[i];
    const auto& p = out.tensors[far];
    check(t.begin >= p.end, "{}: tensors {} [{}, {}] and {} [{}, {}] overlap", what, q(p.name), p.begin, p.end,
          q(t.name), t.begin, t.end);
    if (t.end >= p.end) far = i;
  }
  return out;
}

// ---------------------------------------------------------------- SafetensorsFile

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  header_ = parseSafetensorsHeader(file_.data(), file_.size(), path);
  for (size_t i = 0; i < header_.tensors.size(); i++) index_.emplace(header_.tensors[i].name, i);
}

const SafetensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const uint8_t> SafetensorsFile::bytes(const SafetensorInfo& t) const {
  // Ranges were validated against the file size when the header was parsed.
  return {file_.data() + header_.dataStart + t.begin, size_t(t.bytes())};
}

// ---------------------------------------------------------------- SafetensorsCheckpoint

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), "{}: not a directory", dir);
  const fs::path indexPath = fs::path(dir) / "model.safetensors.index.json";
  const fs::path singlePath = fs::path(dir) / "model.safetensors";

  if (fs::exists(indexPath, ec)) {
    const std::string ip = indexPath.string();
    Json j = readJsonFile(ip);
    check(j.is_object(), "{}: not a JSON object (got {})", ip, j.type_name());
    auto wm = j.find("weight_map");
    check(wm != j.end(), "{}: missing 'weight_map'", ip);
    check(wm->is_object(), "{}: 'weight_map' must be an object {{tensor: file}} (got {})", ip, wm->type_name());
    check(!wm->empty(), "{}: 'weight_map' is empty", ip);

    std::map<std::string, std::vector<std::string>> byFile;  // file -> tensors
    for (const auto& [tensor, file] : wm->items()) {
      check(file.is_string(), "{}: weight_map[{}] must be a file name string (got {})", ip, q(tensor),
            file.type_name());
      const std::string& f = file.get_ref<const std::string&>();
      fs::path fp(f);
      bool bad = f.empty() || fp.is_absolute();
      for (const auto& part : fp) bad = bad || part == "..";
      check(!bad, "{}: weight_map[{}] names {}, which is not a file inside the checkpoint directory", ip, q(tensor),
            q(f));
      byFile[f].push_back(tensor);
    }
    for (const auto& [f, tensors] : byFile) {
      const std::string fp = (fs::path(dir) / f).string();
      check(fs::exists(fp, ec), "{}: weight_map names {} (for {} tensors, e.g. {}) but {} does not exist", ip, q(f),
            tensors.size(), q(tensors.front()), fp);
      files_.push_back(std::make_unique<SafetensorsFile>(fp));
      const SafetensorsFile* sf = files_.back().get();
      for (const auto& t : tensors) {
        const SafetensorInfo* info = sf->find(t);
        check(info != nullptr, "{}: tensor {} is mapped to {} but that file has no such tensor", ip, q(t), fp);
        entries_.emplace(t, Entry{sf, info});
      }
    }
  } else if (fs::exists(singlePath, ec)) {
    files_.push_back(std::make_unique<SafetensorsFile>(singlePath.string()));
    const SafetensorsFile* sf = files_.back().get();
    for (const auto& t : sf->tensors()) entries_.emplace(t.name, Entry{sf, &t});
  } else {
    fail("{}: no model.safetensors or model.safetensors.index.json in this directory", dir);
  }
  names_.reserve(entries_.size());
  for (const auto& [name, e] : entries_) names_.push_back(name);
}

SafetensorsCheckpoint::Entry SafetensorsCheckpoint::get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) fail("{}: checkpoint has no tensor {}", dir_, q(name));
  return it->second;
}

bool SafetensorsCheckpoint::has(const std::string& name) const { return entries_.count(name) != 0; }

// ---------------------------------------------------------------- writer

void writeSafetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  Json h = Json::object();
  if (!metadata.empty()) {
    Json m = Json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = std::move(m);
  }
  uint64_t off = 0;
  for (const auto& [name, dt, shape, bytes] : tensors) {
    check(name != "__metadata__", "{}: '__metadata__' cannot be a tensor name", path);
    check(!h.contains(name), "{}: duplicate tensor {}", path, q(name));
    for (int64_t d : shape) check(d >= 0, "{}: tensor {}: negative dimension in shape {}", path, q(name), shapeStr(shape));
    auto need = byteSize(shape, dtypeSize(dt));
    check(need.has_value() && *need == bytes.size(), "{}: tensor {}: dtype {} shape {} needs {} bytes, got {}", path,
          q(name), safetensorsDTypeName(dt), shapeStr(shape), need ? fmt::format("{}", *need) : "too many",
          bytes.size());
    h[name] = Json{{"dtype", std::string(safetensorsDTypeName(dt))},
                   {"shape", shape},
                   {"data_offsets", Json::array({off, off + bytes.size()})}};
    off += bytes.size();
  }
  std::string s = h.dump();
  s.append((8 - s.size() % 8) % 8, ' ');

  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail("{}: cannot open for writing", path);
  uint8_t len[8];
  uint64_t n = s.size();
  for (int i = 0; i < 8; i++) len[i] = uint8_t(n >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(s.data(), std::streamsize(s.size()));
  for (const auto& item : tensors) {
    const auto& bytes = std::get<3>(item);
    if (!bytes.empty()) f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  f.close();
  if (!f) fail("{}: write failed", path);
}

}  // namespace doppler

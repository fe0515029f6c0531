#include "format/rdrr_manifest.h"

#include <algorithm>
#include <charconv>
#include <set>

#include "core/error.h"
#include "core/json_util.h"
#include "format/hf_config.h"

namespace doppler {

namespace {

constexpr int64_t kMaxDim = int64_t(1) << 48;
constexpr int kMaxSliceCount = 65536;
constexpr int kMaxLayer = 1 << 20;
constexpr size_t kMaxNameLen = 512;

constexpr struct {
  TensorRole r;
  const char* name;
} kRoles[] = {
    {TensorRole::Embedding, "embedding"}, {TensorRole::Head, "head"},     {TensorRole::Norm, "norm"},
    {TensorRole::Attention, "attention"}, {TensorRole::Router, "router"}, {TensorRole::Ffn, "ffn"},
    {TensorRole::Expert, "expert"},       {TensorRole::SharedExpert, "shared_expert"},
};

// Hostile strings go into one-line messages: escape anything unprintable and cap the length.
std::string q(std::string_view s) {
  std::string out = "'";
  size_t n = 0;
  for (unsigned char c : s) {
    if (++n > 80) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\'') out += char(c);
    else out += fmt::format("\\x{:02x}", c);
  }
  return out + "'";
}

std::string brief(const Json& v) {
  std::string s = v.dump(-1, ' ', true, Json::error_handler_t::replace);
  if (s.size() > 40) s = s.substr(0, 40) + "...";
  return s;
}

bool isPrintableName(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameLen) return false;
  for (unsigned char c : s)
    if (c <= 0x20 || c >= 0x7f) return false;
  return true;
}

bool isHexDigest(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// Parses a non-negative decimal integer without sign or leading zeros; nullopt otherwise.
std::optional<int64_t> parseIndex(std::string_view s) {
  if (s.empty() || s.size() > 9 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  int64_t v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t b = 0;
  for (;;) {
    size_t e = s.find(sep, b);
    out.push_back(s.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b));
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return out;
}

// ---- typed field access: every failure names the file and the field ----
struct Reader {
  const std::string& what;

  const Json& field(const Json& obj, const char* key, const std::string& where) const {
    auto it = obj.find(key);
    if (it == obj.end()) fail("{}: {}: '{}' is missing", what, where, key);
    return *it;
  }
  uint64_t u64(const Json& v, const std::string& where, const char* key) const {
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    if (v.is_number_integer() && v.get<int64_t>() >= 0) return uint64_t(v.get<int64_t>());
    fail("{}: {}: '{}' must be a non-negative integer, got {}", what, where, key, brief(v));
  }
  int64_t i64(const Json& v, const std::string& where, const char* key, int64_t lo, int64_t hi) const {
    int64_t x;
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > uint64_t(hi)) fail("{}: {}: '{}' = {} is out of range [{}, {}]", what, where, key, u, lo, hi);
      x = int64_t(u);
    } else if (v.is_number_integer()) {
      x = v.get<int64_t>();
    } else {
      fail("{}: {}: '{}' must be an integer, got {}", what, where, key, brief(v));
    }
    if (x < lo || x > hi) fail("{}: {}: '{}' = {} is out of range [{}, {}]", what, where, key, x, lo, hi);
    return x;
  }
  std::string str(const Json& v, const std::string& where, const char* key) const {
    if (!v.is_string()) fail("{}: {}: '{}' must be a string, got {}", what, where, key, brief(v));
    return v.get<std::string>();
  }
  std::vector<int64_t> shape(const Json& v, const std::string& where, const char* key) const {
    if (!v.is_array()) fail("{}: {}: '{}' must be a list of integers, got {}", what, where, key, brief(v));
    if (v.size() > 8) fail("{}: {}: '{}' has {} dimensions (at most 8)", what, where, key, v.size());
    std::vector<int64_t> out;
    for (const auto& d : v) {
      if (!(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0)))
        fail("{}: {}: '{}' must hold non-negative integers, got {}", what, where, key, brief(d));
      uint64_t u = d.is_number_unsigned() ? d.get<uint64_t>() : uint64_t(d.get<int64_t>());
      if (u > uint64_t(kMaxDim)) fail("{}: {}: '{}' dimension {} is too large", what, where, key, u);
      out.push_back(int64_t(u));
    }
    return out;
  }
};

// numel * elemSize with overflow detection; nullopt on overflow.
std::optional<uint64_t> byteCount(const std::vector<int64_t>& shape, size_t elemSize) {
  uint64_t n = elemSize;
  for (auto d : shape)
    if (__builtin_mul_overflow(n, uint64_t(d), &n)) return std::nullopt;
  return n;
}

struct GroupName {
  enum Kind { Embedding, Head, Final, Dense, Expert } kind;
  int layer = -1, expert = -1;
};
std::optional<GroupName> parseGroupName(std::string_view g) {
  if (g == kEmbeddingGroup) return GroupName{GroupName::Embedding};
  if (g == kHeadGroup) return GroupName{GroupName::Head};
  if (g == kFinalGroup) return GroupName{GroupName::Final};
  auto parts = split(g, '.');
  if (parts.size() < 3 || parts[0] != "layer") return std::nullopt;
  auto l = parseIndex(parts[1]);
  if (!l || *l > kMaxLayer) return std::nullopt;
  if (parts.size() == 3 && parts[2] == "dense") return GroupName{GroupName::Dense, int(*l)};
  if (parts.size() == 4 && parts[2] == "expert") {
    auto e = parseIndex(parts[3]);
    if (!e || *e > kMaxLayer) return std::nullopt;
    return GroupName{GroupName::Expert, int(*l), int(*e)};
  }
  return std::nullopt;
}

}  // namespace

std::string_view roleName(TensorRole r) {
  for (const auto& x : kRoles)
    if (x.r == r) return x.name;
  return "?";
}

std::optional<TensorRole> parseRoleName(std::string_view s) {
  for (const auto& x : kRoles)
    if (s == x.name) return x.r;
  return std::nullopt;
}

std::string RdrrTensor::logicalName() const {
  auto pos = name.find('#');
  return pos == std::string::npos ? name : name.substr(0, pos);
}

int64_t RdrrTensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string expertGroupName(int layer, int expert) { return fmt::format("layer.{}.expert.{}", layer, expert); }
std::string denseGroupName(int layer) { return fmt::format("layer.{}.dense", layer); }

bool isSafeFileName(std::string_view s) {
  if (s.empty() || s.size() > 255 || s[0] == '.') return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == '-'))
      return false;
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// Validation of an in-memory manifest (shared by the parser and the converter).

void validateManifest(const Manifest& m, const std::string& what) {
  check(m.formatVersion == kRdrrFormatVersion, "{}: 'formatVersion' is {}, this doppler reads version {}", what,
        m.formatVersion, kRdrrFormatVersion);
  check(m.hashAlgorithm == "sha256", "{}: 'hashAlgorithm' is {}, expected 'sha256'", what, q(m.hashAlgorithm));
  check(parseArchName(m.architecture).has_value(), "{}: 'architecture' {} is not supported (supported: {})", what,
        q(m.architecture), supportedArchList());
  check(m.config.is_object(), "{}: 'config' must be an object", what);

  // Files.
  std::set<std::string> fileNames;
  for (size_t i = 0; i < m.tokenizerFiles.size(); i++) {
    const auto& f = m.tokenizerFiles[i];
    check(isSafeFileName(f.filename), "{}: tokenizerFiles[{}]: unsafe file name {} (a plain name is required)", what,
          i, q(f.filename));
    check(isHexDigest(f.hash), "{}: tokenizerFiles[{}] ({}): 'hash' must be 64 lowercase hex digits", what, i,
          f.filename);
    check(fileNames.insert(f.filename).second, "{}: tokenizerFiles[{}]: duplicate file name {}", what, i,
          q(f.filename));
  }
  check(fileNames.count(kRdrrManifestName) == 0, "{}: tokenizerFiles names the manifest itself", what);
  for (size_t i = 0; i < m.shards.size(); i++) {
    const auto& s = m.shards[i];
    check(s.index == int(i), "{}: shards[{}]: 'index' is {}, expected {}", what, i, s.index, i);
    check(isSafeFileName(s.filename), "{}: shards[{}]: unsafe file name {} (a plain name is required)", what, i,
          q(s.filename));
    check(s.filename != kRdrrManifestName, "{}: shards[{}]: file name is the manifest's", what, i);
    check(isHexDigest(s.hash), "{}: shards[{}] ({}): 'hash' must be 64 lowercase hex digits", what, i, s.filename);
    check(fileNames.insert(s.filename).second, "{}: shards[{}]: file name {} is used twice", what, i,
          q(s.filename));
  }

  // Tensors.
  std::map<std::string, std::vector<const RdrrTensor*>> slicesOf;  // logical -> slices (sliced tensors)
  std::vector<std::vector<const RdrrTensor*>> byShard(m.shards.size());
  for (const auto& [key, t] : m.tensors) {
    std::string where = "tensor " + q(key);
    check(isPrintableName(key), "{}: tensor {}: name must be 1..{} printable characters without spaces", what,
          q(key), kMaxNameLen);
    check(t.name == key, "{}: {}: entry name {} differs from its key", what, where, q(t.name));
    check(t.shard >= 0 && size_t(t.shard) < m.shards.size(), "{}: {}: 'shard' {} is out of range (the model has {} shards)",
          what, where, t.shard, m.shards.size());
    const RdrrShard& sh = m.shards[size_t(t.shard)];
    auto expect = byteCount(t.shape, dtypeSize(t.dtype));
    check(expect.has_value(), "{}: {}: shape {} overflows", what, where, shapeString(t.shape));
    if (const int64_t bs = dtypeBlockSize(t.dtype); bs > 1) {  // block types (mxfp4): dtypeSize is per block
      check(t.shape.size() == 2 && t.shape[1] % bs == 0 && t.layout == Layout::Row && t.sliceDim == -1,
            "{}: {}: {} needs an unsliced row-major matrix with rows of whole {}-value blocks, got {} {}", what,
            where, dtypeName(t.dtype), bs, layoutName(t.layout), shapeString(t.shape));
      *expect /= uint64_t(bs);
    }
    check(*expect == t.size, "{}: {}: 'size' is {} bytes but shape {} of {} needs {}", what, where, t.size,
          shapeString(t.shape), dtypeName(t.dtype), *expect);
    uint64_t end;
    check(!__builtin_add_overflow(t.offset, t.size, &end), "{}: {}: 'offset' + 'size' overflows", what, where);
    check(end <= sh.size, "{}: {}: bytes [{}, {}) are past the end of shard {} ({}, {} bytes)", what, where,
          t.offset, end, t.shard, sh.filename, sh.size);
    check(t.layout == Layout::Row || t.shape.size() == 2, "{}: {}: layout 'column' needs a 2-D tensor, shape is {}",
          what, where, shapeString(t.shape));
    check(t.layer >= -1 && t.layer <= kMaxLayer, "{}: {}: 'layer' {} is out of range", what, where, t.layer);
    check(t.expert >= -1 && t.expert <= kMaxLayer, "{}: {}: 'expert' {} is out of range", what, where, t.expert);
    check((t.role == TensorRole::Expert) == (t.expert >= 0),
          "{}: {}: 'expert' is {} but role is '{}' (only role 'expert' has an expert index)", what, where, t.expert,
          roleName(t.role));
    check(t.expert < 0 || t.layer >= 0, "{}: {}: an expert tensor needs a layer", what, where);
    if (m.moe && t.expert >= 0)
      check(t.expert < m.moe->numExperts, "{}: {}: 'expert' {} >= moe.numExperts {}", what, where, t.expert,
            m.moe->numExperts);
    if (t.sliceDim == -1) {
      check(t.sliceIdx == 0 && t.sliceCount == 1,
            "{}: {}: an unsliced tensor (sliceDim -1) needs sliceIdx 0 and sliceCount 1, got {} and {}", what,
            where, t.sliceIdx, t.sliceCount);
      check(t.originalShape == t.shape, "{}: {}: 'originalShape' {} differs from 'shape' {} of an unsliced tensor",
            what, where, shapeString(t.originalShape), shapeString(t.shape));
      check(key.find('#') == std::string::npos, "{}: {}: only slices may have '#' in their name", what, where);
    } else {
      check(t.sliceDim == 1, "{}: {}: 'sliceDim' must be -1 or 1, got {}", what, where, t.sliceDim);
      check(t.shape.size() == 2, "{}: {}: a sliced tensor must be 2-D, shape is {}", what, where,
            shapeString(t.shape));
      check(t.sliceCount >= 2 && t.sliceCount <= kMaxSliceCount, "{}: {}: 'sliceCount' {} is out of range [2, {}]",
            what, where, t.sliceCount, kMaxSliceCount);
      check(t.sliceIdx >= 0 && t.sliceIdx < t.sliceCount, "{}: {}: 'sliceIdx' {} is not below 'sliceCount' {}",
            what, where, t.sliceIdx, t.sliceCount);
      check(t.originalShape.size() == 2 && t.originalShape[0] == t.shape[0] &&
                t.originalShape[1] == t.shape[1] * t.sliceCount,
            "{}: {}: 'originalShape' {} does not match {} slices of shape {} along dim 1", what, where,
            shapeString(t.originalShape), t.sliceCount, shapeString(t.shape));
      auto pos = key.find('#');
      check(pos != std::string::npos && key.substr(pos + 1) == std::to_string(t.sliceIdx),
            "{}: {}: a slice must be named '<name>#{}'", what, where, t.sliceIdx);
      slicesOf[key.substr(0, pos)].push_back(&t);
    }
    if (t.size > 0) byShard[size_t(t.shard)].push_back(&t);
  }
  for (const auto& [base, sl] : slicesOf) {
    const RdrrTensor& a = *sl.front();
    check(m.tensors.count(base) == 0, "{}: tensor {} is stored both whole and as slices", what, q(base));
    check(sl.size() == size_t(a.sliceCount), "{}: tensor {} has {} slices stored, 'sliceCount' says {}", what,
          q(base), sl.size(), a.sliceCount);
    for (const RdrrTensor* b : sl)
      check(b->sliceCount == a.sliceCount && b->dtype == a.dtype && b->layout == a.layout &&
                b->originalShape == a.originalShape && b->role == a.role && b->layer == a.layer &&
                b->expert == a.expert,
            "{}: slices {} and {} disagree on sliceCount/dtype/layout/originalShape/role/layer/expert", what,
            q(a.name), q(b->name));
  }
  for (size_t s = 0; s < byShard.size(); s++) {
    auto& v = byShard[s];
    std::sort(v.begin(), v.end(), [](const RdrrTensor* a, const RdrrTensor* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < v.size(); i++)
      check(v[i - 1]->offset + v[i - 1]->size <= v[i]->offset,
            "{}: tensors {} and {} overlap in shard {} ({}): [{}, {}) and [{}, {})", what, q(v[i - 1]->name),
            q(v[i]->name), s, m.shards[s].filename, v[i - 1]->offset, v[i - 1]->offset + v[i - 1]->size,
            v[i]->offset, v[i]->offset + v[i]->size);
  }

  // Groups.
  std::map<std::string, std::string> groupOf;
  for (const auto& [g, members] : m.groups) {
    auto gn = parseGroupName(g);
    check(gn.has_value(),
          "{}: group {}: unknown group name (expected embedding, head, final, layer.L.dense or layer.L.expert.E)",
          what, q(g));
    check(!members.empty(), "{}: group {} is empty", what, q(g));
    uint64_t bytes = 0;
    int shard = -1;
    for (const auto& name : members) {
      auto it = m.tensors.find(name);
      check(it != m.tensors.end(), "{}: group {} names unknown tensor {}", what, q(g), q(name));
      const RdrrTensor& t = it->second;
      auto [pos, fresh] = groupOf.emplace(name, g);
      check(fresh, "{}: tensor {} is in two groups ({} and {})", what, q(name), q(pos->second), q(g));
      check(shard < 0 || t.shard == shard, "{}: group {} spans shards {} and {} (a group lies in one shard)", what,
            q(g), shard, t.shard);
      shard = t.shard;
      bytes += t.size;
      if (gn->kind == GroupName::Expert)
        check(t.role == TensorRole::Expert && t.layer == gn->layer && t.expert == gn->expert,
              "{}: group {} holds tensor {} of role '{}', layer {}, expert {}", what, q(g), q(name),
              roleName(t.role), t.layer, t.expert);
      else if (gn->kind == GroupName::Dense)
        check(t.layer == gn->layer && t.expert < 0, "{}: group {} holds tensor {} of layer {}, expert {}", what,
              q(g), q(name), t.layer, t.expert);
    }
    if (gn->kind == GroupName::Expert) {
      check(m.moe.has_value(), "{}: group {} is an expert group but the manifest has no 'moe' section", what, q(g));
      check(bytes == m.moe->expertBytes, "{}: group {} holds {} bytes, moe.expertBytes is {}", what, q(g), bytes,
            m.moe->expertBytes);
    }
  }
  for (const auto& [key, t] : m.tensors)
    check(groupOf.count(key) == 1, "{}: tensor {} is in no group", what, q(key));
  if (m.moe) {
    check(m.moe->numExperts >= 1, "{}: moe.numExperts must be >= 1", what);
    check(m.moe->topK >= 1 && m.moe->topK <= m.moe->numExperts, "{}: moe.topK {} is out of range [1, {}]", what,
          m.moe->topK, m.moe->numExperts);
  }

  // Fused tensors.
  std::set<std::string> partNames;
  for (const auto& [fname, f] : m.fused) {
    std::string where = "fused " + q(fname);
    check(f.name == fname, "{}: {}: name differs from its key", what, where);
    auto it = m.tensors.find(fname);
    check(it != m.tensors.end(), "{}: {}: no stored tensor of that name", what, where);
    const RdrrTensor& t = it->second;
    check(t.sliceDim == -1 && t.layout == Layout::Row && !t.shape.empty(),
          "{}: {}: a fused tensor must be stored whole, in row layout, with at least one dimension", what, where);
    check(f.dim == 0, "{}: {}: 'dim' must be 0", what, where);
    check(!f.parts.empty(), "{}: {}: 'parts' is empty", what, where);
    int64_t next = 0;
    for (const auto& p : f.parts) {
      check(isPrintableName(p.name) && p.name.find('#') == std::string::npos, "{}: {}: bad part name {}", what,
            where, q(p.name));
      check(m.tensors.count(p.name) == 0, "{}: {}: part {} is also stored as a tensor", what, where, q(p.name));
      check(m.fused.count(p.name) == 0, "{}: {}: part {} is itself fused", what, where, q(p.name));
      check(partNames.insert(p.name).second, "{}: {}: part {} appears twice", what, where, q(p.name));
      check(p.start == next && p.count >= 1 && p.count <= t.shape[0] - next,
            "{}: {}: part {} rows [{}, {}) do not continue the tiling of [0, {}) at {}", what, where, q(p.name),
            p.start, p.start + p.count, t.shape[0], next);
      next += p.count;
    }
    check(next == t.shape[0], "{}: {}: parts cover {} rows of {}", what, where, next, t.shape[0]);
  }
}

// ---------------------------------------------------------------------------------------------------------

Manifest parseManifest(std::string_view text, const std::string& what) {
  try {
    Json j = parseJson(text, what);
    Reader r{what};
    check(j.is_object(), "{}: the manifest must be a JSON object", what);
    Manifest m;
    const std::string top = "manifest";
    m.formatVersion = int(r.i64(r.field(j, "formatVersion", top), top, "formatVersion", 0, 1 << 30));
    check(m.formatVersion == kRdrrFormatVersion, "{}: 'formatVersion' is {}, this doppler reads version {}", what,
          m.formatVersion, kRdrrFormatVersion);
    m.modelId = r.str(r.field(j, "modelId", top), top, "modelId");
    m.architecture = r.str(r.field(j, "architecture", top), top, "architecture");
    m.config = r.field(j, "config", top);
    check(m.config.is_object(), "{}: 'config' must be an object, got {}", what, brief(m.config));
    m.hashAlgorithm = r.str(r.field(j, "hashAlgorithm", top), top, "hashAlgorithm");

    const Json& tf = r.field(j, "tokenizerFiles", top);
    check(tf.is_array(), "{}: 'tokenizerFiles' must be a list", what);
    for (size_t i = 0; i < tf.size(); i++) {
      std::string where = fmt::format("tokenizerFiles[{}]", i);
      const Json& e = tf[i];
      check(e.is_object(), "{}: {} must be an object", what, where);
      RdrrFile f;
      f.filename = r.str(r.field(e, "filename", where), where, "filename");
      f.size = r.u64(r.field(e, "size", where), where, "size");
      f.hash = r.str(r.field(e, "hash", where), where, "hash");
      m.tokenizerFiles.push_back(std::move(f));
    }

    const Json& shards = r.field(j, "shards", top);
    check(shards.is_array(), "{}: 'shards' must be a list", what);
    for (size_t i = 0; i < shards.size(); i++) {
      std::string where = fmt::format("shards[{}]", i);
      const Json& e = shards[i];
      check(e.is_object(), "{}: {} must be an object", what, where);
      RdrrShard s;
      s.index = int(r.i64(r.field(e, "index", where), where, "index", 0, 1 << 30));
      s.filename = r.str(r.field(e, "filename", where), where, "filename");
      s.size = r.u64(r.field(e, "size", where), where, "size");
      s.hash = r.str(r.field(e, "hash", where), where, "hash");
      m.shards.push_back(std::move(s));
    }

    const Json& tensors = r.field(j, "tensors", top);
    check(tensors.is_object(), "{}: 'tensors' must be an object", what);
    for (const auto& [key, e] : tensors.items()) {
      std::string where = "tensor " + q(key);
      check(e.is_object(), "{}: {} must be an object", what, where);
      RdrrTensor t;
      t.name = key;
      t.shard = int(r.i64(r.field(e, "shard", where), where, "shard", 0, 1 << 30));
      t.offset = r.u64(r.field(e, "offset", where), where, "offset");
      t.size = r.u64(r.field(e, "size", where), where, "size");
      t.shape = r.shape(r.field(e, "shape", where), where, "shape");
      std::string dt = r.str(r.field(e, "dtype", where), where, "dtype");
      auto d = parseDTypeName(dt);
      check(d.has_value(), "{}: {}: unknown dtype {}", what, where, q(dt));
      t.dtype = *d;
      std::string lay = r.str(r.field(e, "layout", where), where, "layout");
      check(lay == "row" || lay == "column", "{}: {}: 'layout' must be 'row' or 'column', got {}", what, where,
            q(lay));
      t.layout = lay == "row" ? Layout::Row : Layout::Column;
      t.originalShape = r.shape(r.field(e, "originalShape", where), where, "originalShape");
      t.sliceDim = int(r.i64(r.field(e, "sliceDim", where), where, "sliceDim", -1, 8));
      t.sliceIdx = int(r.i64(r.field(e, "sliceIdx", where), where, "sliceIdx", 0, kMaxSliceCount));
      t.sliceCount = int(r.i64(r.field(e, "sliceCount", where), where, "sliceCount", 1, kMaxSliceCount));
      std::string role = r.str(r.field(e, "role", where), where, "role");
      auto ro = parseRoleName(role);
      check(ro.has_value(), "{}: {}: unknown role {}", what, where, q(role));
      t.role = *ro;
      t.layer = int(r.i64(r.field(e, "layer", where), where, "layer", -1, kMaxLayer));
      t.expert = int(r.i64(r.field(e, "expert", where), where, "expert", -1, kMaxLayer));
      m.tensors.emplace(key, std::move(t));
    }

    const Json& groups = r.field(j, "groups", top);
    check(groups.is_object(), "{}: 'groups' must be an object", what);
    for (const auto& [g, members] : groups.items()) {
      std::string where = "group " + q(g);
      check(members.is_array(), "{}: {} must be a list of tensor names", what, where);
      std::vector<std::string> names;
      for (const auto& n : members) names.push_back(r.str(n, where, "member"));
      m.groups.emplace(g, std::move(names));
    }

    auto moe = j.find("moe");
    if (moe != j.end() && !moe->is_null()) {
      check(moe->is_object(), "{}: 'moe' must be an object or null", what);
      RdrrMoe mo;
      mo.numExperts = r.i64(r.field(*moe, "numExperts", "moe"), "moe", "numExperts", 1, kMaxLayer);
      mo.topK = r.i64(r.field(*moe, "topK", "moe"), "moe", "topK", 1, kMaxLayer);
      mo.expertBytes = r.u64(r.field(*moe, "expertBytes", "moe"), "moe", "expertBytes");
      m.moe = mo;
    }

    std::string dl = r.str(r.field(j, "defaultWeightLayout", top), top, "defaultWeightLayout");
    check(dl == "row" || dl == "column", "{}: 'defaultWeightLayout' must be 'row' or 'column', got {}", what, q(dl));
    m.defaultWeightLayout = dl == "row" ? Layout::Row : Layout::Column;

    auto fused = j.find("fused");
    if (fused != j.end() && !fused->is_null()) {
      check(fused->is_object(), "{}: 'fused' must be an object", what);
      for (const auto& [fname, e] : fused->items()) {
        std::string where = "fused " + q(fname);
        check(e.is_object(), "{}: {} must be an object", what, where);
        RdrrFused f;
        f.name = fname;
        f.dim = int(r.i64(r.field(e, "dim", where), where, "dim", 0, 8));
        const Json& parts = r.field(e, "parts", where);
        check(parts.is_array(), "{}: {}: 'parts' must be a list", what, where);
        for (const auto& p : parts) {
          check(p.is_object(), "{}: {}: each part must be an object", what, where);
          RdrrFusedPart fp;
          fp.name = r.str(r.field(p, "name", where), where, "name");
          fp.start = r.i64(r.field(p, "start", where), where, "start", 0, kMaxDim);
          fp.count = r.i64(r.field(p, "count", where), where, "count", 0, kMaxDim);
          f.parts.push_back(std::move(fp));
        }
        m.fused.emplace(fname, std::move(f));
      }
    }

    validateManifest(m, what);
    return m;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // nlohmann type errors and the like: still one line naming the file.
    std::string msg = e.what();
    for (auto& c : msg)
      if (c == '\n' || c == '\r') c = ' ';
    fail("{}: invalid manifest: {}", what, msg);
  }
}

// ---------------------------------------------------------------------------------------------------------

std::string manifestToJson(const Manifest& m) {
  // Written by hand around small nlohmann dumps: one tensor per line (greppable), tensors and groups in
  // storage order, and linear time for manifests of 100k tensors.
  auto str = [](const std::string& s) { return Json(s).dump(-1, ' ', false, Json::error_handler_t::replace); };
  std::string out = "{\n";
  out += fmt::format(" \"formatVersion\": {},\n", m.formatVersion);
  out += fmt::format(" \"modelId\": {},\n", str(m.modelId));
  out += fmt::format(" \"architecture\": {},\n", str(m.architecture));
  out += fmt::format(" \"hashAlgorithm\": {},\n", str(m.hashAlgorithm));
  out += fmt::format(" \"defaultWeightLayout\": \"{}\",\n", layoutName(m.defaultWeightLayout));
  if (m.moe)
    out += fmt::format(" \"moe\": {{\"numExperts\": {}, \"topK\": {}, \"expertBytes\": {}}},\n", m.moe->numExperts,
                       m.moe->topK, m.moe->expertBytes);
  else
    out += " \"moe\": null,\n";
  out += " \"tokenizerFiles\": [";
  for (size_t i = 0; i < m.tokenizerFiles.size(); i++) {
    const auto& f = m.tokenizerFiles[i];
    out += fmt::format("{}\n  {{\"filename\": {}, \"size\": {}, \"hash\": \"{}\"}}", i ? "," : "", str(f.filename),
                       f.size, f.hash);
  }
  out += m.tokenizerFiles.empty() ? "],\n" : "\n ],\n";
  out += " \"shards\": [";
  for (size_t i = 0; i < m.shards.size(); i++) {
    const auto& s = m.shards[i];
    out += fmt::format("{}\n  {{\"index\": {}, \"filename\": {}, \"size\": {}, \"hash\": \"{}\"}}", i ? "," : "",
                       s.index, str(s.filename), s.size, s.hash);
  }
  out += m.shards.empty() ? "],\n" : "\n ],\n";

  std::vector<const RdrrTensor*> order;
  for (const auto& [k, t] : m.tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const RdrrTensor* a, const RdrrTensor* b) {
    return a->shard != b->shard ? a->shard < b->shard : a->offset < b->offset;
  });
  auto shapeJson = [](const std::vector<int64_t>& v) { return Json(v).dump(); };
  out += " \"tensors\": {";
  for (size_t i = 0; i < order.size(); i++) {
    const RdrrTensor* t = order[i];
    out += fmt::format(
        "{}\n  {}: {{\"shard\": {}, \"offset\": {}, \"size\": {}, \"shape\": {}, \"dtype\": \"{}\", "
        "\"layout\": \"{}\", \"originalShape\": {}, \"sliceDim\": {}, \"sliceIdx\": {}, \"sliceCount\": {}, "
        "\"role\": \"{}\", \"layer\": {}, \"expert\": {}}}",
        i ? "," : "", str(t->name), t->shard, t->offset, t->size, shapeJson(t->shape), dtypeName(t->dtype),
        layoutName(t->layout), shapeJson(t->originalShape), t->sliceDim, t->sliceIdx, t->sliceCount,
        roleName(t->role), t->layer, t->expert);
  }
  out += order.empty() ? "},\n" : "\n },\n";

  std::map<std::string, std::pair<int, uint64_t>> firstPos;
  for (const auto& [g, members] : m.groups) {
    std::pair<int, uint64_t> p{1 << 30, ~uint64_t(0)};
    for (const auto& n : members) {
      auto it = m.tensors.find(n);
      if (it != m.tensors.end()) p = std::min(p, std::make_pair(it->second.shard, it->second.offset));
    }
    firstPos[g] = p;
  }
  std::vector<std::string> gorder;
  for (const auto& [g, _] : m.groups) gorder.push_back(g);
  std::stable_sort(gorder.begin(), gorder.end(),
                   [&](const std::string& a, const std::string& b) { return firstPos[a] < firstPos[b]; });
  out += " \"groups\": {";
  for (size_t i = 0; i < gorder.size(); i++)
    out += fmt::format("{}\n  {}: {}", i ? "," : "", str(gorder[i]), Json(m.groups.at(gorder[i])).dump());
  out += gorder.empty() ? "},\n" : "\n },\n";

  if (!m.fused.empty()) {
    out += " \"fused\": {";
    size_t i = 0;
    for (const auto& [n, f] : m.fused) {
      Json parts = Json::array();
      for (const auto& p : f.parts) parts.push_back(Json{{"name", p.name}, {"start", p.start}, {"count", p.count}});
      out += fmt::format("{}\n  {}: {{\"dim\": {}, \"parts\": {}}}", i++ ? "," : "", str(n), f.dim, parts.dump());
    }
    out += "\n },\n";
  }
  // The original config.json object goes last (the least interesting part when reading the file).
  out += " \"config\": " + m.config.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n}\n";
  return out;
}

}  // namespace doppler

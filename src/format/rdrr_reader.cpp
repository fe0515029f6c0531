#include "format/rdrr_reader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/fs_util.h"
#include "core/sha256.h"

namespace doppler {

namespace {
constexpr int kMaxOpenFds = 128;
}

struct RdrrModel::Fd {
  int fd = -1;
  std::string path;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

RdrrModel::~RdrrModel() = default;

std::unique_ptr<RdrrModel> RdrrModel::open(const std::string& dirIn, ShardFetcher fetcher) {
  std::string dir = dirIn;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::string mpath = joinPath(dir, kRdrrManifestName);
  if (!isRegularFile(mpath)) {
    if (!isDirectory(dir)) fail("{}: no such model directory", dir);
    fail("{}: not an RDRR model directory (no {})", dir, kRdrrManifestName);
  }
  std::unique_ptr<RdrrModel> m(new RdrrModel());
  m->dir_ = dir;
  m->manifest_ = parseManifest(readFile(mpath), mpath);
  const Manifest& mf = m->manifest_;
  m->config_ = parseHfConfig(mf.config, mpath + " (config)");
  check(archName(m->config_.arch) == mf.architecture, "{}: 'architecture' is '{}' but the config is '{}'", mpath,
        mf.architecture, archName(m->config_.arch));

  m->fetcher_ = std::move(fetcher);
  m->present_.assign(mf.shards.size(), 1);
  for (const auto& s : mf.shards) {
    std::string p = joinPath(dir, s.filename);
    if (m->fetcher_ && !isRegularFile(p)) {
      m->present_[size_t(s.index)] = 0;  // fetched on first use
      continue;
    }
    check(isRegularFile(p), "{}: shard {} is missing", p, s.index);
    uint64_t sz = fileSize(p);
    check(sz == s.size, "{}: shard {} is {} bytes, the manifest says {}", p, s.index, sz, s.size);
  }
  for (const auto& f : mf.tokenizerFiles) {
    std::string p = joinPath(dir, f.filename);
    check(isRegularFile(p), "{}: tokenizer file is missing", p);
    uint64_t sz = fileSize(p);
    check(sz == f.size, "{}: tokenizer file is {} bytes, the manifest says {}", p, sz, f.size);
  }
  m->fds_.resize(mf.shards.size());
  m->maps_.resize(mf.shards.size());

  // Logical index.
  for (const auto& [key, t] : mf.tensors) {
    if (t.sliceDim == -1) {
      Logical l;
      l.kind = Logical::Whole;
      l.entries = {&t};
      l.shape = t.shape;
      l.dtype = t.dtype;
      l.layout = t.layout;
      m->logical_.emplace(key, std::move(l));
    } else {
      Logical& l = m->logical_[t.logicalName()];
      l.kind = Logical::Sliced;
      if (l.entries.empty()) l.entries.resize(size_t(t.sliceCount), nullptr);
      l.entries[size_t(t.sliceIdx)] = &t;
      l.shape = t.originalShape;
      l.dtype = t.dtype;
      l.layout = t.layout;
    }
  }
  for (const auto& [fname, f] : mf.fused) {
    const RdrrTensor& t = mf.tensors.at(fname);
    for (const auto& p : f.parts) {
      Logical l;
      l.kind = Logical::FusedPart;
      l.entries = {&t};
      l.rowStart = p.start;
      l.shape = t.shape;
      l.shape[0] = p.count;
      l.dtype = t.dtype;
      l.layout = t.layout;
      m->logical_.emplace(p.name, std::move(l));
    }
  }
  return m;
}

std::string RdrrModel::shardPath(int shard) const {
  check(shard >= 0 && size_t(shard) < manifest_.shards.size(), "{}: shard {} is out of range (the model has {})",
        dir_, shard, manifest_.shards.size());
  return joinPath(dir_, manifest_.shards[size_t(shard)].filename);
}

const RdrrModel::Logical& RdrrModel::logical(const std::string& name) const {
  auto it = logical_.find(name);
  if (it == logical_.end()) fail("{}: no tensor '{}' in this model", dir_, name);
  return it->second;
}

bool RdrrModel::has(const std::string& name) const { return logical_.count(name) > 0; }

std::vector<std::string> RdrrModel::names() const {
  std::vector<std::string> out;
  out.reserve(logical_.size());
  for (const auto& [n, _] : logical_) out.push_back(n);
  return out;
}

std::vector<int64_t> RdrrModel::shape(const std::string& name) const { return logical(name).shape; }
DType RdrrModel::dtype(const std::string& name) const { return logical(name).dtype; }
Layout RdrrModel::layout(const std::string& name) const { return logical(name).layout; }
int RdrrModel::sliceCount(const std::string& name) const {
  const Logical& l = logical(name);
  return l.kind == Logical::Sliced ? int(l.entries.size()) : 1;
}
uint64_t RdrrModel::byteSize(const std::string& name) const {
  const Logical& l = logical(name);
  uint64_t n = 1;
  for (auto d : l.shape) n *= uint64_t(d);
  return dtypeBytes(l.dtype, n);  // block types (mxfp4) too
}

// ---- raw I/O ----

bool RdrrModel::shardPresent(int shard) const {
  shardPath(shard);  // range check
  if (!fetcher_) return true;
  std::lock_guard<std::mutex> lk(fetchMu_);
  return present_[size_t(shard)] != 0;
}

void RdrrModel::ensurePresent(int shard) const {
  if (!fetcher_) return;
  std::lock_guard<std::mutex> lk(fetchMu_);  // one fetch at a time; others wait for it rather than repeat it
  if (present_[size_t(shard)]) return;
  const RdrrShard& s = manifest_.shards[size_t(shard)];
  fetcher_(s);
  const std::string p = joinPath(dir_, s.filename);
  check(isRegularFile(p) && fileSize(p) == s.size, "{}: shard {} is still missing after fetching it", p, shard);
  present_[size_t(shard)] = 1;
}

std::shared_ptr<RdrrModel::Fd> RdrrModel::fd(int shard) const {
  std::string path = shardPath(shard);
  ensurePresent(shard);
  std::lock_guard<std::mutex> lk(mu_);
  auto& slot = fds_[size_t(shard)];
  if (slot) return slot;
  if (openFds_ >= kMaxOpenFds) {  // keep the descriptor count bounded for models with thousands of shards
    for (auto& f : fds_) f.reset();  // in-flight reads keep their shared_ptr alive
    openFds_ = 0;
  }
  auto f = std::make_shared<Fd>();
  f->path = path;
  f->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  slot = f;
  openFds_++;
  return f;
}

void RdrrModel::readRange(int shard, uint64_t offset, uint64_t size, void* dst) const {
  std::string path = shardPath(shard);
  const RdrrShard& s = manifest_.shards[size_t(shard)];
  uint64_t end;
  check(!__builtin_add_overflow(offset, size, &end) && end <= s.size,
        "{}: read of [{}, {}+{}) is past the end of the shard ({} bytes)", path, offset, offset, size, s.size);
  if (size == 0) return;
  auto f = fd(shard);
  auto* p = static_cast<uint8_t*>(dst);
  uint64_t done = 0;
  while (done < size) {
    size_t want = size_t(std::min<uint64_t>(size - done, uint64_t(1) << 30));
    ssize_t n = ::pread(f->fd, p + done, want, off_t(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: read error at offset {}: {}", path, offset + done, std::strerror(errno));
    }
    if (n == 0) fail("{}: unexpected end of file at offset {} (the shard was truncated?)", path, offset + done);
    done += uint64_t(n);
  }
  bytesRead_ += size;
}

const MappedFile& RdrrModel::mapped(int shard) const {
  std::string path = shardPath(shard);
  ensurePresent(shard);
  std::lock_guard<std::mutex> lk(mu_);
  auto& slot = maps_[size_t(shard)];
  if (!slot) {
    auto mf = std::make_unique<MappedFile>(path);
    check(mf->size() == manifest_.shards[size_t(shard)].size, "{}: shard is {} bytes, the manifest says {}", path,
          mf->size(), manifest_.shards[size_t(shard)].size);
    slot = std::move(mf);
  }
  return *slot;
}

// ---- logical reads ----

std::optional<WeightView> RdrrModel::view(const std::string& name) const {
  const Logical& l = logical(name);
  const RdrrTensor* first = l.entries.front();
  uint64_t offset = first->offset;
  if (l.kind == Logical::FusedPart) {
    uint64_t rowBytes = first->size / uint64_t(std::max<int64_t>(1, first->shape[0]));
    offset += uint64_t(l.rowStart) * rowBytes;
  } else if (l.kind == Logical::Sliced) {
    if (l.layout != Layout::Column) return std::nullopt;
    for (size_t i = 1; i < l.entries.size(); i++)
      if (l.entries[i]->shard != first->shard ||
          l.entries[i]->offset != l.entries[i - 1]->offset + l.entries[i - 1]->size)
        return std::nullopt;
  }
  const MappedFile& mf = mapped(first->shard);
  WeightView v;
  v.data = mf.data() + offset;
  v.dtype = l.dtype;
  v.shape = l.shape;
  v.layout = l.layout;
  return v;
}

std::vector<uint8_t> RdrrModel::readTensor(const std::string& name) const {
  const Logical& l = logical(name);
  std::vector<uint8_t> out(byteSize(name));
  const RdrrTensor* first = l.entries.front();
  if (l.kind == Logical::Whole) {
    readRange(first->shard, first->offset, first->size, out.data());
  } else if (l.kind == Logical::FusedPart) {
    uint64_t rowBytes = first->size / uint64_t(std::max<int64_t>(1, first->shape[0]));
    readRange(first->shard, first->offset + uint64_t(l.rowStart) * rowBytes, out.size(), out.data());
  } else if (l.layout == Layout::Column) {
    // Column slices of a column-major matrix are consecutive blocks of it.
    uint64_t at = 0;
    for (const RdrrTensor* e : l.entries) {
      readRange(e->shard, e->offset, e->size, out.data() + at);
      at += e->size;
    }
  } else {
    // Row layout: slice i holds W[:, i*w:(i+1)*w] row-major; interleave its rows back.
    size_t es = dtypeSize(l.dtype);
    int64_t rows = l.shape[0], K = l.shape[1];
    std::vector<uint8_t> buf;
    for (size_t i = 0; i < l.entries.size(); i++) {
      const RdrrTensor* e = l.entries[i];
      int64_t w = e->shape[1];
      buf.resize(e->size);
      readRange(e->shard, e->offset, e->size, buf.data());
      for (int64_t r = 0; r < rows; r++)
        std::memcpy(out.data() + (size_t(r * K) + i * size_t(w)) * es, buf.data() + size_t(r * w) * es, size_t(w) * es);
    }
  }
  return out;
}

std::vector<uint8_t> RdrrModel::readSlice(const std::string& name, int idx) const {
  const Logical& l = logical(name);
  int n = l.kind == Logical::Sliced ? int(l.entries.size()) : 1;
  check(idx >= 0 && idx < n, "{}: tensor '{}' has {} slice(s), slice {} was asked for", dir_, name, n, idx);
  if (l.kind != Logical::Sliced) return readTensor(name);
  const RdrrTensor* e = l.entries[size_t(idx)];
  std::vector<uint8_t> out(e->size);
  readRange(e->shard, e->offset, e->size, out.data());
  return out;
}

std::vector<uint8_t> RdrrModel::readColumns(const std::string& name, int64_t c0, int64_t c1) const {
  const Logical& l = logical(name);
  check(l.shape.size() == 2, "{}: tensor '{}' has shape {}; readColumns needs a matrix", dir_, name,
        shapeString(l.shape));
  int64_t rows = l.shape[0], K = l.shape[1];
  check(0 <= c0 && c0 <= c1 && c1 <= K, "{}: tensor '{}': columns [{}, {}) are outside [0, {})", dir_, name, c0, c1, K);
  check(dtypeBlockSize(l.dtype) == 1, "{}: tensor '{}': readColumns cannot cut {} blocks", dir_, name,
        dtypeName(l.dtype));
  size_t es = dtypeSize(l.dtype);
  int64_t W = c1 - c0;
  std::vector<uint8_t> out(size_t(rows * W) * es);
  if (W == 0 || rows == 0) return out;

  // Pieces: (stored entry, its first logical column, its width, base byte offset of its row 0 / col 0).
  struct Piece {
    const RdrrTensor* e;
    int64_t col0, width;
    uint64_t base;
    int64_t stride;  // elements per stored row (row layout) of the entry
  };
  std::vector<Piece> pieces;
  if (l.kind == Logical::Sliced) {
    int64_t at = 0;
    for (const RdrrTensor* e : l.entries) {
      pieces.push_back({e, at, e->shape[1], e->offset, e->shape[1]});
      at += e->shape[1];
    }
  } else {
    const RdrrTensor* e = l.entries.front();
    uint64_t base = e->offset;
    if (l.kind == Logical::FusedPart) base += uint64_t(l.rowStart) * uint64_t(K) * es;
    pieces.push_back({e, 0, K, base, K});
  }
  for (const Piece& p : pieces) {
    int64_t a = std::max(c0, p.col0), b = std::min(c1, p.col0 + p.width);
    if (a >= b) continue;
    int64_t la = a - p.col0, lb = b - p.col0;  // columns inside the piece
    if (l.layout == Layout::Column) {
      // Columns are contiguous runs of `rows` elements: one read straight into place.
      readRange(p.e->shard, p.base + uint64_t(la * rows) * es, uint64_t((lb - la) * rows) * es,
                out.data() + size_t((a - c0) * rows) * es);
    } else {
      // Row layout: read from (row 0, la) to (last row, lb) and pick each row's segment.
      uint64_t first = p.base + uint64_t(la) * es;
      uint64_t span = (uint64_t((rows - 1) * p.stride) + uint64_t(lb - la)) * es;
      std::vector<uint8_t> buf(span);
      readRange(p.e->shard, first, span, buf.data());
      for (int64_t r = 0; r < rows; r++)
        std::memcpy(out.data() + size_t(r * W + (a - c0)) * es, buf.data() + size_t(r * p.stride) * es,
                    size_t(lb - la) * es);
    }
  }
  return out;
}

RdrrModel::Span RdrrModel::groupSpan(const std::string& group) const {
  auto it = manifest_.groups.find(group);
  if (it == manifest_.groups.end()) fail("{}: no group '{}' in this model", dir_, group);
  Span s;
  uint64_t lo = ~uint64_t(0), hi = 0;
  for (const auto& n : it->second) {
    const RdrrTensor& t = manifest_.tensors.at(n);
    s.shard = t.shard;  // validation guarantees one shard per group
    lo = std::min(lo, t.offset);
    hi = std::max(hi, t.offset + t.size);
  }
  s.offset = lo;
  s.size = hi - lo;
  return s;
}

std::map<std::string, std::vector<uint8_t>> RdrrModel::readGroup(const std::string& group) const {
  Span s = groupSpan(group);
  std::vector<uint8_t> buf(s.size);
  readRange(s.shard, s.offset, s.size, buf.data());
  std::map<std::string, std::vector<uint8_t>> out;
  std::map<std::string, std::vector<const RdrrTensor*>> sliced;
  for (const auto& n : manifest_.groups.at(group)) {
    const RdrrTensor& t = manifest_.tensors.at(n);
    const uint8_t* p = buf.data() + (t.offset - s.offset);
    if (t.sliceDim == -1) {
      out.emplace(n, std::vector<uint8_t>(p, p + t.size));
    } else {
      auto& v = sliced[t.logicalName()];
      if (v.empty()) v.resize(size_t(t.sliceCount));
      v[size_t(t.sliceIdx)] = &t;
    }
  }
  for (const auto& [name, entries] : sliced) {
    const RdrrTensor* a = entries.front();
    size_t es = dtypeSize(a->dtype);
    int64_t rows = a->originalShape[0], K = a->originalShape[1];
    std::vector<uint8_t> whole(size_t(rows * K) * es);
    uint64_t at = 0;
    int64_t col = 0;
    for (const RdrrTensor* e : entries) {
      const uint8_t* p = buf.data() + (e->offset - s.offset);
      if (a->layout == Layout::Column) {
        std::memcpy(whole.data() + at, p, e->size);
        at += e->size;
      } else {
        int64_t w = e->shape[1];
        for (int64_t r = 0; r < rows; r++)
          std::memcpy(whole.data() + size_t(r * K + col) * es, p + size_t(r * w) * es, size_t(w) * es);
        col += w;
      }
    }
    out.emplace(name, std::move(whole));
  }
  return out;
}

void RdrrModel::verify(ProgressBar* progress) const {
  uint64_t total = 0;
  for (const auto& s : manifest_.shards) total += s.size;
  for (const auto& f : manifest_.tokenizerFiles) total += f.size;
  if (progress) progress->setTotal(total);

  // Fresh reads of the files as they are on disk now (not through descriptors opened earlier).
  for (const auto& s : manifest_.shards) {
    std::string path = joinPath(dir_, s.filename);
    check(isRegularFile(path), "{}: shard {} is missing", path, s.index);
    uint64_t sz = fileSize(path);
    check(sz == s.size, "{}: shard {} is {} bytes, the manifest says {}", path, s.index, sz, s.size);
    Sha256 h;
    uint64_t n = forEachChunk(path, [&](const uint8_t* p, size_t k) {
      h.update(p, k);
      bytesRead_ += k;
      if (progress) progress->add(k);
    });
    check(n == s.size, "{}: shard {} changed size while being verified", path, s.index);
    std::string got = h.hexDigest();
    check(got == s.hash, "{}: shard {} is corrupt: SHA-256 is {}, the manifest says {}", path, s.index, got, s.hash);
  }
  for (const auto& f : manifest_.tokenizerFiles) {
    std::string path = joinPath(dir_, f.filename);
    check(isRegularFile(path), "{}: tokenizer file is missing", path);
    Sha256 h;
    uint64_t n = forEachChunk(path, [&](const uint8_t* p, size_t k) {
      h.update(p, k);
      if (progress) progress->add(k);
    });
    std::string got = h.hexDigest();
    check(n == f.size, "{}: tokenizer file is {} bytes, the manifest says {}", path, n, f.size);
    check(got == f.hash, "{}: tokenizer file is corrupt: SHA-256 is {}, the manifest says {}", path, got, f.hash);
  }
  // Tensor ranges against the files as they are now (parseManifest checked them against the manifest).
  std::vector<uint64_t> real(manifest_.shards.size());
  for (size_t i = 0; i < real.size(); i++) real[i] = fileSize(shardPath(int(i)));
  for (const auto& [name, t] : manifest_.tensors) {
    check(t.offset + t.size <= real[size_t(t.shard)],
          "{}: tensor '{}' bytes [{}, {}) are past the end of the file ({} bytes)", shardPath(t.shard), name,
          t.offset, t.offset + t.size, real[size_t(t.shard)]);
  }
}

}  // namespace doppler

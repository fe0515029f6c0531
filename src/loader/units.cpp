#include "loader/units.h"

#include "core/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <vector>

#include "core/error.h"

namespace doppler {

namespace {
uint64_t align64(uint64_t x) { return (x + 63) / 64 * 64; }

// Places logical tensor `name` whose stored entries lie in the unit at `entryOffset(entry)`; appends gathers
// (and room for the reassembled tensor) when the stored form is not the logical one.
template <class EntryOffset>
void placeTensor(const RdrrModel& m, const std::string& name, Unit& u, EntryOffset entryOffset) {
  const RdrrModel::Logical& l = m.logical(name);
  UnitTensor t;
  t.name = name;
  t.dtype = l.dtype;
  t.shape = l.shape;
  t.layout = l.layout;
  t.bytes = m.byteSize(name);
  const size_t es = dtypeSize(l.dtype);
  const RdrrTensor* first = l.entries.front();
  if (l.kind == RdrrModel::Logical::Whole) {
    t.offset = entryOffset(first);
  } else if (l.kind == RdrrModel::Logical::FusedPart) {
    uint64_t rowBytes = first->size / uint64_t(std::max<int64_t>(1, first->shape[0]));
    t.offset = entryOffset(first) + uint64_t(l.rowStart) * rowBytes;
  } else {
    bool contiguous = l.layout == Layout::Column;
    for (size_t i = 1; contiguous && i < l.entries.size(); i++)
      contiguous = entryOffset(l.entries[i]) == entryOffset(l.entries[i - 1]) + l.entries[i - 1]->size;
    if (contiguous) {
      t.offset = entryOffset(first);
    } else {
      u.bytes = align64(u.bytes);
      t.offset = u.bytes;
      u.bytes += t.bytes;
      if (l.layout == Layout::Column) {
        // Column slices of a column-major matrix are consecutive blocks of it.
        uint64_t at = t.offset;
        for (const RdrrTensor* e : l.entries) {
          u.gathers.push_back({entryOffset(e), at, 1, e->size, e->size, e->size});
          at += e->size;
        }
      } else {
        // Row layout: slice i holds W[:, c_i : c_i + w_i] row-major.
        const uint64_t K = uint64_t(l.shape[1]), rows = uint64_t(l.shape[0]);
        uint64_t col = 0;
        for (const RdrrTensor* e : l.entries) {
          const uint64_t w = uint64_t(e->shape[1]);
          u.gathers.push_back({entryOffset(e), t.offset + col * es, rows, w * es, w * es, K * es});
          col += w;
        }
      }
    }
  }
  u.tensors.push_back(std::move(t));
}
}  // namespace

std::string_view unitKindName(UnitKind k) {
  switch (k) {
    case UnitKind::Global: return "global";
    case UnitKind::Small: return "small";
    case UnitKind::Dense: return "dense";
    case UnitKind::Expert: return "expert";
  }
  return "?";
}

const UnitTensor* Unit::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<std::string> groupTensorNames(const RdrrModel& m, const std::string& group) {
  const Manifest& mf = m.manifest();
  auto it = mf.groups.find(group);
  check(it != mf.groups.end(), "{}: no group '{}' in this model", m.dir(), group);
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto add = [&](const std::string& n) {
    if (seen.insert(n).second) out.push_back(n);
  };
  for (const auto& key : it->second) {
    const RdrrTensor& t = mf.tensors.at(key);
    if (t.sliceDim != -1) {
      add(t.logicalName());
      continue;
    }
    add(key);
    if (auto f = mf.fused.find(key); f != mf.fused.end())
      for (const auto& p : f->second.parts) add(p.name);
  }
  return out;
}

Unit makeGroupUnit(const RdrrModel& m, const std::string& group, UnitKind kind, int layer, int expert) {
  Unit u;
  u.kind = kind;
  u.layer = layer;
  u.expert = expert;
  u.label = group;
  RdrrModel::Span s = m.groupSpan(group);
  u.reads.push_back({s.shard, s.offset, s.size, 0});
  u.readBytes = s.size;
  u.bytes = s.size;
  for (const auto& name : groupTensorNames(m, group))
    placeTensor(m, name, u, [&](const RdrrTensor* e) { return e->offset - s.offset; });
  return u;
}

Unit makeTensorUnit(const RdrrModel& m, const std::vector<std::string>& names, UnitKind kind,
                    const std::string& label) {
  Unit u;
  u.kind = kind;
  u.label = label;
  for (const auto& name : names) {
    const RdrrModel::Logical& l = m.logical(name);
    std::map<const RdrrTensor*, uint64_t> at;  // where each stored entry lands
    if (l.kind == RdrrModel::Logical::FusedPart) {
      // Only the part's rows: place the read so that the fused entry's (virtual) start maps consistently.
      const RdrrTensor* e = l.entries.front();
      const uint64_t rowBytes = e->size / uint64_t(std::max<int64_t>(1, e->shape[0]));
      const uint64_t partOff = uint64_t(l.rowStart) * rowBytes, partBytes = m.byteSize(name);
      u.bytes = align64(u.bytes);
      u.reads.push_back({e->shard, e->offset + partOff, partBytes, u.bytes});
      u.readBytes += partBytes;
      UnitTensor t{name, u.bytes, partBytes, l.dtype, l.shape, l.layout};
      u.bytes += partBytes;
      u.tensors.push_back(std::move(t));
      continue;
    }
    u.bytes = align64(u.bytes);
    for (const RdrrTensor* e : l.entries) {  // consecutive: column slices then form the whole tensor
      at[e] = u.bytes;
      u.reads.push_back({e->shard, e->offset, e->size, u.bytes});
      u.readBytes += e->size;
      u.bytes += e->size;
    }
    placeTensor(m, name, u, [&](const RdrrTensor* e) { return at.at(e); });
  }
  return u;
}

void readUnit(const RdrrModel& m, const Unit& u, uint8_t* buf, uint64_t pieceBytes) {
  // A read from the page cache is a memory copy that one thread does at 3-6 GB/s: a unit's reads are cut into
  // about one piece per reader (at most pieceBytes each) so that the readers (the calling thread among them) read
  // it in one round. The readers are a pool of their own, not the global pool: the global pool's callers take
  // turns, and a load must not wait for the CPU's expert computation.
  constexpr int kReadThreads = 8;
  static ThreadPool readers(kReadThreads);  // spinning workers: no thread is created per read
  const uint64_t perReader = (u.readBytes + kReadThreads - 1) / kReadThreads;
  const uint64_t kPiece = std::min(std::max<uint64_t>(pieceBytes, 1),
                                   std::max<uint64_t>((perReader + 4095) / 4096 * 4096, uint64_t(256) << 10));
  struct Piece {
    int shard;
    uint64_t offset, size;
    uint8_t* dst;
  };
  std::vector<Piece> pieces;
  for (const auto& r : u.reads)
    for (uint64_t at = 0; at < r.size; at += kPiece)
      pieces.push_back({r.shard, r.fileOffset + at, std::min(kPiece, r.size - at), buf + r.unitOffset + at});
  std::mutex mu;
  std::exception_ptr error;  // the first failure, rethrown once every reader has stopped
  auto read = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      try {
        m.readRange(pieces[size_t(i)].shard, pieces[size_t(i)].offset, pieces[size_t(i)].size, pieces[size_t(i)].dst);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu);
        if (!error) error = std::current_exception();
        return;
      }
    }
  };
  if (pieces.size() <= 1) read(0, int64_t(pieces.size()));
  else readers.parallelFor(int64_t(pieces.size()), read);
  if (error) std::rethrow_exception(error);
  for (const auto& g : u.gathers)
    for (uint64_t r = 0; r < g.rows; r++)
      std::memcpy(buf + g.dst + r * g.dstStride, buf + g.src + r * g.srcStride, size_t(g.rowBytes));
}

}  // namespace doppler

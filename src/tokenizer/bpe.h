// Byte-pair encoding: the merge loop shared by the Hugging Face BPE model and tiktoken, and the BPE model
// of tokenizer.json ("model": {"type": "BPE", ...}).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/json_util.h"

namespace doppler {

// Hash / equality that let unordered_map<std::string, V> be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct Merge {
  int32_t rank = -1;  // < 0: the pair does not merge
  int32_t id = -1;    // the merged symbol
};

// Merges the symbols of one word in place: repeatedly merges the adjacent pair of lowest rank (leftmost
// among equal ranks), as the tokenizers library (heap keyed by rank then position, entries whose pair
// no longer gives the same symbol skipped) and tiktoken do. lookup(a, b) -> Merge.
// symbols: [n] token ids, on return the merged ids.
template <class Lookup>
void bpeMerge(std::vector<int32_t>& symbols, const Lookup& lookup) {
  const size_t n = symbols.size();
  if (n < 2) return;
  struct Entry {
    uint64_t key;  // rank << 32 | position of the pair's left symbol: the heap order
    int32_t id;    // the merged symbol
  };
  // Doubly linked list over positions; removed symbols have alive = 0.
  thread_local std::vector<int32_t> prev, next;
  thread_local std::vector<uint8_t> alive;
  thread_local std::vector<Entry> heap;  // 4-ary min-heap on key (fewer cache misses than a binary one)
  const auto siftDown = [&](size_t i) {
    const size_t size = heap.size();
    const Entry e = heap[i];
    for (;;) {
      size_t c = 4 * i + 1;
      if (c >= size) break;
      size_t best = c;
      const size_t last = std::min(c + 4, size);
      for (size_t k = c + 1; k < last; ++k)
        if (heap[k].key < heap[best].key) best = k;
      if (heap[best].key >= e.key) break;
      heap[i] = heap[best];
      i = best;
    }
    heap[i] = e;
  };
  const auto push = [&](int32_t rank, uint32_t pos, int32_t id) {
    Entry e{(uint64_t(uint32_t(rank)) << 32) | pos, id};
    size_t i = heap.size();
    heap.push_back(e);
    while (i > 0) {
      size_t parent = (i - 1) / 4;
      if (heap[parent].key <= e.key) break;
      heap[i] = heap[parent];
      i = parent;
    }
    heap[i] = e;
  };
  prev.resize(n);
  next.resize(n);
  alive.assign(n, 1);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int32_t(i) - 1;
    next[i] = i + 1 < n ? int32_t(i + 1) : -1;
  }
  for (size_t i = 0; i + 1 < n; ++i) {
    Merge m = lookup(symbols[i], symbols[i + 1]);
    if (m.rank >= 0) heap.push_back({(uint64_t(uint32_t(m.rank)) << 32) | uint32_t(i), m.id});
  }
  for (size_t i = heap.size() / 4 + 1; i-- > 0;)
    if (i < heap.size()) siftDown(i);
  while (!heap.empty()) {
    const Entry top = heap[0];
    heap[0] = heap.back();
    heap.pop_back();
    if (!heap.empty()) siftDown(0);
    const uint32_t p = uint32_t(top.key);
    if (!alive[p] || next[p] < 0) continue;
    const int32_t q = next[p];
    // Skip stale entries: the pair at p must still merge into the same symbol.
    Merge cur = lookup(symbols[p], symbols[size_t(q)]);
    if (cur.rank < 0 || cur.id != top.id) continue;
    symbols[p] = top.id;
    alive[size_t(q)] = 0;
    next[p] = next[size_t(q)];
    if (next[p] >= 0) prev[size_t(next[p])] = int32_t(p);
    if (prev[p] >= 0) {
      Merge m = lookup(symbols[size_t(prev[p])], symbols[p]);
      if (m.rank >= 0) push(m.rank, uint32_t(prev[p]), m.id);
    }
    if (next[p] >= 0) {
      Merge m = lookup(symbols[p], symbols[size_t(next[p])]);
      if (m.rank >= 0) push(m.rank, p, m.id);
    }
  }
  size_t w = 0;
  for (size_t i = 0; i < n; ++i)
    if (alive[i]) symbols[w++] = symbols[i];
  symbols.resize(w);
}

// Open-addressing hash map (symbol a, symbol b) -> Merge, the hot lookup of the merge loop.
class PairMap {
 public:
  void reserve(size_t n);
  void set(int32_t a, int32_t b, Merge m);  // replaces an existing entry
  Merge find(int32_t a, int32_t b) const {
    if (keys_.empty()) return {};
    const uint64_t key = pack(a, b);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return vals_[i];
      if (keys_[i] == kEmpty) return {};
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_; }
  void grow();
  std::vector<uint64_t> keys_;
  std::vector<Merge> vals_;
  size_t mask_ = 0, count_ = 0;
  int shift_ = 64;
};

// A small thread-safe word -> ids cache (words up to 256 bytes, at most `capacity` entries; once full,
// new words are no longer cached, as in the tokenizers library).
class WordCache {
 public:
  explicit WordCache(size_t capacity = 200000) : capacity_(capacity) {}
  bool get(std::string_view word, std::vector<int32_t>& out) const;
  void put(std::string_view word, const std::vector<int32_t>& ids);

 private:
  size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> map_;
};

// The BPE model of tokenizer.json.
class BpeModel {
 public:
  // j: the "model" object. what: context for errors.
  BpeModel(const Json& j, const std::string& what);

  // Appends the ids of one pre-tokenized word.
  void encodeWord(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> tokenId(std::string_view token) const;
  // Token text of id, or nullptr if the model has no token with that id.
  const std::string* tokenText(int32_t id) const;
  // One more than the largest id.
  int32_t size() const { return int32_t(idToToken_.size()); }

 private:
  void initialSymbols(std::string_view word, std::vector<int32_t>& syms) const;

  std::string what_;
  StringIdMap vocab_;
  std::vector<std::string> idToToken_;  // [size] token text ("" where no token has the id)
  std::vector<uint8_t> hasId_;          // [size]
  PairMap merges_;                      // (a, b) -> rank, merged id
  std::vector<int32_t> charIds_;        // [512] id of single-character tokens below U+0200, -1 if none
  std::unordered_map<char32_t, int32_t> otherCharIds_;
  std::optional<int32_t> unkId_;
  bool fuseUnk_ = false;
  bool byteFallback_ = false;
  bool ignoreMerges_ = false;
  std::string continuingPrefix_, endSuffix_;
  int32_t byteIds_[256];  // ids of <0xNN> tokens (byte_fallback), -1 if missing
  mutable WordCache cache_;
};

}  // namespace doppler

#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace doppler {

bool WordCache::get(std::string_view word, std::vector<int32_t>& out) const {
  if (word.size() > 256) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = map_.find(word);
  if (it == map_.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void WordCache::put(std::string_view word, const std::vector<int32_t>& ids) {
  if (word.size() > 256) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (map_.size() >= capacity_) return;
  map_.emplace(std::string(word), ids);
}

void PairMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n) cap *= 2;
  if (cap <= keys_.size()) return;
  std::vector<uint64_t> oldKeys = std::move(keys_);
  std::vector<Merge> oldVals = std::move(vals_);
  keys_.assign(cap, kEmpty);
  vals_.assign(cap, Merge{});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  count_ = 0;
  for (size_t i = 0; i < oldKeys.size(); ++i)
    if (oldKeys[i] != kEmpty) set(int32_t(oldKeys[i] >> 32), int32_t(uint32_t(oldKeys[i])), oldVals[i]);
}

void PairMap::set(int32_t a, int32_t b, Merge m) {
  if (2 * (count_ + 1) > keys_.size()) reserve(count_ + 1 > 8 ? 2 * (count_ + 1) : 8);
  const uint64_t key = pack(a, b);
  for (size_t i = slot(key);; i = (i + 1) & mask_) {
    if (keys_[i] == key) {
      vals_[i] = m;
      return;
    }
    if (keys_[i] == kEmpty) {
      keys_[i] = key;
      vals_[i] = m;
      ++count_;
      return;
    }
  }
}

BpeModel::BpeModel(const Json& j, const std::string& what) : what_(what) {
  try {
    if (!j.is_object()) fail("{}: model must be an object", what);
    std::string type = j.value("type", std::string("BPE"));
    if (type != "BPE") fail("{}: model type {} is not supported (only BPE)", what, type);
    if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() != 0.0)
      fail("{}: BPE dropout {} is not supported", what, j["dropout"].get<double>());
    if (!j.contains("vocab") || !j["vocab"].is_object()) fail("{}: model.vocab must be an object", what);
    if (!j.contains("merges") || !j["merges"].is_array()) fail("{}: model.merges must be an array", what);

    auto optString = [&](const char* key) -> std::string {
      if (!j.contains(key) || j[key].is_null()) return {};
      return j[key].get<std::string>();
    };
    continuingPrefix_ = optString("continuing_subword_prefix");
    endSuffix_ = optString("end_of_word_suffix");
    fuseUnk_ = j.value("fuse_unk", false);
    byteFallback_ = j.value("byte_fallback", false);
    ignoreMerges_ = j.value("ignore_merges", false);

    // Vocabulary.
    const Json& vocab = j["vocab"];
    int64_t maxId = -1;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer()) fail("{}: vocab entry '{}' is not an integer id", what, it.key());
      int64_t id = it.value().get<int64_t>();
      if (id < 0 || id > INT32_MAX - 1) fail("{}: vocab entry '{}' has id {} out of range", what, it.key(), id);
      maxId = std::max(maxId, id);
    }
    idToToken_.resize(size_t(maxId + 1));
    hasId_.assign(size_t(maxId + 1), 0);
    vocab_.reserve(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      int32_t id = it.value().get<int32_t>();
      if (utf8::firstInvalid(it.key()) != utf8::kValid) fail("{}: vocab entry with id {} is not UTF-8", what, id);
      if (hasId_[size_t(id)])
        fail("{}: vocab id {} is used by both '{}' and '{}'", what, id, idToToken_[size_t(id)], it.key());
      hasId_[size_t(id)] = 1;
      idToToken_[size_t(id)] = it.key();
      vocab_.emplace(it.key(), id);
    }
    charIds_.assign(512, -1);
    for (const auto& [tok, id] : vocab_) {
      size_t pos = 0;
      if (tok.empty()) continue;
      char32_t cp = utf8::next(tok, pos);
      if (pos != tok.size()) continue;
      if (cp < 512)
        charIds_[cp] = id;
      else
        otherCharIds_.emplace(cp, id);
    }
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
      byteIds_[b] = it == vocab_.end() ? -1 : it->second;
    }
    std::string unk = optString("unk_token");
    if (!unk.empty()) {
      auto it = vocab_.find(unk);
      if (it == vocab_.end()) fail("{}: unk_token '{}' is not in the vocabulary", what, unk);
      unkId_ = it->second;
    }

    // Merges: "a b" strings or [a, b] pairs; rank = position in the list.
    const Json& merges = j["merges"];
    merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const Json& m = merges[rank];
      std::string a, b;
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          fail("{}: merge {} '{}' is not two tokens separated by one space", what, rank, s);
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        fail("{}: merge {} must be a string \"a b\" or a pair [a, b]", what, rank);
      }
      auto ia = vocab_.find(a);
      if (ia == vocab_.end()) fail("{}: merge {} names unknown token '{}'", what, rank, a);
      auto ib = vocab_.find(b);
      if (ib == vocab_.end()) fail("{}: merge {} names unknown token '{}'", what, rank, b);
      std::string merged = a;
      if (!continuingPrefix_.empty() && b.compare(0, continuingPrefix_.size(), continuingPrefix_) == 0)
        merged += b.substr(continuingPrefix_.size());
      else
        merged += b;
      auto im = vocab_.find(merged);
      if (im == vocab_.end()) fail("{}: merge {} gives '{}', which is not in the vocabulary", what, rank, merged);
      merges_.set(ia->second, ib->second, Merge{int32_t(rank), im->second});
    }
  } catch (const Json::exception& e) {
    fail("{}: model: {}", what, e.what());
  }
}

std::optional<int32_t> BpeModel::tokenId(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::tokenText(int32_t id) const {
  if (id < 0 || size_t(id) >= idToToken_.size() || !hasId_[size_t(id)]) return nullptr;
  return &idToToken_[size_t(id)];
}

void BpeModel::initialSymbols(std::string_view word, std::vector<int32_t>& syms) const {
  // One symbol per character, as the tokenizers library's BPE::merge_word: unknown characters become
  // <0xNN> byte tokens (byte_fallback) or the unk token (fused with a preceding unk when fuse_unk).
  const bool affixes = !continuingPrefix_.empty() || !endSuffix_.empty();
  bool pendingUnk = false;
  std::string s;
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t start = pos;
    const char32_t cp = utf8::next(word, pos);
    int32_t id = -1;
    if (!affixes) {
      if (cp < 512) {
        id = charIds_[cp];
      } else {
        auto it = otherCharIds_.find(cp);
        if (it != otherCharIds_.end()) id = it->second;
      }
      if (id < 0) s.assign(word.substr(start, pos - start));
    } else {
      s.clear();
      if (start > 0) s += continuingPrefix_;
      s.append(word.substr(start, pos - start));
      if (pos == word.size()) s += endSuffix_;
      auto it = vocab_.find(s);
      if (it != vocab_.end()) id = it->second;
    }
    if (id >= 0) {
      if (pendingUnk) {
        syms.push_back(*unkId_);
        pendingUnk = false;
      }
      syms.push_back(id);
      continue;
    }
    if (byteFallback_) {
      bool all = true;
      for (unsigned char c : s) all = all && byteIds_[c] >= 0;
      if (all) {
        for (unsigned char c : s) syms.push_back(byteIds_[c]);
        continue;
      }
    }
    if (unkId_) {
      if (pendingUnk && !fuseUnk_) syms.push_back(*unkId_);
      pendingUnk = true;
    }
    // Without an unk token the character is dropped, as the tokenizers library does.
  }
  if (pendingUnk) syms.push_back(*unkId_);
}

void BpeModel::encodeWord(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignoreMerges_) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (cache_.get(word, out)) return;
  thread_local std::vector<int32_t> syms;
  syms.clear();
  initialSymbols(word, syms);
  bpeMerge(syms, [this](int32_t a, int32_t b) { return merges_.find(a, b); });
  cache_.put(word, syms);
  out.insert(out.end(), syms.begin(), syms.end());
}

}  // namespace doppler

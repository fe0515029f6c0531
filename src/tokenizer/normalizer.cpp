#include "tokenizer/normalizer.h"

#include <algorithm>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "tokenizer/nfc_data.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace doppler {

// ---------------------------------------------------------------------------------------------------
// NFC

namespace {

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

uint8_t combiningClass(char32_t cp) {
  if (cp < 0x300) return 0;
  const nfc::CccRange* end = nfc::kCcc + nfc::kCccCount;
  const nfc::CccRange* it =
      std::upper_bound(nfc::kCcc, end, cp, [](char32_t c, const nfc::CccRange& r) { return c < r.first; });
  if (it == nfc::kCcc) return 0;
  --it;
  return cp <= it->last ? it->ccc : 0;
}

const nfc::Decomposition* findDecomposition(char32_t cp) {
  if (cp < 0xC0) return nullptr;
  const nfc::Decomposition* end = nfc::kDecompositions + nfc::kDecompositionCount;
  const nfc::Decomposition* it = std::lower_bound(
      nfc::kDecompositions, end, cp, [](const nfc::Decomposition& d, char32_t c) { return d.cp < c; });
  return (it != end && it->cp == cp) ? it : nullptr;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const nfc::Decomposition* d = findDecomposition(cp);
  if (!d) {
    out.push_back(cp);
    return;
  }
  decompose(d->first, out);
  if (d->second) decompose(d->second, out);
}

const std::unordered_map<uint64_t, char32_t>& compositions() {
  static const std::unordered_map<uint64_t, char32_t> map = [] {
    std::unordered_map<uint64_t, char32_t> m;
    for (size_t i = 0; i < nfc::kDecompositionCount; ++i) {
      const nfc::Decomposition& d = nfc::kDecompositions[i];
      if (d.composes) m.emplace((uint64_t(d.first) << 21) | d.second, char32_t(d.cp));
    }
    return m;
  }();
  return map;
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto& m = compositions();
  auto it = m.find((uint64_t(a) << 21) | b);
  return it == m.end() ? 0 : it->second;
}

}  // namespace

std::string toNfc(const std::string& s) {
  // Text below U+0300 is always in NFC.
  bool simple = true;
  for (unsigned char c : s)
    if (c >= 0xCC) {  // lead bytes of U+0300 and above
      simple = false;
      break;
    }
  if (simple) return s;

  std::vector<char32_t> d;
  d.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) decompose(utf8::next(s, pos), d);

  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (combiningClass(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combiningClass(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + long(i), d.begin() + long(j),
                     [](char32_t a, char32_t b) { return combiningClass(a) < combiningClass(b); });
    i = j;
  }

  // Canonical composition.
  std::vector<char32_t> r;
  r.reserve(d.size());
  long starter = -1;
  int lastClass = 0;
  for (char32_t cp : d) {
    int cls = combiningClass(cp);
    if (starter >= 0 && (lastClass < cls || (lastClass == 0 && long(r.size()) == starter + 1))) {
      if (char32_t c = compose(r[size_t(starter)], cp)) {
        r[size_t(starter)] = c;
        continue;
      }
    }
    if (cls == 0) starter = long(r.size());
    lastClass = cls;
    r.push_back(cp);
  }
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : r) utf8::append(out, cp);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Normalizers

namespace {

class SequenceNormalizer : public Normalizer {
 public:
  std::vector<std::unique_ptr<Normalizer>> parts;
  void normalize(std::string& s) const override {
    for (const auto& p : parts) p->normalize(s);
  }
};

class PrependNormalizer : public Normalizer {
 public:
  std::string prefix;
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};

class ReplaceNormalizer : public Normalizer {
 public:
  std::string literal;           // String pattern
  std::unique_ptr<Regex> regex;  // Regex pattern
  std::string content;
  void normalize(std::string& s) const override {
    if (regex) {
      s = regex->replaceAll(s, content);
      return;
    }
    if (literal.empty() || s.find(literal) == std::string::npos) return;
    std::string out;
    size_t last = 0, at;
    while ((at = s.find(literal, last)) != std::string::npos) {
      out.append(s, last, at - last);
      out += content;
      last = at + literal.size();
    }
    out.append(s, last);
    s = std::move(out);
  }
};

class StripNormalizer : public Normalizer {
 public:
  bool left = true, right = true;
  void normalize(std::string& s) const override {
    size_t begin = 0, end = s.size();
    if (left) {
      while (begin < end) {
        size_t p = begin;
        if (!utf8::isWhiteSpace(utf8::next(s, p))) break;
        begin = p;
      }
    }
    if (right) {
      while (end > begin) {
        size_t p = end - 1;
        while (p > begin && (uint8_t(s[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!utf8::isWhiteSpace(utf8::next(s, q))) break;
        end = p;
      }
    }
    s = s.substr(begin, end - begin);
  }
};

class NfcNormalizer : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = toNfc(s); }
};

const Json& member(const Json& j, const char* key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end()) fail("{}: normalizer {} has no '{}'", what, j.value("type", "?"), key);
  return *it;
}

}  // namespace

std::unique_ptr<Normalizer> makeNormalizer(const Json& j, const std::string& what) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("{}: normalizer must be an object with a 'type'", what);
  const std::string type = j["type"];
  try {
    if (type == "Sequence") {
      auto seq = std::make_unique<SequenceNormalizer>();
      const Json& list = member(j, "normalizers", what);
      if (!list.is_array()) fail("{}: normalizer Sequence: 'normalizers' must be an array", what);
      for (const Json& n : list)
        if (auto p = makeNormalizer(n, what)) seq->parts.push_back(std::move(p));
      return seq;
    }
    if (type == "Prepend") {
      auto p = std::make_unique<PrependNormalizer>();
      p->prefix = member(j, "prepend", what).get<std::string>();
      return p;
    }
    if (type == "Replace") {
      auto r = std::make_unique<ReplaceNormalizer>();
      const Json& pat = member(j, "pattern", what);
      r->content = member(j, "content", what).get<std::string>();
      if (pat.contains("String")) {
        r->literal = pat["String"].get<std::string>();
      } else if (pat.contains("Regex")) {
        r->regex = std::make_unique<Regex>(pat["Regex"].get<std::string>(), what + ": normalizer Replace");
      } else {
        fail("{}: normalizer Replace: pattern must have 'String' or 'Regex'", what);
      }
      return r;
    }
    if (type == "Strip") {
      auto s = std::make_unique<StripNormalizer>();
      s->left = j.value("strip_left", true);
      s->right = j.value("strip_right", true);
      return s;
    }
    if (type == "NFC") return std::make_unique<NfcNormalizer>();
  } catch (const Json::exception& e) {
    fail("{}: normalizer {}: {}", what, type, e.what());
  }
  fail("{}: normalizer {} is not supported (supported: Sequence, Prepend, Replace, Strip, NFC)", what, type);
}

}  // namespace doppler

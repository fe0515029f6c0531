#include "tokenizer/pretokenize.h"

#include <algorithm>
#include <functional>

#include "core/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace doppler {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string byteLevelEncode(std::string_view s) {
  const auto& table = utf8::byteToChar();
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) utf8::append(out, table[c]);
  return out;
}

namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parseBehavior(const std::string& s, const std::string& what) {
  if (s == "Removed") return Behavior::Removed;
  if (s == "Isolated") return Behavior::Isolated;
  if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (s == "MergedWithNext") return Behavior::MergedWithNext;
  if (s == "Contiguous") return Behavior::Contiguous;
  fail("{}: unknown split behavior '{}'", what, s);
}

struct Span {
  size_t start, end;
  bool match;
};

// Finds matches in a piece: calls f(start, end) for each, in order, non-overlapping.
using Matcher = std::function<void(std::string_view, const std::function<void(size_t, size_t)>&)>;

// Splits every piece by the matches of `find`, with the tokenizers library's delimiter behaviors.
void splitPieces(std::vector<Piece>& pieces, const Matcher& find, Behavior behavior, bool invert) {
  std::vector<Piece> out;
  out.reserve(pieces.size() + 16);
  std::vector<Span> spans, merged;
  for (Piece& p : pieces) {
    const std::string& t = p.text;
    spans.clear();
    size_t prev = 0;
    find(t, [&](size_t s, size_t e) {
      if (prev != s) spans.push_back({prev, s, false});
      spans.push_back({s, e, true});
      prev = e;
    });
    if (prev != t.size()) spans.push_back({prev, t.size(), false});
    if (invert)
      for (Span& s : spans) s.match = !s.match;

    merged.clear();
    const std::vector<Span>* result = &merged;
    switch (behavior) {
      case Behavior::Isolated:
        result = &spans;
        break;
      case Behavior::Removed:
        for (const Span& s : spans)
          if (!s.match) merged.push_back(s);
        break;
      case Behavior::MergedWithPrevious: {
        bool prevMatch = false;
        for (const Span& s : spans) {
          if (s.match && !prevMatch && !merged.empty())
            merged.back().end = s.end;
          else
            merged.push_back(s);
          prevMatch = s.match;
        }
        break;
      }
      case Behavior::MergedWithNext: {
        bool prevMatch = false;
        for (size_t k = spans.size(); k-- > 0;) {
          const Span& s = spans[k];
          if (s.match && !prevMatch && !merged.empty())
            merged.back().start = s.start;
          else
            merged.push_back(s);
          prevMatch = s.match;
        }
        std::reverse(merged.begin(), merged.end());
        break;
      }
      case Behavior::Contiguous: {
        int prevMatch = -1;
        for (const Span& s : spans) {
          if (int(s.match) == prevMatch && !merged.empty())
            merged.back().end = s.end;
          else
            merged.push_back(s);
          prevMatch = int(s.match);
        }
        break;
      }
    }
    const std::vector<Span>& r = *result;
    if (r.size() == 1 && r[0].start == 0 && r[0].end == t.size()) {
      if (!t.empty()) out.push_back(std::move(p));
      continue;
    }
    if (out.capacity() < out.size() + r.size()) out.reserve(std::max(out.size() + r.size(), 2 * out.capacity()));
    for (const Span& s : r)
      if (s.end > s.start) out.push_back({t.substr(s.start, s.end - s.start), p.atStart && s.start == 0});
  }
  pieces = std::move(out);
}

Matcher regexMatcher(std::shared_ptr<Regex> re) {
  return [re](std::string_view t, const std::function<void(size_t, size_t)>& f) { re->forEachMatch(t, f); };
}

Matcher literalMatcher(std::string lit) {
  return [lit](std::string_view t, const std::function<void(size_t, size_t)>& f) {
    if (lit.empty()) return;
    size_t pos = 0, at;
    while ((at = t.find(lit, pos)) != std::string_view::npos) {
      f(at, at + lit.size());
      pos = at + lit.size();
    }
  };
}

// Each character satisfying pred is its own match.
Matcher charMatcher(std::function<bool(char32_t)> pred) {
  return [pred](std::string_view t, const std::function<void(size_t, size_t)>& f) {
    size_t pos = 0;
    while (pos < t.size()) {
      size_t start = pos;
      char32_t c = utf8::next(t, pos);
      if (pred(c)) f(start, pos);
    }
  };
}

class SequencePre : public PreTokenizer {
 public:
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void apply(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts) p->apply(pieces);
  }
};

class SplitPre : public PreTokenizer {
 public:
  Matcher find;
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  void apply(std::vector<Piece>& pieces) const override { splitPieces(pieces, find, behavior, invert); }
};

class ByteLevelPre : public PreTokenizer {
 public:
  bool addPrefixSpace = false;
  std::shared_ptr<Regex> regex;  // null: use_regex false
  void apply(std::vector<Piece>& pieces) const override {
    if (addPrefixSpace)
      for (Piece& p : pieces)
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
    if (regex) splitPieces(pieces, regexMatcher(regex), Behavior::Isolated, false);
    for (Piece& p : pieces) p.text = byteLevelEncode(p.text);
  }
};

class MetaspacePre : public PreTokenizer {
 public:
  std::string replacement = "\xE2\x96\x81";  // U+2581
  enum { Always, First, Never } scheme = Always;
  bool split = true;
  void apply(std::vector<Piece>& pieces) const override {
    for (Piece& p : pieces) {
      if (p.text.find(' ') != std::string::npos) {
        std::string r;
        r.reserve(p.text.size() + 8);
        for (char c : p.text) {
          if (c == ' ')
            r += replacement;
          else
            r += c;
        }
        p.text = std::move(r);
      }
      bool starts = p.text.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (scheme == Always || (scheme == First && p.atStart))) p.text.insert(0, replacement);
    }
    if (split) splitPieces(pieces, literalMatcher(replacement), Behavior::MergedWithNext, false);
  }
};

std::shared_ptr<Regex> numericRegex() {
  static std::shared_ptr<Regex> re = std::make_shared<Regex>("\\p{N}", "Digits");
  return re;
}

}  // namespace

std::unique_ptr<PreTokenizer> makePreTokenizer(const Json& j, const std::string& what) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("{}: pre_tokenizer must be an object with a 'type'", what);
  const std::string type = j["type"];
  const std::string ctx = what + ": pre_tokenizer " + type;
  try {
    if (type == "Sequence") {
      auto seq = std::make_unique<SequencePre>();
      if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
        fail("{}: 'pretokenizers' must be an array", ctx);
      for (const Json& p : j["pretokenizers"])
        if (auto q = makePreTokenizer(p, what)) seq->parts.push_back(std::move(q));
      return seq;
    }
    if (type == "Split") {
      auto s = std::make_unique<SplitPre>();
      if (!j.contains("pattern") || !j["pattern"].is_object()) fail("{}: missing 'pattern'", ctx);
      const Json& pat = j["pattern"];
      if (pat.contains("Regex"))
        s->find = regexMatcher(std::make_shared<Regex>(pat["Regex"].get<std::string>(), ctx));
      else if (pat.contains("String"))
        s->find = literalMatcher(pat["String"].get<std::string>());
      else
        fail("{}: pattern must have 'Regex' or 'String'", ctx);
      s->behavior = parseBehavior(j.value("behavior", std::string("Isolated")), ctx);
      s->invert = j.value("invert", false);
      return s;
    }
    if (type == "ByteLevel") {
      auto b = std::make_unique<ByteLevelPre>();
      b->addPrefixSpace = j.value("add_prefix_space", true);
      if (j.value("use_regex", true)) b->regex = std::make_shared<Regex>(kGpt2Pattern, ctx);
      return b;
    }
    if (type == "Metaspace") {
      auto m = std::make_unique<MetaspacePre>();
      if (j.contains("replacement")) {
        m->replacement = j["replacement"].get<std::string>();
        if (m->replacement.empty() || utf8::firstInvalid(m->replacement) != utf8::kValid ||
            utf8::countChars(m->replacement) != 1)
          fail("{}: 'replacement' must be one character", ctx);
      }
      if (j.contains("prepend_scheme")) {
        std::string s = j["prepend_scheme"];
        if (s == "always")
          m->scheme = MetaspacePre::Always;
        else if (s == "first")
          m->scheme = MetaspacePre::First;
        else if (s == "never")
          m->scheme = MetaspacePre::Never;
        else
          fail("{}: unknown prepend_scheme '{}'", ctx, s);
      } else if (j.contains("add_prefix_space")) {
        m->scheme = j["add_prefix_space"].get<bool>() ? MetaspacePre::Always : MetaspacePre::Never;
      }
      m->split = j.value("split", true);
      return m;
    }
    if (type == "Digits") {
      auto s = std::make_unique<SplitPre>();
      s->find = regexMatcher(numericRegex());
      s->behavior = j.value("individual_digits", false) ? Behavior::Isolated : Behavior::Contiguous;
      return s;
    }
    if (type == "Whitespace") {
      auto s = std::make_unique<SplitPre>();
      s->find = regexMatcher(std::make_shared<Regex>(R"(\w+|[^\w\s]+)", ctx));
      s->behavior = Behavior::Removed;
      s->invert = true;
      return s;
    }
    if (type == "WhitespaceSplit") {
      auto s = std::make_unique<SplitPre>();
      s->find = charMatcher(utf8::isWhiteSpace);
      s->behavior = Behavior::Removed;
      return s;
    }
  } catch (const Json::exception& e) {
    fail("{}: {}", ctx, e.what());
  }
  fail("{}: pre_tokenizer {} is not supported (supported: ByteLevel, Split, Metaspace, Digits, Whitespace, "
       "WhitespaceSplit, Sequence)",
       what, type);
}

}  // namespace doppler

#include "tokenizer/decoder.h"

#include "core/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace doppler {

struct DecoderChain::Step {
  enum Kind { Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel, RawBytes, JoinSpace } kind;
  explicit Step(Kind k) : kind(k) {}
  std::string pattern, content;      // Replace (literal pattern), Strip / Metaspace (one character)
  std::shared_ptr<Regex> regex;      // Replace with a Regex pattern
  size_t start = 0, stop = 0;        // Strip
  bool fused = false;                // the step runs after tokens were fused into one text
  bool dropFirst = true;             // Metaspace: prepend_scheme != never
};

DecoderChain::DecoderChain() = default;
DecoderChain::~DecoderChain() = default;
DecoderChain::DecoderChain(DecoderChain&&) noexcept = default;
DecoderChain& DecoderChain::operator=(DecoderChain&&) noexcept = default;

bool DecoderChain::isByteToken(std::string_view t, unsigned char* byte) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    char c = t[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return false;
    v = v * 16 + d;
  }
  if (byte) *byte = static_cast<unsigned char>(v);
  return true;
}

DecoderChain DecoderChain::rawBytes() {
  DecoderChain c;
  c.steps_.push_back(Step(Step::RawBytes));
  return c;
}

DecoderChain DecoderChain::fromJson(const Json& j, const std::string& what) {
  DecoderChain c;
  if (j.is_null()) {
    c.steps_.push_back(Step(Step::JoinSpace));
    return c;
  }
  bool fused = false;
  c.add(j, what, fused);
  return c;
}

static std::string oneChar(const Json& j, const char* key, const std::string& ctx) {
  if (!j.contains(key) || !j[key].is_string()) fail("{}: missing '{}'", ctx, key);
  std::string s = j[key];
  if (s.empty() || utf8::firstInvalid(s) != utf8::kValid || utf8::countChars(s) != 1)
    fail("{}: '{}' must be one character, got '{}'", ctx, key, s);
  return s;
}

void DecoderChain::add(const Json& j, const std::string& what, bool& fused) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("{}: decoder must be an object with a 'type'", what);
  const std::string type = j["type"];
  const std::string ctx = what + ": decoder " + type;
  auto afterFuse = [&]() { fail("{} after Fuse / ByteLevel is not supported", ctx); };
  try {
    if (type == "Sequence") {
      if (!j.contains("decoders") || !j["decoders"].is_array()) fail("{}: 'decoders' must be an array", ctx);
      for (const Json& d : j["decoders"]) add(d, what, fused);
      return;
    }
    Step s(Step::Fuse);
    s.fused = fused;
    if (type == "Fuse") {
      s.kind = Step::Fuse;
      fused = true;
    } else if (type == "ByteFallback") {
      if (fused) afterFuse();
      s.kind = Step::ByteFallback;
      byteFallback_ = true;
    } else if (type == "ByteLevel") {
      if (fused) afterFuse();
      s.kind = Step::ByteLevel;
      fused = true;
    } else if (type == "Metaspace") {
      if (fused) afterFuse();
      s.kind = Step::Metaspace;
      s.content = j.contains("replacement") ? oneChar(j, "replacement", ctx) : std::string("\xE2\x96\x81");
      if (j.contains("prepend_scheme"))
        s.dropFirst = j["prepend_scheme"].get<std::string>() != "never";
      else if (j.contains("add_prefix_space"))
        s.dropFirst = j["add_prefix_space"].get<bool>();
    } else if (type == "Replace") {
      s.kind = Step::Replace;
      if (!j.contains("pattern") || !j["pattern"].is_object()) fail("{}: missing 'pattern'", ctx);
      const Json& pat = j["pattern"];
      if (!j.contains("content") || !j["content"].is_string()) fail("{}: missing 'content'", ctx);
      s.content = j["content"];
      if (pat.contains("String")) {
        s.pattern = pat["String"].get<std::string>();
        if (fused && utf8::countChars(s.pattern) > 1)
          fail("{}: a multi-character pattern after Fuse / ByteLevel is not supported", ctx);
      } else if (pat.contains("Regex")) {
        if (fused) fail("{}: a Regex pattern after Fuse / ByteLevel is not supported", ctx);
        s.regex = std::make_shared<Regex>(pat["Regex"].get<std::string>(), ctx);
      } else {
        fail("{}: pattern must have 'String' or 'Regex'", ctx);
      }
    } else if (type == "Strip") {
      s.kind = Step::Strip;
      s.content = oneChar(j, "content", ctx);
      s.start = j.value("start", size_t(0));
      s.stop = j.value("stop", size_t(0));
      if (fused && s.stop > 0) fail("{}: stripping the end after Fuse / ByteLevel is not supported", ctx);
    } else {
      fail("{} is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)",
           ctx);
    }
    steps_.push_back(std::move(s));
  } catch (const Json::exception& e) {
    fail("{}: {}", ctx, e.what());
  }
}

namespace {

void replaceAll(std::string& t, const std::string& pat, const std::string& with) {
  if (pat.empty() || t.find(pat) == std::string::npos) return;
  std::string out;
  size_t last = 0, at;
  while ((at = t.find(pat, last)) != std::string::npos) {
    out.append(t, last, at - last);
    out += with;
    last = at + pat.size();
  }
  out.append(t, last);
  t = std::move(out);
}

// Strips up to `start` leading and `stop` trailing occurrences of the character c.
void strip(std::string& t, const std::string& c, size_t start, size_t stop) {
  size_t b = 0;
  for (size_t k = 0; k < start && t.compare(b, c.size(), c) == 0; ++k) b += c.size();
  size_t e = t.size();
  for (size_t k = 0; k < stop && e >= b + c.size() && t.compare(e - c.size(), c.size(), c) == 0; ++k)
    e -= c.size();
  if (b > 0 || e < t.size()) t = t.substr(b, e - b);
}

// The bytes of a byte-level token (each character mapped back to its byte), or the token's own UTF-8
// if some character is outside the byte-level alphabet.
void appendByteLevel(std::string& out, std::string_view tok) {
  size_t mark = out.size();
  size_t pos = 0;
  while (pos < tok.size()) {
    int b = utf8::charToByte(utf8::next(tok, pos));
    if (b < 0) {
      out.resize(mark);
      out += tok;
      return;
    }
    out.push_back(char(b));
  }
}

}  // namespace

DecoderChain::Output DecoderChain::run(const std::vector<std::string_view>& tokens, bool atStart, bool final) const {
  Output o;
  // Concatenated bytes of the tokens (ByteLevel / RawBytes), converted to UTF-8 with U+FFFD.
  auto toText = [&](const Step& s, const auto& list) {
    std::string bytes;
    for (const auto& t : list) {
      if (s.kind == Step::ByteLevel)
        appendByteLevel(bytes, t);
      else
        bytes += t;
    }
    size_t keep = bytes.size();
    if (!final) {
      o.pendingBytes = utf8::incompleteTail(bytes);
      keep -= o.pendingBytes;
    }
    std::string text;
    utf8::appendLossy(text, std::string_view(bytes).substr(0, keep));
    return text;
  };
  std::vector<std::string> toks;
  size_t first = 0;
  if (!steps_.empty() && (steps_[0].kind == Step::ByteLevel || steps_[0].kind == Step::RawBytes)) {
    toks.push_back(toText(steps_[0], tokens));  // no copy of the token texts
    first = 1;
  } else {
    toks.assign(tokens.begin(), tokens.end());
  }
  for (size_t stepIndex = first; stepIndex < steps_.size(); ++stepIndex) {
    const Step& s = steps_[stepIndex];
    switch (s.kind) {
      case Step::Replace:
        for (std::string& t : toks) {
          if (s.regex)
            t = s.regex->replaceAll(t, s.content);
          else
            replaceAll(t, s.pattern, s.content);
        }
        break;
      case Step::ByteFallback: {
        std::vector<std::string> out;
        out.reserve(toks.size());
        std::string bytes;
        auto flush = [&]() {
          if (bytes.empty()) return;
          if (utf8::firstInvalid(bytes) == utf8::kValid) {
            out.push_back(bytes);
          } else {
            for (size_t k = 0; k < bytes.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (std::string& t : toks) {
          unsigned char b;
          if (isByteToken(t, &b)) {
            bytes.push_back(char(b));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        toks = std::move(out);
        break;
      }
      case Step::Fuse: {
        std::string all;
        for (const std::string& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case Step::Strip:
        if (s.fused) {
          if (!atStart || toks.empty()) break;
          // Settled once the text holds `start` characters or one that is not stripped.
          const std::string& t = toks[0];
          size_t k = 0, b = 0;
          while (k < s.start && t.compare(b, s.content.size(), s.content) == 0) {
            b += s.content.size();
            ++k;
          }
          o.startSettled = k == s.start || b < t.size();
          strip(toks[0], s.content, s.start, 0);
        } else {
          for (std::string& t : toks) strip(t, s.content, s.start, s.stop);
        }
        break;
      case Step::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i)
          replaceAll(toks[i], s.content, (i == 0 && atStart && s.dropFirst) ? std::string() : std::string(" "));
        break;
      case Step::ByteLevel:
      case Step::RawBytes: {
        std::string text = toText(s, toks);
        toks.assign(1, std::move(text));
        break;
      }
      case Step::JoinSpace: {
        std::string all;
        for (size_t i = 0; i < toks.size(); ++i) {
          if (i > 0 || !atStart) all += ' ';
          all += toks[i];
        }
        toks.assign(1, std::move(all));
        break;
      }
    }
  }
  if (toks.size() == 1) {
    o.text = std::move(toks[0]);
  } else {
    for (const std::string& t : toks) o.text += t;
  }
  return o;
}

}  // namespace doppler

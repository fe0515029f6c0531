#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <vector>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace doppler {

namespace {

// Index just past the ']' closing the class that opens at p[open] == '['; npos if unterminated.
// Records the positions of top-level "&&" (Rust-regex intersections).
size_t classEnd(const std::string& p, size_t open, std::vector<size_t>* amps) {
  size_t k = open + 1;
  if (k < p.size() && p[k] == '^') ++k;
  if (k < p.size() && p[k] == ']') ++k;  // a leading ']' is literal
  while (k < p.size()) {
    char c = p[k];
    if (c == '\\') {
      k += 2;
    } else if (c == '[') {
      if (k + 1 < p.size() && p[k + 1] == ':') {  // POSIX [:name:]
        size_t e = p.find(":]", k + 2);
        if (e == std::string::npos) return std::string::npos;
        k = e + 2;
      } else {
        size_t e = classEnd(p, k, nullptr);
        if (e == std::string::npos) return std::string::npos;
        k = e;
      }
    } else if (c == ']') {
      return k + 1;
    } else if (c == '&' && k + 1 < p.size() && p[k + 1] == '&') {
      if (amps) amps->push_back(k);
      k += 2;
    } else {
      ++k;
    }
  }
  return std::string::npos;
}

// A character class "[body]" / "[^body]" as a PCRE2 atom. PCRE2's \s (with UCP) is White_Space plus
// U+180E; Oniguruma's and Rust's is White_Space alone, so U+180E is moved from \s to \S.
std::string classAtom(bool negated, const std::string& body) {
  bool lower = false, upper = false;
  for (size_t i = 0; i + 1 < body.size(); ++i) {
    if (body[i] != '\\') continue;
    lower |= body[i + 1] == 's';
    upper |= body[i + 1] == 'S';
    ++i;
  }
  std::string cls = std::string(negated ? "[^" : "[") + body + (upper && !negated ? "\\x{180E}]" : "]");
  if (lower == upper) return cls;
  if (!negated) return lower ? "(?:(?!\\x{180E})" + cls + ")" : cls;
  return lower ? "(?:\\x{180E}|" + cls + ")" : "(?:(?!\\x{180E})" + cls + ")";
}

std::string translateFrom(const std::string& p);

// One operand of an intersection: a nested class "[...]" is translated as such, anything else is the
// body of a class.
std::string operandClass(const std::string& op) {
  if (op.size() >= 2 && op.front() == '[' && classEnd(op, 0, nullptr) == op.size())
    return translateFrom(op);
  return classAtom(false, op);
}

std::string translateFrom(const std::string& p) {
  std::string out;
  size_t i = 0;
  while (i < p.size()) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char e = p[i + 1];
      if (e == 's') {
        out += "[^\\S\\x{180E}]";
      } else if (e == 'S') {
        out += "[\\S\\x{180E}]";
      } else {
        out += c;
        out += e;
      }
      i += 2;
      continue;
    }
    if (c == '[') {
      std::vector<size_t> amps;
      size_t end = classEnd(p, i, &amps);
      if (end == std::string::npos) {  // let PCRE2 report it
        out += p.substr(i);
        break;
      }
      size_t bodyStart = i + 1;
      bool negated = p[bodyStart] == '^';
      if (negated) ++bodyStart;
      if (amps.empty()) {
        out += classAtom(negated, p.substr(bodyStart, end - 1 - bodyStart));
      } else {
        std::vector<std::string> ops;
        size_t s = bodyStart;
        for (size_t a : amps) {
          ops.push_back(p.substr(s, a - s));
          s = a + 2;
        }
        ops.push_back(p.substr(s, end - 1 - s));
        std::string guards;
        for (size_t k = 1; k < ops.size(); ++k) guards += "(?=" + operandClass(ops[k]) + ")";
        std::string both = guards + operandClass(ops[0]);
        out += negated ? "(?:(?!" + both + ")(?s:.))" : "(?:" + both + ")";
      }
      i = end;
      continue;
    }
    out += c;
    ++i;
  }
  return out;
}

// Per-thread match data and JIT stack (a pcre2_code is shared; these are not).
struct ThreadScratch {
  pcre2_match_data* md = nullptr;
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* ctx = nullptr;
  ThreadScratch() {
    md = pcre2_match_data_create(1, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    if (ctx && stack) pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~ThreadScratch() {
    if (md) pcre2_match_data_free(md);
    if (ctx) pcre2_match_context_free(ctx);
    if (stack) pcre2_jit_stack_free(stack);
  }
};

ThreadScratch& scratch() {
  thread_local ThreadScratch s;
  if (!s.md || !s.ctx) fail("regex: out of memory");
  return s;
}

}  // namespace

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() {
    if (code) pcre2_code_free(code);
  }
};

// Oniguruma's \uHHHH escape is PCRE2's \x{HHHH}.
static std::string unicodeEscapes(const std::string& p) {
  std::string out;
  out.reserve(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '\\' || i + 1 >= p.size()) {
      out += p[i];
      continue;
    }
    if (p[i + 1] == 'u' && i + 6 <= p.size() &&
        std::all_of(p.begin() + long(i) + 2, p.begin() + long(i) + 6, [](char c) { return std::isxdigit(uint8_t(c)); })) {
      out += "\\x{" + p.substr(i + 2, 4) + "}";
      i += 5;
    } else {
      out += p[i];
      out += p[i + 1];
      ++i;
    }
  }
  return out;
}

std::string Regex::translate(const std::string& pattern) { return translateFrom(unicodeEscapes(pattern)); }

std::string Regex::quote(std::string_view literal) {
  std::string out = "\\Q";
  size_t i = 0;
  while (i < literal.size()) {
    size_t e = literal.find("\\E", i);
    if (e == std::string_view::npos) {
      out.append(literal.substr(i));
      break;
    }
    out.append(literal.substr(i, e - i));
    out += "\\E\\\\E\\Q";
    i = e + 2;
  }
  out += "\\E";
  return out;
}

Regex::Regex(const std::string& pattern, const std::string& what) : pattern_(pattern), code_(new Code) {
  std::string translated = translate(pattern);
  int err = 0;
  PCRE2_SIZE errOffset = 0;
  code_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &errOffset, nullptr);
  if (!code_->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: cannot compile regex '{}': {} at offset {}", what, pattern, reinterpret_cast<char*>(msg),
         errOffset);
  }
  code_->jit = pcre2_jit_compile(code_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;

void Regex::forEachMatch(std::string_view text, const std::function<void(size_t, size_t)>& f) const {
  ThreadScratch& s = scratch();
  size_t pos = 0;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  while (pos <= text.size()) {
    int rc;
    if (code_->jit) {
      rc = pcre2_jit_match(code_->code, subject, text.size(), pos, 0, s.md, s.ctx);
    } else {
      rc = pcre2_match(code_->code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, s.md, s.ctx);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      fail("regex '{}': match failed at byte {}: {}", pattern_, pos, reinterpret_cast<char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
    size_t start = ov[0], end = ov[1];
    f(start, end);
    if (end > start) {
      pos = end;
    } else {
      if (end >= text.size()) return;
      size_t len = utf8::sequenceLength(text, end);
      pos = end + (len ? len : 1);
    }
  }
}

std::string Regex::replaceAll(std::string_view text, std::string_view with) const {
  std::string out;
  size_t last = 0;
  forEachMatch(text, [&](size_t s, size_t e) {
    if (e == s) return;
    out.append(text.substr(last, s - last));
    out.append(with);
    last = e;
  });
  out.append(text.substr(last));
  return out;
}

}  // namespace doppler

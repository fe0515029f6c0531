// PCRE2 (UTF + UCP, JIT when available) wrapper for the tokenizer's split patterns.
//
// Patterns come from tokenizer.json (Oniguruma syntax) and tiktoken configs (Rust regex syntax). Two
// differences with PCRE2 are translated before compiling:
//  - class intersections `[A&&[^B]]` (Kimi K2's pattern) become `(?:(?=[^B])[A])`;
//  - `\uHHHH` (Oniguruma) becomes `\x{HHHH}`;
//  - PCRE2's `\s` (with UCP) also matches U+180E, which is not White_Space for Oniguruma and Rust;
//    `\s` / `\S` are rewritten to leave it out.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace doppler {

class Regex {
 public:
  // what: context for errors ("tokenizer.json: pre_tokenizer Split").
  Regex(const std::string& pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls f(start, end) for each successive non-overlapping match in text (byte offsets). text must be
  // valid UTF-8. An empty match advances the search by one character.
  void forEachMatch(std::string_view text, const std::function<void(size_t, size_t)>& f) const;

  // Replaces every match of the pattern in text by `with` (literal).
  std::string replaceAll(std::string_view text, std::string_view with) const;

  const std::string& pattern() const { return pattern_; }

  // The PCRE2 form of an Oniguruma / Rust-regex pattern (see above). Exposed for tests.
  static std::string translate(const std::string& pattern);

  // Escapes a literal string for use in a pattern.
  static std::string quote(std::string_view literal);

 private:
  struct Code;
  std::string pattern_;
  std::unique_ptr<Code> code_;
};

}  // namespace doppler

// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): split normalized text into pieces (words) that
// the BPE model encodes independently. Supported: ByteLevel, Split (Regex or String pattern, every
// behavior, invert), Metaspace (prepend_scheme always/first/never, split), Digits, Whitespace,
// WhitespaceSplit, Sequence.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/json_util.h"

namespace doppler {

struct Piece {
  std::string text;  // valid UTF-8
  bool atStart;      // begins at offset 0 of the original input (Metaspace prepend_scheme "first")
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits / rewrites pieces in place; empty pieces are dropped.
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};

// nullptr for JSON null. what: context for errors.
std::unique_ptr<PreTokenizer> makePreTokenizer(const Json& j, const std::string& what);

// The GPT-2 split pattern (ByteLevel use_regex).
extern const char* const kGpt2Pattern;

// Maps each byte of s to its GPT-2 byte-level character.
std::string byteLevelEncode(std::string_view s);

}  // namespace doppler

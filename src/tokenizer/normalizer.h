// Normalizers of tokenizer.json ("normalizer"): applied to each stretch of raw text between added tokens,
// before pre-tokenization. Supported: Sequence, Prepend, Replace (String or Regex pattern), Strip, NFC.
// Others (NFD, NFKC, NFKD, Lowercase, BertNormalizer, Precompiled, ...) are rejected when loading.
#pragma once
#include <memory>
#include <string>

#include "core/json_util.h"

namespace doppler {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Normalizes s in place (s is valid UTF-8 and stays so).
  virtual void normalize(std::string& s) const = 0;
};

// Builds the normalizer described by j (a tokenizer.json "normalizer" object); nullptr for JSON null.
// what: context for errors ("DIR/tokenizer.json").
std::unique_ptr<Normalizer> makeNormalizer(const Json& j, const std::string& what);

// Unicode canonical composition (NFC), Unicode 14.0 data.
std::string toNfc(const std::string& s);

}  // namespace doppler

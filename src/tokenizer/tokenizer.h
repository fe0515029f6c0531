// Tokenizer: Hugging Face tokenizer.json (BPE model; normalizers, pre-tokenizers, added tokens,
// post-processor, decoders) and tiktoken files (Kimi K2). Encoding follows the tokenizers library:
// added tokens are matched in the raw text first (longest match, honoring lstrip / rstrip /
// single_word / normalized), each stretch between them is normalized, pre-tokenized and BPE-encoded,
// then the post-processor adds BOS / EOS when addSpecial is true.
//
// tokenizer_config.json beside tokenizer.json (or tiktoken.model) supplies bos_token / eos_token and,
// when present, add_bos_token / add_eos_token (which add or remove the BOS / EOS of the post-processor,
// as transformers' Llama-style tokenizers do). eosIds() also takes generation_config.json's eos_token_id.
//
// Thread safety: a Tokenizer is immutable after loading; encode / decode may run concurrently.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace doppler {

class Tokenizer {
 public:
  // DIR/tokenizer.json, else DIR/tiktoken.model (+ tiktoken_config.json); Error "DIR: no tokenizer.json or
  // tiktoken.model" otherwise.
  static std::unique_ptr<Tokenizer> fromDir(const std::string& dir);
  static std::unique_ptr<Tokenizer> fromJsonFile(const std::string& path);
  // configPath may name a missing file: then Kimi K2's pattern and tokenizer_config.json's added tokens
  // (beside the model) are used.
  static std::unique_ptr<Tokenizer> fromTiktoken(const std::string& modelPath, const std::string& configPath);

  ~Tokenizer();

  // Invalid UTF-8 -> Error "invalid UTF-8 at byte N". Special tokens written in the text always map to
  // their ids; addSpecial adds what the post-processor adds (BOS for Llama-style tokenizers).
  std::vector<int32_t> encode(std::string_view text, bool addSpecial = true) const;
  // Ids outside the vocabulary -> Error.
  std::string decode(std::span<const int32_t> ids, bool skipSpecial = false) const;

  // One more than the largest token id.
  int32_t vocabSize() const;
  std::optional<int32_t> tokenId(std::string_view tokenText) const;
  // The token's text as stored in the vocabulary (byte-level / metaspace form; raw bytes for tiktoken).
  std::string tokenText(int32_t id) const;
  bool isSpecial(int32_t id) const;

  // BOS: the first token the post-processor puts before the text, else tokenizer_config.json's bos_token.
  std::optional<int32_t> bosId() const;
  // tokenizer_config.json's eos_token, then generation_config.json's eos_token_id (deduplicated).
  std::vector<int32_t> eosIds() const;
  // Token strings from tokenizer_config.json ("" when absent), for chat templates.
  const std::string& bosToken() const;
  const std::string& eosToken() const;

  struct Impl;

 private:
  friend class StreamDecoder;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streaming detokenization: push ids one at a time and get the text they complete. The concatenation of
// everything push() and flush() return equals decode() of the whole sequence: text is held back while a
// UTF-8 character, a run of <0xNN> byte tokens or the start-of-text handling (Metaspace, Strip) is not
// final yet.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skipSpecial = false);
  std::string push(int32_t id);
  // Returns what is held back (an incomplete character becomes U+FFFD) and resets the stream's window;
  // later pushes continue the same text.
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skipSpecial_;
  bool atStart_ = true;
  std::vector<std::string> window_;  // token texts since the last point where the text was final
  size_t emitted_ = 0;               // bytes of the window's text already returned
};

}  // namespace doppler

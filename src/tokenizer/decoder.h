// Decoders of tokenizer.json ("decoder"): turn the token texts of a sequence of ids back into text.
// Supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence; no decoder joins the
// tokens with spaces (as the tokenizers library does). tiktoken's decoding (token bytes concatenated,
// invalid UTF-8 replaced) is the RawBytes chain.
//
// Streaming (StreamDecoder) relies on each step being local to a token, except for a few effects that
// run() reports so the stream can hold text back until it is final: the first token (Metaspace drops
// its replacement characters; a Strip after Fuse strips the start of the text), runs of <0xNN> byte
// tokens (ByteFallback validates a whole run at once) and characters cut by a token boundary (ByteLevel
// / RawBytes). Steps that would make decoding depend on more than that (ByteFallback, Metaspace or
// ByteLevel after a Fuse, Replace of a multi-character pattern after a Fuse, Strip of the end after a
// Fuse) are rejected when loading.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/json_util.h"

namespace doppler {

class Regex;

class DecoderChain {
 public:
  // j: the "decoder" object of tokenizer.json (JSON null: join tokens with " "). what: context.
  static DecoderChain fromJson(const Json& j, const std::string& what);
  // tiktoken: token texts are raw bytes, concatenated and decoded as UTF-8 with replacement.
  static DecoderChain rawBytes();

  DecoderChain();
  ~DecoderChain();
  DecoderChain(DecoderChain&&) noexcept;
  DecoderChain& operator=(DecoderChain&&) noexcept;

  struct Output {
    std::string text;
    size_t pendingBytes = 0;    // bytes of a character cut at the end, held back (final == false)
    bool startSettled = true;   // the start-of-text effects would not change with more tokens
  };
  // Decodes the token texts of a stretch of the sequence. atStart: tokens[0] is the sequence's first
  // token. final: nothing follows (a cut character becomes U+FFFD instead of being held back).
  Output run(const std::vector<std::string_view>& tokens, bool atStart, bool final) const;

  bool hasByteFallback() const { return byteFallback_; }

  // Whether t is a byte token "<0xNN>" (as ByteFallback reads it); sets *byte.
  static bool isByteToken(std::string_view t, unsigned char* byte = nullptr);

 private:
  struct Step;
  std::vector<Step> steps_;
  bool byteFallback_ = false;
  void add(const Json& j, const std::string& what, bool& fused);
};

}  // namespace doppler

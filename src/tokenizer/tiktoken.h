// tiktoken tokenizer files (Kimi K2): `tiktoken.model` (one "base64(token bytes) rank" per line, the rank
// being the token id) and the split pattern + special tokens, from `tiktoken_config.json`
// ({"pat_str": ..., "special_tokens": {text: id}}) or, when that file is absent, Kimi K2's own pattern
// with the special tokens of tokenizer_config.json's "added_tokens_decoder" (the rest of the 256 reserved
// ids after the base vocabulary named <|reserved_token_N|>, as tokenization_kimi.py does).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer/bpe.h"

namespace doppler {

struct TiktokenFiles {
  std::vector<std::string> tokens;  // [n] token bytes by rank ("" where no rank)
  StringIdMap ranks;                // token bytes -> rank
  std::string pattern;
  std::vector<std::pair<std::string, int32_t>> specials;  // text, id
};

// Kimi K2's split pattern (tokenization_kimi.py, pat_str).
extern const char* const kKimiPattern;

// Reads tiktoken.model; errors name the file and line.
void readTiktokenModel(const std::string& path, TiktokenFiles& out);
// Reads tiktoken_config.json (pat_str, special_tokens).
void readTiktokenConfig(const std::string& path, TiktokenFiles& out);
// Kimi K2 defaults from tokenizer_config.json (added_tokens_decoder), for directories without
// tiktoken_config.json.
void kimiDefaults(const std::string& tokenizerConfigPath, TiktokenFiles& out);

// Standard base64 (with or without padding); returns false on bad input.
bool base64Decode(std::string_view in, std::string& out);

// tiktoken's byte pair encoding of one piece: the whole piece if it is a token, else its bytes merged by
// the rank of the concatenation. Appends ids to out; fails if a byte has no token.
void tiktokenEncodePiece(const TiktokenFiles& t, std::string_view piece, std::vector<int32_t>& out);

}  // namespace doppler

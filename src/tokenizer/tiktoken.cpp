#include "tokenizer/tiktoken.h"

#include <fmt/format.h>

#include <set>

#include "core/error.h"
#include "core/json_util.h"
#include "core/mapped_file.h"

namespace doppler {

const char* const kKimiPattern =
    R"([\p{Han}]+)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?)"
    R"(|\p{N}{1,3})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*)"
    R"(|\s*[\r\n]+)"
    R"(|\s+(?!\S))"
    R"(|\s+)";

bool base64Decode(std::string_view in, std::string& out) {
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z')
      v = c - 'A';
    else if (c >= 'a' && c <= 'z')
      v = c - 'a' + 26;
    else if (c >= '0' && c <= '9')
      v = c - '0' + 52;
    else if (c == '+')
      v = 62;
    else if (c == '/')
      v = 63;
    else if (c == '=') {
      ++pad;
      continue;
    } else
      return false;
    if (pad) return false;  // data after padding
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  // Leftover bits must be zero padding of a final partial group.
  if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) return false;
  if (pad > 2) return false;
  return true;
}

void readTiktokenModel(const std::string& path, TiktokenFiles& out) {
  MappedFile f(path);
  std::string_view text(reinterpret_cast<const char*>(f.data()), f.size());
  std::string bytes;
  size_t pos = 0, line = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view l = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty()) continue;
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos || l.find(' ', sp + 1) != std::string_view::npos)
      fail("{}:{}: expected 'base64 rank'", path, line);
    if (!base64Decode(l.substr(0, sp), bytes) || bytes.empty())
      fail("{}:{}: invalid base64 '{}'", path, line, l.substr(0, sp));
    std::string_view r = l.substr(sp + 1);
    int64_t rank = 0;
    if (r.empty() || r.size() > 9) fail("{}:{}: invalid rank '{}'", path, line, r);
    for (char c : r) {
      if (c < '0' || c > '9') fail("{}:{}: invalid rank '{}'", path, line, r);
      rank = rank * 10 + (c - '0');
    }
    if (size_t(rank) >= out.tokens.size()) out.tokens.resize(size_t(rank) + 1);
    if (!out.tokens[size_t(rank)].empty()) fail("{}:{}: rank {} appears twice", path, line, rank);
    auto [it, fresh] = out.ranks.emplace(bytes, int32_t(rank));
    if (!fresh) fail("{}:{}: token with rank {} repeats rank {}", path, line, rank, it->second);
    out.tokens[size_t(rank)] = bytes;
  }
  if (out.ranks.empty()) fail("{}: no tokens", path);
}

void readTiktokenConfig(const std::string& path, TiktokenFiles& out) {
  Json j = readJsonFile(path);
  try {
    if (!j.is_object() || !j.contains("pat_str") || !j["pat_str"].is_string())
      fail("{}: missing 'pat_str'", path);
    out.pattern = j["pat_str"];
    if (j.contains("special_tokens")) {
      const Json& s = j["special_tokens"];
      if (!s.is_object()) fail("{}: 'special_tokens' must be an object {{text: id}}", path);
      for (auto it = s.begin(); it != s.end(); ++it) {
        if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
            it.value().get<int64_t>() >= INT32_MAX)
          fail("{}: special token '{}' needs a non-negative integer id", path, it.key());
        out.specials.emplace_back(it.key(), it.value().get<int32_t>());
      }
    }
  } catch (const Json::exception& e) {
    fail("{}: {}", path, e.what());
  }
}

void kimiDefaults(const std::string& tokenizerConfigPath, TiktokenFiles& out) {
  out.pattern = kKimiPattern;
  Json j = readJsonFile(tokenizerConfigPath);
  const int32_t base = int32_t(out.tokens.size());
  std::set<int32_t> named;
  try {
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
      for (auto it = j["added_tokens_decoder"].begin(); it != j["added_tokens_decoder"].end(); ++it) {
        int64_t id;
        try {
          id = std::stoll(it.key());
        } catch (...) {
          fail("{}: added_tokens_decoder key '{}' is not an id", tokenizerConfigPath, it.key());
        }
        if (id < 0 || id >= INT32_MAX) fail("{}: added token id {} out of range", tokenizerConfigPath, id);
        const Json& t = it.value();
        std::string content = t.is_string() ? t.get<std::string>() : t.at("content").get<std::string>();
        out.specials.emplace_back(content, int32_t(id));
        named.insert(int32_t(id));
      }
    }
  } catch (const Json::exception& e) {
    fail("{}: {}", tokenizerConfigPath, e.what());
  }
  for (int32_t id = base; id < base + 256; ++id)
    if (!named.count(id)) out.specials.emplace_back(fmt::format("<|reserved_token_{}|>", id), id);
}

void tiktokenEncodePiece(const TiktokenFiles& t, std::string_view piece, std::vector<int32_t>& out) {
  auto whole = t.ranks.find(piece);
  if (whole != t.ranks.end()) {
    out.push_back(whole->second);
    return;
  }
  thread_local std::vector<int32_t> syms;
  thread_local std::string buf;
  syms.clear();
  for (unsigned char c : piece) {
    auto it = t.ranks.find(std::string_view(reinterpret_cast<const char*>(&c), 1));
    if (it == t.ranks.end()) fail("tiktoken: no token for byte 0x{:02X}", c);
    syms.push_back(it->second);
  }
  bpeMerge(syms, [&t](int32_t a, int32_t b) {
    const std::string& x = t.tokens[size_t(a)];
    const std::string& y = t.tokens[size_t(b)];
    buf.assign(x);
    buf.append(y);
    auto it = t.ranks.find(std::string_view(buf));
    return it == t.ranks.end() ? Merge{} : Merge{it->second, it->second};
  });
  out.insert(out.end(), syms.begin(), syms.end());
}

}  // namespace doppler

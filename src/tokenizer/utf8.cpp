#include "tokenizer/utf8.h"

namespace doppler::utf8 {

namespace {

// Expected total length of a sequence with lead byte b (0 if b cannot start a sequence), and the allowed
// range of its second byte (Unicode Table 3-7, "well-formed UTF-8 byte sequences").
struct Lead {
  uint8_t len;
  uint8_t lo, hi;  // range of the second byte
};

Lead leadInfo(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Number of bytes from pos that match a prefix of a well-formed sequence (at most the full length),
// and the full length the lead byte asks for.
size_t validPrefix(std::string_view s, size_t pos, size_t* fullLen) {
  Lead l = leadInfo(uint8_t(s[pos]));
  *fullLen = l.len;
  if (l.len == 0) return 0;
  size_t n = 1;
  for (; n < l.len && pos + n < s.size(); ++n) {
    uint8_t c = uint8_t(s[pos + n]);
    uint8_t lo = n == 1 ? l.lo : 0x80, hi = n == 1 ? l.hi : 0xBF;
    if (c < lo || c > hi) break;
  }
  return n;
}

}  // namespace

size_t sequenceLength(std::string_view s, size_t pos) {
  size_t full = 0;
  size_t n = validPrefix(s, pos, &full);
  return (full != 0 && n == full) ? n : 0;
}

size_t firstInvalid(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len = sequenceLength(s, i);
    if (len == 0) return i;
    i += len;
  }
  return kValid;
}

char32_t next(std::string_view s, size_t& pos) {
  uint8_t b = uint8_t(s[pos]);
  if (b < 0x80) {
    ++pos;
    return b;
  }
  size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  char32_t cp = b & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (uint8_t(s[pos + k]) & 0x3F);
  pos += len;
  return cp;
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

std::string encode(char32_t cp) {
  std::string s;
  append(s, cp);
  return s;
}

size_t incompleteTail(std::string_view s) {
  // A cut character has at most 3 bytes; look for its lead byte among the last 3.
  size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    size_t pos = n - back;
    uint8_t b = uint8_t(s[pos]);
    if (b >= 0x80 && b < 0xC0) continue;  // continuation byte: keep looking for the lead
    size_t full = 0;
    size_t got = validPrefix(s, pos, &full);
    return (full > back && got == back) ? back : 0;
  }
  return 0;
}

void appendLossy(std::string& out, std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    while (i < s.size() && uint8_t(s[i]) < 0x80) ++i;
    out.append(s.data() + start, i - start);
    if (i >= s.size()) break;
    size_t full = 0;
    size_t got = validPrefix(s, i, &full);
    if (full != 0 && got == full) {
      out.append(s.data() + i, got);
      i += got;
    } else {
      out += "\xEF\xBF\xBD";
      i += got == 0 ? 1 : got;
    }
  }
}

size_t countChars(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (uint8_t(c) & 0xC0) != 0x80;
  return n;
}

bool isWhiteSpace(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

const std::array<char32_t, 256>& byteToChar() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? char32_t(b) : extra++;
    }
    return t;
  }();
  return table;
}

int charToByte(char32_t cp) {
  static const std::array<int16_t, 324> inverse = [] {
    std::array<int16_t, 324> inv{};
    inv.fill(-1);
    const auto& t = byteToChar();
    for (int b = 0; b < 256; ++b) inv[t[b]] = int16_t(b);
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

}  // namespace doppler::utf8

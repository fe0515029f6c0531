// UTF-8 helpers for the tokenizer: validation, code point iteration, lossy conversion (U+FFFD per maximal
// invalid subpart, as Rust's String::from_utf8_lossy and Python's errors="replace" do) and the GPT-2
// byte-level alphabet (every byte 0..255 maps to one printable code point).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace doppler::utf8 {

constexpr size_t kValid = size_t(-1);

// Offset of the first byte of the first invalid sequence in s, or kValid if s is valid UTF-8
// (no overlongs, no surrogates, nothing above U+10FFFF, no truncated sequence at the end).
size_t firstInvalid(std::string_view s);

// Length (1..4) of the well-formed sequence starting at s[pos], or 0 if it is not well formed
// (including a sequence cut off by the end of s).
size_t sequenceLength(std::string_view s, size_t pos);

// Decodes the code point at s[pos] (which must start a well-formed sequence) and advances pos.
char32_t next(std::string_view s, size_t& pos);

void append(std::string& out, char32_t cp);
std::string encode(char32_t cp);

// Number of trailing bytes of s that form a proper prefix of a well-formed sequence (a character cut
// in the middle that more bytes could still complete); 0 if s ends on a character boundary or with
// bytes that are invalid whatever follows.
size_t incompleteTail(std::string_view s);

// Appends s to out with each maximal invalid subpart replaced by U+FFFD.
void appendLossy(std::string& out, std::string_view s);

// Number of code points of valid UTF-8 s.
size_t countChars(std::string_view s);

// Unicode White_Space (Rust's char::is_whitespace, which the tokenizers library uses).
bool isWhiteSpace(char32_t cp);

// GPT-2 byte-level alphabet.
const std::array<char32_t, 256>& byteToChar();
// The byte for a byte-level code point, or -1 if cp is not in the alphabet.
int charToByte(char32_t cp);

}  // namespace doppler::utf8

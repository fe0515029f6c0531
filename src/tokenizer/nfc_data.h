// Unicode tables for NFC (see nfc_data.cpp for their origin).
#pragma once
#include <cstddef>
#include <cstdint>

namespace doppler::nfc {

struct CccRange {
  uint32_t first, last;  // code points, inclusive
  uint8_t ccc;           // canonical combining class (non-zero)
};

struct Decomposition {
  uint32_t cp;
  uint32_t first, second;  // second == 0: a singleton decomposition
  uint8_t composes;        // 1: (first, second) composes back to cp under NFC
};

extern const CccRange kCcc[];  // sorted by first
extern const size_t kCccCount;
extern const Decomposition kDecompositions[];  // sorted by cp
extern const size_t kDecompositionCount;

}  // namespace doppler::nfc

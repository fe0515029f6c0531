// Element types and scalar conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace doppler {

enum class DType : uint8_t {
  F32, F16, BF16, F64,
  I8, I16, I32, I64,
  U8, U16, U32, U64,
  BOOL,
  F8_E4M3, F8_E5M2,
  MXFP4,  // OCP microscaling FP4 (gpt-oss experts): blocks of 32 E2M1 values sharing one E8M0 scale
};

// Bytes per element; for a block type (dtypeBlockSize(t) > 1) bytes per block.
size_t dtypeSize(DType t);
// Elements per block: 1 for plain types, 32 for MXFP4. A block type stores each row of a matrix W[out, in]
// as in / 32 consecutive blocks (in % 32 == 0). MXFP4 block (17 bytes): byte 0 = E8M0 scale e (2^(e - 127)),
// bytes 1..16 = 32 E2M1 codes, element 2i in the low nibble and 2i + 1 in the high nibble of byte 1 + i.
int64_t dtypeBlockSize(DType t);
// Bytes of n elements (n / blockSize * dtypeSize); Error when n is not a multiple of the block size.
uint64_t dtypeBytes(DType t, uint64_t n);
// RDRR / CLI spelling: "f32", "f16", "bf16", "f64", "i8".."i64", "u8".."u64", "bool", "f8_e4m3", "f8_e5m2".
std::string_view dtypeName(DType t);
std::optional<DType> parseDTypeName(std::string_view s);
// safetensors spelling: "F32", "F16", "BF16", "F64", "I8".."I64", "U8".."U64", "BOOL", "F8_E4M3", "F8_E5M2".
std::string_view safetensorsDTypeName(DType t);
std::optional<DType> parseSafetensorsDType(std::string_view s);
bool isFloat(DType t);

// ---- scalar conversions (round-to-nearest-even where narrowing) ----
inline float bf16ToF32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN (quiet)
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16ToF32(uint16_t h);
uint16_t f32ToF16(float f);

// Convert n elements of src (type from) into dst (type to). Float types only (f32/f16/bf16/f64).
void convertElements(const void* src, DType from, void* dst, DType to, size_t n);
// Read n elements of any float type as f32.
void toF32(const void* src, DType from, float* dst, size_t n);

}  // namespace doppler

#include "core/dtype.h"

#include "core/error.h"

namespace doppler {

namespace {
struct DTypeInfo {
  DType t;
  size_t size;
  const char* name;
  const char* st;
};
constexpr DTypeInfo kInfo[] = {
    {DType::F32, 4, "f32", "F32"},       {DType::F16, 2, "f16", "F16"},
    {DType::BF16, 2, "bf16", "BF16"},    {DType::F64, 8, "f64", "F64"},
    {DType::I8, 1, "i8", "I8"},          {DType::I16, 2, "i16", "I16"},
    {DType::I32, 4, "i32", "I32"},       {DType::I64, 8, "i64", "I64"},
    {DType::U8, 1, "u8", "U8"},          {DType::U16, 2, "u16", "U16"},
    {DType::U32, 4, "u32", "U32"},       {DType::U64, 8, "u64", "U64"},
    {DType::BOOL, 1, "bool", "BOOL"},    {DType::F8_E4M3, 1, "f8_e4m3", "F8_E4M3"},
    {DType::F8_E5M2, 1, "f8_e5m2", "F8_E5M2"}, {DType::MXFP4, 17, "mxfp4", "MXFP4"},
};
const DTypeInfo& info(DType t) { return kInfo[static_cast<int>(t)]; }
}  // namespace

size_t dtypeSize(DType t) { return info(t).size; }
int64_t dtypeBlockSize(DType t) { return t == DType::MXFP4 ? 32 : 1; }
uint64_t dtypeBytes(DType t, uint64_t n) {
  const uint64_t b = uint64_t(dtypeBlockSize(t));
  check(n % b == 0, "{} elements of {} do not fill whole blocks of {}", n, dtypeName(t), b);
  return n / b * dtypeSize(t);
}
std::string_view dtypeName(DType t) { return info(t).name; }
std::string_view safetensorsDTypeName(DType t) { return info(t).st; }
std::optional<DType> parseDTypeName(std::string_view s) {
  for (const auto& i : kInfo)
    if (s == i.name) return i.t;
  return std::nullopt;
}
std::optional<DType> parseSafetensorsDType(std::string_view s) {
  for (const auto& i : kInfo)
    if (s == i.st) return i.t;
  return std::nullopt;
}
bool isFloat(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64;
}

float f16ToF32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      u = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | mant << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00);  // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00);  // overflow -> inf (>= 65520 rounds to inf)
  if (a < 0x38800000u) {                                 // subnormal or zero in f16
    if (a < 0x33000000u) return uint16_t(sign);           // < 2^-25 rounds to 0
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffff) | 0x800000;
    // value = m * 2^(e-150); the f16 subnormal unit is 2^-24, so mant = m >> (126 - e), rounded to even.
    uint32_t sh = 126 - e;
    uint32_t mant = m >> sh;
    uint32_t rem = m & ((1u << sh) - 1);
    uint32_t half = 1u << (sh - 1);
    if (rem > half || (rem == half && (mant & 1))) mant++;
    return uint16_t(sign | mant);
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (uint32_t(127 - 15) << 23);
  return uint16_t(sign | (r >> 13));
}

void toF32(const void* src, DType from, float* dst, size_t n) {
  switch (from) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; i++) dst[i] = bf16ToF32(s[i]);
      return;
    }
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; i++) dst[i] = f16ToF32(s[i]);
      return;
    }
    case DType::F64: {
      auto* s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; i++) dst[i] = float(s[i]);
      return;
    }
    default:
      fail("cannot convert {} to f32", dtypeName(from));
  }
}

void convertElements(const void* src, DType from, void* dst, DType to, size_t n) {
  if (from == to) {
    std::memcpy(dst, src, n * dtypeSize(from));
    return;
  }
  check(isFloat(from) && isFloat(to), "cannot convert {} to {}", dtypeName(from), dtypeName(to));
  if (to == DType::F32) return toF32(src, from, static_cast<float*>(dst), n);
  // Go through f32 in small chunks. (bf16/f16 -> f32 is exact, so rounding happens once.)
  float buf[1024];
  auto* out = static_cast<uint8_t*>(dst);
  auto* in = static_cast<const uint8_t*>(src);
  size_t ins = dtypeSize(from);
  for (size_t i = 0; i < n; i += 1024) {
    size_t m = std::min<size_t>(1024, n - i);
    toF32(in + i * ins, from, buf, m);
    for (size_t j = 0; j < m; j++) {
      switch (to) {
        case DType::BF16: {
          uint16_t h = f32ToBf16(buf[j]);
          std::memcpy(out + (i + j) * 2, &h, 2);
          break;
        }
        case DType::F16: {
          uint16_t h = f32ToF16(buf[j]);
          std::memcpy(out + (i + j) * 2, &h, 2);
          break;
        }
        case DType::F64: {
          double d = buf[j];
          std::memcpy(out + (i + j) * 8, &d, 8);
          break;
        }
        default:
          fail("cannot convert to {}", dtypeName(to));
      }
    }
  }
}

}  // namespace doppler

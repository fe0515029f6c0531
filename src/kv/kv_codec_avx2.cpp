// F16C conversions for the KV codec (this file is compiled with -mavx2 -mfma -mf16c; callers check
// cpuHasF16c() first).
#include <immintrin.h>

#include "core/dtype.h"
#include "kv/kv_codec_internal.h"

namespace doppler::kv {

void f32ToF16ArrayF16c(const float* x, uint16_t* y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), h);
  }
  for (; i < n; i++) y[i] = f32ToF16(x[i]);
}

void f16ToF32ArrayF16c(const uint16_t* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  for (; i < n; i++) y[i] = f16ToF32(x[i]);
}

}  // namespace doppler::kv

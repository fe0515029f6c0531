// f16 <-> f32 array conversions for the KV codec: F16C (kv_codec_avx2.cpp) when the CPU has it, scalar
// otherwise. Both round to nearest even, so they give identical bits.
#pragma once
#include <cstddef>
#include <cstdint>

namespace doppler::kv {

void f32ToF16Array(const float* x, uint16_t* y, size_t n);
void f16ToF32Array(const uint16_t* x, float* y, size_t n);

// The F16C versions (compiled with -mf16c); only call when cpuHasF16c().
void f32ToF16ArrayF16c(const float* x, uint16_t* y, size_t n);
void f16ToF32ArrayF16c(const uint16_t* x, float* y, size_t n);
bool cpuHasF16c();

}  // namespace doppler::kv

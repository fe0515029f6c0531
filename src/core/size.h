// Byte sizes as users write them: plain bytes or K/M/G/T suffixes (powers of 1024), e.g. "64M", "1.5G".
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace doppler {

// Parses "123", "64K", "64M", "1.5G", "2T" (also "64MiB", "64MB": both mean powers of 1024).
// Throws Error naming `what` (e.g. "--vram") on anything else.
uint64_t parseSize(std::string_view s, std::string_view what = "size");
// 1536 -> "1.5 KiB", 64<<20 -> "64.0 MiB", 100 -> "100 B".
std::string formatSize(uint64_t bytes);

}  // namespace doppler

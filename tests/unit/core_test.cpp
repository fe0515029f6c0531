#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>

#include "core/dtype.h"
#include "core/error.h"
#include "core/sha256.h"
#include "core/size.h"
#include "core/thread_pool.h"

using namespace doppler;

TEST(Size, ParsesSuffixesAsPowersOf1024) {
  EXPECT_EQ(parseSize("123"), 123u);
  EXPECT_EQ(parseSize("64K"), 64u << 10);
  EXPECT_EQ(parseSize("64M"), 64u << 20);
  EXPECT_EQ(parseSize("64MiB"), 64u << 20);
  EXPECT_EQ(parseSize("1.5G"), 3ull << 29);
  EXPECT_EQ(parseSize("2T"), 2ull << 40);
  EXPECT_EQ(parseSize("8g"), 8ull << 30);
  EXPECT_THROW(parseSize("", "--vram"), Error);
  EXPECT_THROW(parseSize("abc", "--vram"), Error);
  EXPECT_THROW(parseSize("12X", "--vram"), Error);
  EXPECT_THROW(parseSize("-1", "--vram"), Error);
  try {
    parseSize("12Q", "--shard-size");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--shard-size"), std::string::npos);
  }
  EXPECT_EQ(formatSize(100), "100 B");
  EXPECT_EQ(formatSize(64u << 20), "64.0 MiB");
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (float f : {0.0f, 1.0f, -2.5f, 3.140625f, 0x1p-100f, 65536.0f}) EXPECT_EQ(bf16ToF32(f32ToBf16(f)), f) << f;
  // 1 + 2^-8 is halfway between two bf16 values: rounds to even (1.0)
  EXPECT_EQ(bf16ToF32(f32ToBf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_EQ(bf16ToF32(f32ToBf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);
  EXPECT_TRUE(std::isnan(bf16ToF32(f32ToBf16(NAN))));
}

TEST(DType, F16RoundTripAllValues) {
  // Every finite f16 value survives f16 -> f32 -> f16 exactly.
  for (uint32_t h = 0; h < 0x10000; h++) {
    uint16_t v = uint16_t(h);
    if ((v & 0x7c00) == 0x7c00) continue;  // inf / nan
    EXPECT_EQ(f32ToF16(f16ToF32(v)), v) << h;
  }
  EXPECT_EQ(f16ToF32(0x3c00), 1.0f);
  EXPECT_EQ(f16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32ToF16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(f32ToF16(65504.0f), 0x7bff);
}

TEST(DType, Names) {
  EXPECT_EQ(*parseSafetensorsDType("BF16"), DType::BF16);
  EXPECT_EQ(*parseDTypeName("i32"), DType::I32);
  EXPECT_FALSE(parseSafetensorsDType("Q4").has_value());
  EXPECT_EQ(dtypeSize(DType::F64), 8u);
}

TEST(Sha256, KnownVector) {
  EXPECT_EQ(sha256Hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ThreadPool, CoversRangeOnce) {
  ThreadPool pool(4);
  std::vector<int> hits(1000, 0);
  for (int rep = 0; rep < 50; rep++) {
    pool.parallelFor(1000, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) hits[i]++;
    });
  }
  for (int h : hits) EXPECT_EQ(h, 50);
}

// Loops right after each other (workers still spinning), after the workers fell asleep, uneven and tiny ranges,
// and two threads calling at once (they take turns): every index is run exactly once per loop.
TEST(ThreadPool, SpinningSleepingAndConcurrentCallers) {
  ThreadPool pool(4);
  std::vector<std::atomic<int>> hits(997);
  auto loop = [&](int64_t n) {
    pool.parallelFor(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i++) hits[size_t(i)]++;
    });
  };
  int64_t expected0 = 0;
  for (int rep = 0; rep < 2000; rep++, expected0++) loop(1 + rep % 997);  // index 0 is in every loop
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // well past spinMicros(): the workers sleep
  loop(997);
  expected0++;
  std::thread other([&] {
    for (int rep = 0; rep < 500; rep++) loop(997);
  });
  for (int rep = 0; rep < 500; rep++) loop(997);
  other.join();
  expected0 += 1000;
  EXPECT_EQ(hits[0].load(), expected0);
  for (int64_t i = 1; i < 997; i++) {  // loop(n) for n = 1 + rep % 997 covers i when n > i
    int64_t early = 0;
    for (int rep = 0; rep < 2000; rep++) early += (1 + rep % 997) > i;
    ASSERT_EQ(hits[size_t(i)].load(), early + 1001) << "index " << i;
  }
}

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/dtype.h"
#include "core/error.h"
#include "core/sha256.h"
#include "core/size.h"
#include "core/thread_pool.h"
#include "core/trace.h"

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

// --trace: spans from several threads and a named lane come back as Chrome trace events with their args; nothing is
// recorded while tracing is off, and a new trace starts empty.
TEST(Trace, SpansThreadsLanesAndArgs) {
  using doppler::trace::Scope;
  {
    Scope off("before start", "test");  // tracing is off: not recorded
  }
  doppler::trace::start();
  {
    Scope s("outer", "test");
    s.arg("layer", 3);
    std::thread t([] {
      doppler::trace::nameThread("worker \"1\"");
      Scope w("inner", "test");
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    });
    t.join();
    const double now = doppler::trace::nowMicros();
    doppler::trace::span("copy", "gpu", now - 50, now, {{"bytes", 4096}, {"nan", std::nan("")}}, "copy engine");
  }
  const auto j = nlohmann::json::parse(doppler::trace::stop());
  std::map<std::string, nlohmann::json> byName;  // span name -> event; thread id -> label
  std::map<int, std::string> threads;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "M") threads[e["tid"].get<int>()] = e["args"]["name"].get<std::string>();
    else byName[e["name"].get<std::string>()] = e;
  }
  ASSERT_EQ(byName.size(), 3u) << j.dump();
  EXPECT_EQ(byName.count("before start"), 0u);
  const auto &outer = byName["outer"], &inner = byName["inner"], &copy = byName["copy"];
  EXPECT_EQ(outer["args"]["layer"], 3);
  EXPECT_EQ(threads[outer["tid"].get<int>()], "main");
  EXPECT_EQ(threads[inner["tid"].get<int>()], "worker \"1\"");
  EXPECT_EQ(threads[copy["tid"].get<int>()], "copy engine");
  EXPECT_NE(inner["tid"], outer["tid"]);
  EXPECT_GE(inner["dur"].get<double>(), 2000.0);                          // microseconds
  EXPECT_GE(inner["ts"].get<double>(), outer["ts"].get<double>());        // inside the outer span
  EXPECT_LE(inner["ts"].get<double>() + inner["dur"].get<double>(),
            outer["ts"].get<double>() + outer["dur"].get<double>());
  EXPECT_NEAR(copy["dur"].get<double>(), 50.0, 1e-3);
  EXPECT_EQ(copy["args"]["bytes"], 4096);
  EXPECT_TRUE(copy["args"]["nan"].is_null());
  EXPECT_FALSE(doppler::trace::on());
  doppler::trace::start();  // a second trace starts empty
  const auto again = nlohmann::json::parse(doppler::trace::stop());
  for (const auto& e : again["traceEvents"]) EXPECT_EQ(e["ph"], "M") << e.dump();
}

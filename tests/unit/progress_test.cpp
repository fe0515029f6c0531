// ProgressBar: rendering, TTY redraw throttling, plain periodic lines, nothing printed on early failure.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "core/progress.h"

namespace doppler {
namespace {

std::string slurp(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

int count(const std::string& s, const std::string& needle) {
  int n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) n++;
  return n;
}

TEST(Progress, FormatEta) {
  EXPECT_EQ(ProgressBar::formatEta(0), "0:00");
  EXPECT_EQ(ProgressBar::formatEta(5), "0:05");
  EXPECT_EQ(ProgressBar::formatEta(754), "12:34");
  EXPECT_EQ(ProgressBar::formatEta(3723), "1:02:03");
  EXPECT_EQ(ProgressBar::formatEta(-1), "--:--");
}

TEST(Progress, FormatRate) {
  EXPECT_EQ(ProgressBar::formatRate(3u << 20, 2.0), "1.5 MiB/s");
  EXPECT_EQ(ProgressBar::formatRate(100, 0.0), "-");
}

TEST(Progress, RenderBarHalfWay) {
  // 1 MiB of 2 MiB after 1 s: 50%, 1 MiB/s, 1 s left; 15 of 30 cells filled then the arrow head.
  std::string s = ProgressBar::renderBar("convert", 1u << 20, 2u << 20, 1.0, 30);
  EXPECT_EQ(s, "convert [===============>              ]  50%  1.0 MiB / 2.0 MiB  1.0 MiB/s  ETA 0:01");
}

TEST(Progress, RenderBarEnds) {
  std::string empty = ProgressBar::renderBar("x", 0, 100, 0.0, 4);
  EXPECT_EQ(empty, "x [>   ]   0%  0 B / 100 B  -  ETA --:--");
  std::string full = ProgressBar::renderBar("x", 100, 100, 2.0, 4);
  EXPECT_EQ(full, "x [====] 100%  100 B / 100 B  50 B/s  ETA 0:00");
}

TEST(Progress, RenderLine) {
  EXPECT_EQ(ProgressBar::renderLine("verify", 3u << 20, 4u << 20, 3.0),
            "verify: 75% (3.0 MiB of 4.0 MiB), 1.0 MiB/s, ETA 0:01");
}

TEST(Progress, TtyRedrawsInPlaceAtMostEvery100ms) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  double now = 0;
  {
    ProgressBar bar("convert", 1000, f, true, [&] { return now; });
    bar.add(100);  // t = 0: too soon after the start, no draw
    now = 0.05;
    bar.add(100);  // still too soon
    now = 0.2;
    bar.add(100);  // draws (300 / 1000)
    now = 0.25;
    bar.add(100);  // too soon
    now = 0.4;
    bar.add(100);  // draws (500 / 1000)
    EXPECT_EQ(bar.done(), 500u);
    bar.finish();  // final draw + newline
    bar.finish();  // idempotent
  }
  std::string out = slurp(f);
  std::fclose(f);
  EXPECT_EQ(count(out, "\r"), 3) << out;
  EXPECT_EQ(count(out, "\n"), 1) << out;
  EXPECT_NE(out.find(" 30%"), std::string::npos) << out;
  EXPECT_NE(out.find(" 50%"), std::string::npos) << out;
  EXPECT_EQ(out.find(" 40%"), std::string::npos) << out;
  EXPECT_EQ(out.back(), '\n');
  EXPECT_NE(out.find("\x1b[K"), std::string::npos);  // clears the rest of the line
}

TEST(Progress, PlainPrintsPeriodicLinesWithoutCarriageReturns) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  double now = 0;
  ProgressBar bar("verify", 100, f, false, [&] { return now; }, 10.0);
  for (int i = 1; i <= 25; i++) {  // one add per second for 25 s
    now = i;
    bar.add(1);
  }
  bar.finish();
  std::string out = slurp(f);
  std::fclose(f);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  // Lines at t = 10 and t = 20, then the final one.
  EXPECT_EQ(count(out, "\n"), 3) << out;
  EXPECT_NE(out.find("verify: 10% (10 B of 100 B), 1 B/s, ETA 1:30\n"), std::string::npos) << out;
  EXPECT_NE(out.find("verify: 20% (20 B of 100 B)"), std::string::npos) << out;
  EXPECT_NE(out.find("verify: 25% (25 B of 100 B)"), std::string::npos) << out;
}

TEST(Progress, NothingPrintedWhenAbandonedEarly) {
  FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  double now = 0;
  {
    ProgressBar bar("convert", 100, f, false, [&] { return now; });
    now = 1;
    bar.add(50);
    // A failure here: the bar is destroyed without finish().
  }
  std::string out = slurp(f);
  std::fclose(f);
  EXPECT_EQ(out, "");
}

TEST(Progress, SetAndSetTotal) {
  FILE* f = std::tmpfile();
  double now = 0;
  ProgressBar bar("x", 0, f, false, [&] { return now; });
  bar.setTotal(200);
  bar.set(150);
  EXPECT_EQ(bar.done(), 150u);
  now = 2;
  bar.finish();
  std::string out = slurp(f);
  std::fclose(f);
  EXPECT_EQ(out, "x: 75% (150 B of 200 B), 75 B/s, ETA 0:01\n");
}

}  // namespace
}  // namespace doppler

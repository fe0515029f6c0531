#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fmt/format.h>

#include "core/size.h"

namespace doppler {

namespace {
double steadyNow() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}
int percent(uint64_t done, uint64_t total) {
  if (total == 0) return 100;
  return int(std::min<uint64_t>(100, uint64_t((long double)done * 100 / total)));
}
std::string etaFor(uint64_t done, uint64_t total, double elapsed) {
  if (done == 0 || elapsed <= 0 || done > total) return ProgressBar::formatEta(-1);
  double rate = double(done) / elapsed;
  return ProgressBar::formatEta(double(total - done) / rate);
}
}  // namespace

ProgressBar::ProgressBar(std::string label, uint64_t total, FILE* out, std::optional<bool> tty, Clock clock,
                         double interval)
    : label_(std::move(label)), total_(total), out_(out), clock_(clock ? std::move(clock) : Clock(steadyNow)),
      interval_(interval) {
  tty_ = tty ? *tty : (out_ && ::isatty(::fileno(out_)));
  start_ = lastDraw_ = clock_();
}

std::string ProgressBar::formatEta(double s) {
  if (!(s >= 0) || !std::isfinite(s) || s > 360000.0 * 99) return "--:--";
  auto t = uint64_t(std::llround(s));
  uint64_t h = t / 3600, m = (t / 60) % 60, sec = t % 60;
  if (h > 0) return fmt::format("{}:{:02}:{:02}", h, m, sec);
  return fmt::format("{}:{:02}", m, sec);
}

std::string ProgressBar::formatRate(uint64_t done, double elapsed) {
  if (elapsed <= 0) return "-";
  return formatSize(uint64_t(double(done) / elapsed)) + "/s";
}

std::string ProgressBar::renderBar(const std::string& label, uint64_t done, uint64_t total, double elapsed,
                                   int width) {
  int pct = percent(done, total);
  int filled = total == 0 ? width : int(std::min<long double>(width, (long double)done * width / total));
  std::string bar;
  bar.reserve(size_t(width));
  for (int i = 0; i < width; i++) bar += i < filled ? '=' : (i == filled ? '>' : ' ');
  return fmt::format("{} [{}] {:3}%  {} / {}  {}  ETA {}", label, bar, pct, formatSize(done), formatSize(total),
                     formatRate(done, elapsed), etaFor(done, total, elapsed));
}

std::string ProgressBar::renderLine(const std::string& label, uint64_t done, uint64_t total, double elapsed) {
  return fmt::format("{}: {}% ({} of {}), {}, ETA {}", label, percent(done, total), formatSize(done),
                     formatSize(total), formatRate(done, elapsed), etaFor(done, total, elapsed));
}

void ProgressBar::add(uint64_t bytes) {
  std::lock_guard<std::mutex> lk(mu_);
  done_ += bytes;
  maybeDrawLocked(false);
}

void ProgressBar::set(uint64_t done) {
  std::lock_guard<std::mutex> lk(mu_);
  done_ = done;
  maybeDrawLocked(false);
}

void ProgressBar::setTotal(uint64_t total) {
  std::lock_guard<std::mutex> lk(mu_);
  total_ = total;
}

uint64_t ProgressBar::done() const {
  std::lock_guard<std::mutex> lk(mu_);
  return done_;
}

void ProgressBar::finish() {
  std::lock_guard<std::mutex> lk(mu_);
  if (finished_) return;
  maybeDrawLocked(true);
  if (tty_ && out_) std::fputc('\n', out_);
  if (out_) std::fflush(out_);
  finished_ = true;
}

void ProgressBar::maybeDrawLocked(bool force) {
  if (!out_ || finished_) return;
  double now = clock_();
  double minGap = tty_ ? 0.1 : interval_;
  if (!force && now - lastDraw_ < minGap) return;
  lastDraw_ = now;
  double elapsed = now - start_;
  if (tty_) {
    std::fprintf(out_, "\r%s\x1b[K", renderBar(label_, done_, total_, elapsed).c_str());
  } else {
    std::fprintf(out_, "%s\n", renderLine(label_, done_, total_, elapsed).c_str());
  }
  std::fflush(out_);
  drawnOnce_ = true;
}

}  // namespace doppler

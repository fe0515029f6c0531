// A small progress bar for byte-sized work (convert, verify, downloads).
//   On a terminal:  "convert [=========>          ]  45%  1.2 GiB / 2.7 GiB  340.0 MiB/s  ETA 0:05", redrawn
//                   in place at most every 100 ms, finished with a newline.
//   Otherwise:      one plain line every `interval` seconds (default 10 s) and one at finish():
//                   "convert: 45% (1.2 GiB of 2.7 GiB), 340.0 MiB/s, ETA 0:05".
// Nothing is printed before the first redraw interval has passed, and nothing at destruction, so a command
// that fails early prints only its error. Thread-safe (add() may be called from several threads).
#pragma once
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

namespace doppler {

class ProgressBar {
 public:
  using Clock = std::function<double()>;  // monotonic seconds; tests inject a fake clock

  // tty: std::nullopt = ask isatty(out). clock: empty = std::chrono::steady_clock.
  ProgressBar(std::string label, uint64_t total, FILE* out = stderr, std::optional<bool> tty = std::nullopt,
              Clock clock = {}, double interval = 10.0);
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void add(uint64_t bytes);
  void set(uint64_t done);
  void setTotal(uint64_t total);
  void finish();  // prints the final state (once)
  uint64_t done() const;
  bool isTty() const { return tty_; }

  // Pure renderers (tested directly). elapsed in seconds; width = bar cells.
  static std::string renderBar(const std::string& label, uint64_t done, uint64_t total, double elapsed,
                               int width = 30);
  static std::string renderLine(const std::string& label, uint64_t done, uint64_t total, double elapsed);
  static std::string formatEta(double seconds);  // "0:05", "12:34", "1:02:03", "--:--" (unknown)
  static std::string formatRate(uint64_t done, double elapsed);  // "340.0 MiB/s", "-" when elapsed is 0

 private:
  void maybeDrawLocked(bool force);
  std::string label_;
  uint64_t total_, done_ = 0;
  FILE* out_;
  bool tty_;
  Clock clock_;
  double interval_;
  double start_, lastDraw_;
  bool drawnOnce_ = false, finished_ = false;
  mutable std::mutex mu_;
};

}  // namespace doppler

// A timeline of what each thread did (--trace FILE): Chrome trace-event JSON, opened by ui.perfetto.dev or
// chrome://tracing. Off by default; when off, a Scope costs one relaxed atomic load.
//
// Spans are recorded with the steady clock in microseconds since trace::start(), per thread (a small id in the
// order threads first record; nameThread() labels it). Names and categories must be string literals (they are
// kept as pointers); per-span details go in args (numbers).
#pragma once
#include <atomic>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace doppler::trace {

extern std::atomic<bool> gOn;
inline bool on() { return gOn.load(std::memory_order_relaxed); }

using Args = std::vector<std::pair<const char*, double>>;

// Microseconds since start() on the steady clock.
double nowMicros();
// One complete span [t0, t1] (microseconds from nowMicros()) on the calling thread, or on a named lane
// (lane != nullptr: work the thread waited for elsewhere, e.g. a copy engine's part of a copy).
void span(const char* name, const char* cat, double t0, double t1, Args args = {}, const char* lane = nullptr);
// Labels the calling thread in the trace (the first name given wins).
void nameThread(const char* name);

// Clears earlier events and starts recording.
void start();
// Stops recording and returns the trace as JSON text ({"traceEvents": [...], "displayTimeUnit": "ms"}).
std::string stop();

// Records the span from construction to destruction (when tracing was on at construction).
class Scope {
 public:
  Scope(const char* name, const char* cat) : name_(on() ? name : nullptr), cat_(cat) {
    if (name_) t0_ = nowMicros();
  }
  ~Scope() {
    if (name_) span(name_, cat_, t0_, nowMicros(), std::move(args_));
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
  void arg(const char* key, double v) {
    if (name_) args_.emplace_back(key, v);
  }

 private:
  const char* name_;
  const char* cat_;
  double t0_ = 0;
  Args args_;
};

}  // namespace doppler::trace

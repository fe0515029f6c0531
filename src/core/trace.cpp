#include "core/trace.h"

#include <chrono>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

namespace doppler::trace {

std::atomic<bool> gOn{false};

namespace {
struct Event {
  const char* name;
  const char* cat;
  double ts, dur;
  int tid;
  Args args;
};

struct Recorder {
  std::mutex mu;
  std::vector<Event> events;
  std::map<int, std::string> threadNames;     // tid -> label
  std::map<std::string, int> lanes;           // lane label -> tid
  int nextTid = 1;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  uint64_t epoch = 0;  // bumped by start(): thread ids of an earlier trace are stale
};

Recorder& rec() {
  static Recorder r;
  return r;
}

// The calling thread's id in the current trace (assigned under rec().mu).
int threadIdLocked(Recorder& r) {
  thread_local int tid = 0;
  thread_local uint64_t epoch = ~uint64_t(0);
  if (epoch != r.epoch) {
    tid = r.nextTid++;
    epoch = r.epoch;
  }
  return tid;
}

}  // namespace

double nowMicros() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - rec().t0).count();
}

void span(const char* name, const char* cat, double t0, double t1, Args args, const char* lane) {
  if (!on()) return;
  Recorder& r = rec();
  std::lock_guard<std::mutex> lk(r.mu);
  int tid;
  if (lane) {
    auto [it, added] = r.lanes.emplace(lane, 0);
    if (added) {
      it->second = r.nextTid++;
      r.threadNames[it->second] = lane;
    }
    tid = it->second;
  } else {
    tid = threadIdLocked(r);
  }
  r.events.push_back(Event{name, cat, t0, std::max(0.0, t1 - t0), tid, std::move(args)});
}

void nameThread(const char* name) {
  if (!on()) return;
  Recorder& r = rec();
  std::lock_guard<std::mutex> lk(r.mu);
  r.threadNames.emplace(threadIdLocked(r), name);
}

void start() {
  Recorder& r = rec();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    r.events.clear();
    r.threadNames.clear();
    r.lanes.clear();
    r.nextTid = 1;
    r.epoch++;
    r.t0 = std::chrono::steady_clock::now();
  }
  gOn.store(true);
  nameThread("main");
}

std::string stop() {
  gOn.store(false);
  Recorder& r = rec();
  std::lock_guard<std::mutex> lk(r.mu);
  nlohmann::json events = nlohmann::json::array();
  for (const auto& [tid, label] : r.threadNames)
    events.push_back({{"ph", "M"}, {"pid", 1}, {"tid", tid}, {"name", "thread_name"}, {"args", {{"name", label}}}});
  for (const Event& e : r.events) {
    nlohmann::json j = {{"ph", "X"}, {"pid", 1}, {"tid", e.tid}, {"name", e.name}, {"cat", e.cat}, {"ts", e.ts},
                        {"dur", e.dur}};
    if (!e.args.empty()) {
      nlohmann::json& args = j["args"];
      for (const auto& [key, value] : e.args) args[key] = value;  // NaN and infinities are written as null
    }
    events.push_back(std::move(j));
  }
  r.events.clear();
  return nlohmann::json{{"displayTimeUnit", "ms"}, {"traceEvents", std::move(events)}}.dump() + "\n";
}

}  // namespace doppler::trace

// Errors with context. Every user-facing failure is a doppler::Error whose message is one line naming
// the file / tensor / peer and what is wrong; the CLI prints it as "doppler: error: <message>" and exits 1.
// Never use assert() for input validation.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>
#include <utility>

namespace doppler {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// fail("{}: tensor {} has shape {}, expected {}", path, name, a, b);
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// Check a condition on input data; throws Error with the formatted message if it is false.
template <class... Args>
void check(bool ok, fmt::format_string<Args...> f, Args&&... args) {
  if (!ok) throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// Re-throw an Error with a prefix of context ("while reading X: ...").
[[noreturn]] inline void rethrowWithContext(const std::string& ctx, const std::exception& e) {
  throw Error(ctx + ": " + e.what());
}

}  // namespace doppler

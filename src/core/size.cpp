#include "core/size.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "core/error.h"

namespace doppler {

uint64_t parseSize(std::string_view s, std::string_view what) {
  std::string str(s);
  auto bad = [&]() -> uint64_t {
    fail("{}: invalid size '{}' (expected bytes or a number with K, M, G or T, e.g. 64M)", what, str);
  };
  if (str.empty() || !(std::isdigit(static_cast<unsigned char>(str[0])) || str[0] == '.')) return bad();
  char* end = nullptr;
  double v = std::strtod(str.c_str(), &end);
  std::string suffix(end);
  for (auto& c : suffix) c = char(std::toupper(static_cast<unsigned char>(c)));
  if (suffix.size() > 1 && (suffix.ends_with("IB") || suffix.ends_with("B")))
    suffix = suffix.substr(0, suffix.ends_with("IB") ? suffix.size() - 2 : suffix.size() - 1);
  double mult = 1;
  if (suffix.empty() || suffix == "B") mult = 1;
  else if (suffix == "K") mult = 1024.0;
  else if (suffix == "M") mult = 1024.0 * 1024;
  else if (suffix == "G") mult = 1024.0 * 1024 * 1024;
  else if (suffix == "T") mult = 1024.0 * 1024 * 1024 * 1024;
  else return bad();
  double bytes = v * mult;
  if (!std::isfinite(bytes) || bytes < 0 || bytes > 1.8e19) return bad();
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string formatSize(uint64_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    u++;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

}  // namespace doppler

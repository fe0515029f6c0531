#include "core/json_util.h"

#include <fstream>
#include <sstream>

namespace doppler {

Json parseJson(std::string_view text, const std::string& what) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    fail("{}: invalid JSON: {}", what, e.what());
  }
}

Json readJsonFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return parseJson(ss.str(), path);
}

}  // namespace doppler

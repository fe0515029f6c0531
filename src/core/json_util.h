// Typed access to JSON objects with errors that carry context ("<file>: tensor X: 'offset' must be ...").
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace doppler {

using Json = nlohmann::json;

// Parses text as JSON; on failure throws Error "<what>: invalid JSON: <detail>".
Json parseJson(std::string_view text, const std::string& what);
Json readJsonFile(const std::string& path);

}  // namespace doppler

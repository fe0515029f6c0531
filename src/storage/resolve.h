// MODEL arguments served by the store (engine/model_source.cpp asks here first):
//   http(s)://.../manifest.json (or the directory URL)  pulled into the cache the first time; later runs use
//                                                       the cache alone (no request to the origin) and fetch
//                                                       only files that are missing or fail verification
//   ID or ID@REV                                        a model pulled before (`doppler cache ls`)
#pragma once
#include <string>

namespace doppler {

// True for a URL, or for a non-empty argument that is not an existing path (then a cache id).
bool isStoreModelArg(const std::string& arg);

// Resolves to the model's RDRR directory inside <cacheRoot>/store, pulling or healing what is missing. The
// model stays leased (gc will not evict it) until the process exits. quiet: no progress on stderr.
// Error if an id is unknown ("<arg>: no such model directory, and no model '<arg>' in the cache (...)").
std::string resolveStoreModel(const std::string& arg, const std::string& cacheRoot, bool quiet);

}  // namespace doppler

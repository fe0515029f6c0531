#include "storage/source.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "core/fs_util.h"
#include "storage/http_source.h"

namespace doppler {

namespace {
double envSeconds(const char* name, double dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  double d = std::strtod(v, &end);
  check(end && *end == 0 && d >= 0 && d < 1e7, "{}: '{}' is not a number of seconds", name, v);
  return d;
}

bool endsWithJson(const std::string& s) { return s.size() > 5 && s.compare(s.size() - 5, 5, ".json") == 0; }

// The URL without query/fragment, then its last path component.
std::string lastUrlComponent(const std::string& url) {
  std::string u = url.substr(0, url.find_first_of("?#"));
  auto scheme = u.find("://");
  std::string path = scheme == std::string::npos ? u : u.substr(scheme + 3);
  auto slash = path.find('/');
  if (slash == std::string::npos) return "";
  path = path.substr(slash);
  return path.substr(path.rfind('/') + 1);
}
}  // namespace

FetchOptions FetchOptions::fromEnvironment() {
  FetchOptions o;
  o.connectTimeout = envSeconds("DOPPLER_HTTP_CONNECT_TIMEOUT", o.connectTimeout);
  o.stallTimeout = envSeconds("DOPPLER_HTTP_TIMEOUT", o.stallTimeout);
  o.retryDelay = envSeconds("DOPPLER_HTTP_RETRY_DELAY", o.retryDelay);
  if (const char* v = std::getenv("DOPPLER_HTTP_RETRIES"); v && *v) {
    char* end = nullptr;
    long n = std::strtol(v, &end, 10);
    check(end && *end == 0 && n >= 0 && n <= 1000, "DOPPLER_HTTP_RETRIES: '{}' is not a count (0..1000)", v);
    o.retries = int(n);
  }
  return o;
}

bool isUrl(const std::string& s) {
  auto starts = [&](const char* p) {
    size_t n = std::strlen(p);
    if (s.size() < n) return false;
    for (size_t i = 0; i < n; i++)
      if (std::tolower((unsigned char)s[i]) != p[i]) return false;
    return true;
  };
  return starts("http://") || starts("https://");
}

std::string manifestNameOf(const std::string& spec) {
  if (isUrl(spec)) {
    std::string last = lastUrlComponent(spec);
    return endsWithJson(last) ? last : "manifest.json";
  }
  if (isRegularFile(spec) && endsWithJson(spec)) return baseName(spec);
  return "manifest.json";
}

std::unique_ptr<Source> openSource(const std::string& spec, const FetchOptions& opts) {
  if (isUrl(spec)) {
    std::string url = spec;
    if (!endsWithJson(lastUrlComponent(url))) {
      std::string q;
      if (auto p = url.find_first_of("?#"); p != std::string::npos) {
        q = url.substr(p);
        url = url.substr(0, p);
      }
      if (url.back() != '/') url += '/';
      url += "manifest.json" + q;
    }
    return std::make_unique<HttpSource>(url, opts);
  }
  if (isRegularFile(spec)) {
    check(endsWithJson(spec), "{}: not a model source (expected an RDRR directory, its manifest.json, or an "
          "http(s) URL)", spec);
    return std::make_unique<LocalDirSource>(parentDir(spec), baseName(spec));
  }
  check(isDirectory(spec), "{}: no such model directory (a source is an RDRR directory, its manifest.json, or an "
        "http(s) URL)", spec);
  check(isRegularFile(joinPath(spec, "manifest.json")),
        "{}: not an RDRR model directory (no manifest.json); convert it first with `doppler convert`", spec);
  return std::make_unique<LocalDirSource>(spec);
}

// ---- LocalDirSource ----

LocalDirSource::LocalDirSource(const std::string& dir, std::string manifestName)
    : dir_(std::filesystem::absolute(dir).lexically_normal().string()), manifestName_(std::move(manifestName)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
}

std::string LocalDirSource::spec() const {
  return manifestName_ == "manifest.json" ? dir_ : joinPath(dir_, manifestName_);
}

std::string LocalDirSource::locate(const std::string& name) const { return joinPath(dir_, name); }

std::string LocalDirSource::fetchFile(const std::string& name, uint64_t maxBytes) {
  requests_++;
  std::string p = locate(name);
  check(isRegularFile(p), "{}: no such file", p);
  uint64_t n = fileSize(p);
  check(n <= maxBytes, "{}: {} bytes, more than the {} allowed", p, n, maxBytes);
  return readFile(p);
}

void LocalDirSource::fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) {
  requests_++;
  std::string p = locate(name);
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", p, std::strerror(errno));
  std::vector<uint8_t> buf(size_t(std::min<uint64_t>(size, 4u << 20)));
  uint64_t done = 0;
  try {
    while (done < size) {
      size_t want = size_t(std::min<uint64_t>(size - done, buf.size()));
      ssize_t n = ::pread(fd, buf.data(), want, off_t(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        fail("{}: read error at offset {}: {}", p, offset + done, std::strerror(errno));
      }
      if (n == 0) fail("{}: ends at byte {}, {} bytes were expected", p, offset + done, offset + size);
      sink(buf.data(), size_t(n));
      done += uint64_t(n);
    }
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

}  // namespace doppler

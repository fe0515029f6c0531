// An http(s) origin through libcurl: GET with a Range header per byte range, connection reuse, redirects,
// a connect timeout and a stall timeout (no byte for FetchOptions::stallTimeout seconds), retries with
// exponential backoff that resume after the last byte received. Servers that ignore Range (answer 200 with
// the whole file, as `python3 -m http.server` does) are handled by skipping the bytes before the range.
// Permanent answers (4xx other than 408/429) fail at once with the status; 5xx, 408, 429, refused, dropped
// or stalled connections and short bodies are retried.
#pragma once
#include <memory>
#include <mutex>
#include <string>

#include "storage/source.h"

namespace doppler {

class HttpSource final : public Source {
 public:
  // manifestUrl: the URL of the model's manifest; every other file is looked up beside it.
  HttpSource(const std::string& manifestUrl, const FetchOptions& opts);
  ~HttpSource() override;
  std::string spec() const override { return manifestUrl_; }
  std::string locate(const std::string& name) const override { return base_ + name; }
  std::string fetchFile(const std::string& name, uint64_t maxBytes) override;
  void fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) override;
  uint64_t requests() const override { return requests_; }
  bool remote() const override { return true; }

  struct Attempt;  // one GET's state (used by libcurl's callbacks)

 private:
  void perform(const std::string& url, Attempt& a);  // one GET
  std::string manifestUrl_, base_;
  FetchOptions opts_;
  std::mutex mu_;       // one transfer at a time on the shared handle
  void* curl_ = nullptr;   // CURL*, reused (keeps the connection alive between requests)
  void* multi_ = nullptr;  // CURLM* driving it
  uint64_t requests_ = 0;
};

}  // namespace doppler

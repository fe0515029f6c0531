// Where the store gets a model's files from. Every source serves the files of one RDRR model directory by
// name (manifest.json, shard-00000.bin, tokenizer.json, ...) and byte ranges of them:
//   LocalDirSource  a directory on this machine (an RDRR dir, or its manifest.json)
//   HttpSource      an http(s) origin (storage/http_source.h): any static file server; the URL names the
//                   manifest ("http://host/models/m.rdrr/manifest.json") or its directory ("http://host/m.rdrr/")
//   SwarmSource     peers of a BitTorrent swarm, with the origin as fallback (storage/swarm.h)
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace doppler {

// Network behaviour of remote sources. Defaults suit real origins; tests shorten them.
struct FetchOptions {
  double connectTimeout = 15.0;  // seconds to establish a connection
  double stallTimeout = 30.0;    // seconds without receiving a byte before an attempt is abandoned
  int retries = 5;               // further attempts after a transient failure (connection refused or dropped,
                                 // stall, 5xx, 429, short body); each resumes after the last byte received
  double retryDelay = 0.5;       // seconds before the first retry, doubled each time, at most 10 s

  // The defaults overridden by the environment: DOPPLER_HTTP_CONNECT_TIMEOUT, DOPPLER_HTTP_TIMEOUT (the stall
  // timeout), DOPPLER_HTTP_RETRIES, DOPPLER_HTTP_RETRY_DELAY (seconds; Error naming the variable if malformed).
  static FetchOptions fromEnvironment();
};

// Receives a file's bytes in order, each byte once. Throwing aborts the transfer (the exception propagates).
using ByteSink = std::function<void(const uint8_t* data, size_t n)>;

class Source {
 public:
  virtual ~Source() = default;
  // The spec as recorded in the cache: an absolute URL of the manifest, or the absolute model directory.
  virtual std::string spec() const = 0;
  // Where one file of the model lives (a URL or a path), for messages.
  virtual std::string locate(const std::string& name) const = 0;
  // A whole small file (the manifest). Error naming locate(name) if it is missing or larger than maxBytes.
  virtual std::string fetchFile(const std::string& name, uint64_t maxBytes) = 0;
  // Bytes [offset, offset + size) of a file, delivered in order to `sink`. Transient failures are retried
  // and resumed; the call returns only when all `size` bytes were delivered, else throws Error naming
  // locate(name) and what went wrong (after the retries).
  virtual void fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) = 0;
  // The files the caller is about to fetch (in order), so that a source able to fetch in parallel (the swarm)
  // can start on all of them at once. Optional; the default does nothing.
  virtual void plan(const std::vector<std::string>& names) {}
  // Requests made and body bytes received so far (for tests and the pull summary).
  virtual uint64_t requests() const = 0;
  virtual bool remote() const = 0;
};

// http:// or https:// (case-insensitive scheme).
bool isUrl(const std::string& s);

// A source for SPEC: a URL (HttpSource) or a local path (an RDRR directory or its manifest.json). The
// manifest's file name comes from the spec ("manifest.json" when the spec names a directory).
std::unique_ptr<Source> openSource(const std::string& spec, const FetchOptions& opts = FetchOptions::fromEnvironment());
// The manifest's file name inside the source's directory ("manifest.json" unless the spec names another
// .json file).
std::string manifestNameOf(const std::string& spec);

class LocalDirSource final : public Source {
 public:
  // dir: an RDRR directory (made absolute).
  explicit LocalDirSource(const std::string& dir, std::string manifestName = "manifest.json");
  std::string spec() const override;
  std::string locate(const std::string& name) const override;
  std::string fetchFile(const std::string& name, uint64_t maxBytes) override;
  void fetchRange(const std::string& name, uint64_t offset, uint64_t size, const ByteSink& sink) override;
  uint64_t requests() const override { return requests_; }
  bool remote() const override { return false; }

 private:
  std::string dir_, manifestName_;
  uint64_t requests_ = 0;
};

}  // namespace doppler

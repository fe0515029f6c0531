// SHA-256 (OpenSSL EVP; uses the CPU's SHA extensions where present).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace doppler {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hexDigest();  // finishes; lowercase hex, 64 chars

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string sha256Hex(const void* data, size_t n);
// Hashes a whole file (streamed). Throws Error naming the path if it cannot be read.
std::string sha256File(const std::string& path);

}  // namespace doppler

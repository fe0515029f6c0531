// A test HTTP origin on cpp-httplib: serves the files of a directory at http://127.0.0.1:<ephemeral>/<name>,
// answers Range requests (206), counts requests and body bytes per file, and injects faults per file:
// an error status, a truncated file, wrong bytes, a stall, a connection dropped mid-body, or a server that
// ignores Range (200 with the whole file, as `python3 -m http.server` does). Started by the constructor,
// stopped by stop() or the destructor; never reachable from outside this machine.
#pragma once
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "convert/convert.h"
#include "core/sha256.h"
#include "test_util.h"

namespace doppler::test {

// The mixtral fixture converted to RDRR in `out` (small shards, so a model has several), no fsync (tests).
inline ConvertResult convertMixtralFixture(const std::string& out, uint64_t shardSize = 256 << 10) {
  ConvertOptions o;
  o.shardSize = shardSize;
  o.sync = false;
  o.modelId = "mixtral-tiny";
  return convertHfToRdrr(dataPath("hf/mixtral"), out, o);
}

// Every blob under <store>/blobs hashes to its name (no corrupt shard is ever visible).
inline void expectNoCorruptBlob(const std::string& storeDir) {
  namespace fs = std::filesystem;
  if (!fs::exists(storeDir + "/blobs")) return;
  for (const auto& e : fs::recursive_directory_iterator(storeDir + "/blobs")) {
    if (!e.is_regular_file() || e.path().filename().string().size() != 64) continue;
    EXPECT_EQ(sha256File(e.path().string()), e.path().filename().string()) << e.path();
  }
}

// Flips one bit of a (read-only) file in place.
inline void flipByte(const std::string& path, uint64_t at) {
  ::chmod(path.c_str(), 0644);
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << path;
  f.seekg(std::streamoff(at));
  char c = 0;
  f.get(c);
  f.seekp(std::streamoff(at));
  f.put(char(c ^ 0x01));
}

struct Fault {
  enum Kind { None, Status, Truncate, WrongBytes, Stall, Drop, IgnoreRange };
  Kind kind = None;
  int status = 500;   // Status: the HTTP status answered
  uint64_t at = 0;    // Truncate: the file is served cut to `at` bytes; WrongBytes: the byte at file offset `at`
                      // is flipped; Stall / Drop: after `at` body bytes of the response
  int times = -1;     // requests it applies to (-1: every request)
};

class TestOrigin {
 public:
  explicit TestOrigin(std::string dir) : dir_(std::move(dir)) {
    svr_.set_keep_alive_timeout(1);
    svr_.set_read_timeout(2);
    svr_.set_write_timeout(5);
    svr_.Get(R"(/(.+))", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res); });
    port_ = svr_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("test origin: cannot bind 127.0.0.1");
    thread_ = std::thread([this] { svr_.listen_after_bind(); });
    for (int i = 0; i < 500 && !svr_.is_running(); i++) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ~TestOrigin() { stop(); }
  TestOrigin(const TestOrigin&) = delete;
  TestOrigin& operator=(const TestOrigin&) = delete;

  int port() const { return port_; }
  std::string url(const std::string& path = "") const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/" + path;
  }
  void stop() {
    stopping_ = true;
    if (thread_.joinable()) {
      svr_.stop();
      thread_.join();
    }
  }

  void setFault(const std::string& name, Fault f) {
    std::lock_guard<std::mutex> lk(mu_);
    faults_[name] = f;
  }
  void clearFaults() {
    std::lock_guard<std::mutex> lk(mu_);
    faults_.clear();
  }
  // Body bytes per second for every response (0 = unlimited).
  void setRate(uint64_t bytesPerSecond) { rate_ = bytesPerSecond; }
  // Behave like `python3 -m http.server`: ignore Range, answer 200 with the whole file (faults still apply).
  void setIgnoreRange(bool on) { ignoreRange_ = on; }

  uint64_t requests() const {
    std::lock_guard<std::mutex> lk(mu_);
    uint64_t n = 0;
    for (const auto& [_, c] : counts_) n += c.requests;
    return n;
  }
  uint64_t requests(const std::string& name) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = counts_.find(name);
    return it == counts_.end() ? 0 : it->second.requests;
  }
  uint64_t bytesSent() const {
    std::lock_guard<std::mutex> lk(mu_);
    uint64_t n = 0;
    for (const auto& [_, c] : counts_) n += c.bytes;
    return n;
  }
  uint64_t bytesSent(const std::string& name) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = counts_.find(name);
    return it == counts_.end() ? 0 : it->second.bytes;
  }
  // The Range header of each request for `name` ("" when none), in arrival order.
  std::vector<std::string> ranges(const std::string& name) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = counts_.find(name);
    return it == counts_.end() ? std::vector<std::string>{} : it->second.ranges;
  }
  void resetCounters() {
    std::lock_guard<std::mutex> lk(mu_);
    counts_.clear();
  }

 private:
  struct Count {
    uint64_t requests = 0, bytes = 0;
    std::vector<std::string> ranges;
  };

  void handle(const httplib::Request& req, httplib::Response& res) {
    const std::string name = req.matches[1];
    Fault f;
    {
      std::lock_guard<std::mutex> lk(mu_);
      Count& c = counts_[name];
      c.requests++;
      c.ranges.push_back(req.has_header("Range") ? req.get_header_value("Range") : "");
      auto it = faults_.find(name);
      if (it != faults_.end() && it->second.times != 0) {
        f = it->second;
        if (it->second.times > 0) it->second.times--;
      }
    }
    if (name.find("..") != std::string::npos) {
      res.status = 400;
      return;
    }
    auto data = std::make_shared<std::string>();
    {
      std::ifstream in(dir_ + "/" + name, std::ios::binary);
      if (!in) {
        res.status = 404;
        res.set_content("no such file", "text/plain");
        return;
      }
      std::ostringstream ss;
      ss << in.rdbuf();
      *data = ss.str();
    }
    if (f.kind == Fault::Status) {
      res.status = f.status;
      res.set_content("injected fault", "text/plain");
      return;
    }
    if (f.kind == Fault::Truncate) {
      // A short file: httplib slices the Range out of it (clamped) and sends an honest Content-Length.
      data->resize(std::min<size_t>(data->size(), f.at));
      uint64_t off = 0, len = data->size();
      if (req.ranges.size() == 1) {
        off = req.ranges[0].first < 0 ? 0 : uint64_t(req.ranges[0].first);
        len = off >= data->size() ? 0 : data->size() - off;
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        counts_[name].bytes += len;
      }
      res.set_content(*data, "application/octet-stream");
      return;
    }
    if (f.kind == Fault::WrongBytes && f.at < data->size()) (*data)[f.at] = char((*data)[f.at] ^ 0x5a);
    auto provider = [this, data, f, name](size_t offset, size_t length, httplib::DataSink& sink) -> bool {
      const size_t chunk = 16 << 10;
      size_t sent = 0;
      auto t0 = std::chrono::steady_clock::now();
      while (sent < length) {
        if (stopping_) return false;
        if ((f.kind == Fault::Drop || f.kind == Fault::Stall) && sent >= f.at) {
          if (f.kind == Fault::Drop) return false;  // closes the connection mid-body
          while (!stopping_ && sink.is_writable()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
          return false;
        }
        size_t n = std::min(chunk, length - sent);
        if (f.kind == Fault::Drop || f.kind == Fault::Stall) n = std::min<size_t>(n, f.at - sent);
        if (offset + sent + n > data->size()) return false;
        {  // counted before the write: the client may have the bytes (and the test read the counter) before
           // this thread runs again
          std::lock_guard<std::mutex> lk(mu_);
          counts_[name].bytes += n;
        }
        if (!sink.write(data->data() + offset + sent, n)) {
          std::lock_guard<std::mutex> lk(mu_);
          counts_[name].bytes -= n;
          return false;
        }
        sent += n;
        if (uint64_t r = rate_.load()) {
          auto due = t0 + std::chrono::duration<double>(double(sent) / double(r));
          while (!stopping_ && std::chrono::steady_clock::now() < due)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      }
      return true;
    };
    if (f.kind == Fault::IgnoreRange || ignoreRange_) {
      // 200 with the whole file whatever the Range header says (chunked, so httplib does not slice it).
      res.status = 200;
      res.set_chunked_content_provider("application/octet-stream",
                                       [provider, data](size_t offset, httplib::DataSink& sink) {
                                         bool ok = provider(offset, data->size() - offset, sink);
                                         if (ok) sink.done();
                                         return ok;
                                       });
      return;
    }
    res.set_content_provider(data->size(), "application/octet-stream", provider);
  }

  std::string dir_;
  httplib::Server svr_;
  std::thread thread_;
  int port_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> rate_{0};
  std::atomic<bool> ignoreRange_{false};
  mutable std::mutex mu_;
  std::map<std::string, Fault> faults_;
  std::map<std::string, Count> counts_;
};

}  // namespace doppler::test

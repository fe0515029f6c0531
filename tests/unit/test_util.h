// Helpers shared by the test suites: temp dirs, running the doppler CLI, fixture paths.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/spawn.h"

namespace doppler::test {

// Starts `doppler args...` (core/spawn.h): the pid, or -1 when it could not be started.
inline pid_t spawnDoppler(const std::vector<std::string>& args, const std::string& out = "/dev/null",
                          const std::string& err = "/dev/null") {
  return spawnProcess(DOPPLER_BIN, args, out, err);
}

// Waits for a child: its exit code, or 128 + the signal that ended it.
inline int waitExit(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

inline std::string dataPath(const std::string& rel) { return std::string(DOPPLER_TEST_DATA) + "/" + rel; }

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = (std::filesystem::temp_directory_path() / ("doppler-test-" + std::to_string(rd()) + std::to_string(rd())))
                .string();
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct CliResult {
  int exitCode = -1;
  std::string out, err;
};

inline std::string shellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `doppler <args>` (args already shell-quoted where needed) and captures stdout, stderr and the exit code.
inline CliResult runCli(const std::string& args) {
  TempDir tmp;
  std::string cmd = std::string(DOPPLER_BIN) + " " + args + " >" + tmp / "out" + " 2>" + tmp / "err" + " </dev/null";
  int st = std::system(cmd.c_str());
  CliResult r;
  r.exitCode = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  auto slurp = [](const std::string& p) {
    std::string s;
    if (FILE* f = std::fopen(p.c_str(), "rb")) {
      char buf[4096];
      size_t n;
      while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
      std::fclose(f);
    }
    return s;
  };
  r.out = slurp(tmp / "out");
  r.err = slurp(tmp / "err");
  return r;
}

// Number of lines in s (a final line without '\n' counts).
inline int lineCount(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n + (!s.empty() && s.back() != '\n');
}

}  // namespace doppler::test

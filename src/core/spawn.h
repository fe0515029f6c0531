// Starting a child process with its standard streams redirected (tests and benchmarks run `doppler` and other
// programs this way).
#pragma once
#include <fcntl.h>
#include <spawn.h>
#include <sys/types.h>

#include <string>
#include <vector>

extern char** environ;

namespace doppler {

// Starts `bin args...` with stdin from /dev/null and stdout / stderr written to the files `out` / `err` (created
// or truncated; "/dev/null" discards). Returns the pid, or -1 when it could not be started.
inline pid_t spawnProcess(const std::string& bin, const std::vector<std::string>& args,
                          const std::string& out = "/dev/null", const std::string& err = "/dev/null") {
  std::vector<std::string> all = {bin};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

}  // namespace doppler

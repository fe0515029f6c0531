// Advisory file locks (flock) for sharing one cache between processes. A lock belongs to one open file
// description, so two FileLocks on the same path conflict even inside one process (threads behave like
// processes). The kernel drops a lock when its holder exits, SIGKILL included, so a crash never leaves a
// cache locked. Lock files are created on demand and never deleted (deleting a lock file races with a
// process that has it open).
#pragma once
#include <optional>
#include <string>

namespace doppler {

class FileLock {
 public:
  enum class Mode { Shared, Exclusive };

  FileLock() = default;
  ~FileLock();
  FileLock(FileLock&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  FileLock& operator=(FileLock&& o) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Opens (creating) `path` and waits for the lock. Error naming the path if it cannot be opened.
  static FileLock acquire(const std::string& path, Mode mode);
  // Same without waiting: nullopt when another holder has it in a conflicting mode.
  static std::optional<FileLock> tryAcquire(const std::string& path, Mode mode);

  bool held() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  void release();

 private:
  static std::optional<FileLock> lock(const std::string& path, Mode mode, bool wait);
  int fd_ = -1;
  std::string path_;
};

}  // namespace doppler

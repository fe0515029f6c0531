#include "storage/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace doppler {

FileLock::~FileLock() { release(); }

FileLock& FileLock::operator=(FileLock&& o) noexcept {
  if (this != &o) {
    release();
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

void FileLock::release() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor of the open file drops the flock
  fd_ = -1;
}

std::optional<FileLock> FileLock::lock(const std::string& path, Mode mode, bool wait) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot open the lock file: {}", path, std::strerror(errno));
  int op = (mode == Mode::Shared ? LOCK_SH : LOCK_EX) | (wait ? 0 : LOCK_NB);
  for (;;) {
    if (::flock(fd, op) == 0) break;
    int e = errno;
    if (e == EINTR) continue;
    ::close(fd);
    if (e == EWOULDBLOCK && !wait) return std::nullopt;
    fail("{}: cannot lock: {}", path, std::strerror(e));
  }
  FileLock l;
  l.fd_ = fd;
  l.path_ = path;
  return l;
}

FileLock FileLock::acquire(const std::string& path, Mode mode) { return std::move(*lock(path, mode, true)); }

std::optional<FileLock> FileLock::tryAcquire(const std::string& path, Mode mode) { return lock(path, mode, false); }

}  // namespace doppler

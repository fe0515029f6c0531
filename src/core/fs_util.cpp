#include "core/fs_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/error.h"
#include "core/sha256.h"

namespace doppler {

namespace {
std::string errnoText(int e) { return std::strerror(e); }
}  // namespace

std::string readFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, errnoText(errno));
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      fail("{}: read error: {}", path, errnoText(e));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

void writeFile(const std::string& path, std::string_view data, bool sync) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create: {}", path, errnoText(errno));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      fail("{}: write error: {}", path, errnoText(e));
    }
    done += size_t(n);
  }
  if (sync && ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    fail("{}: fsync failed: {}", path, errnoText(e));
  }
  if (::close(fd) != 0) fail("{}: close failed: {}", path, errnoText(errno));
}

bool pathExists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

bool isDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool isRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

uint64_t fileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot stat: {}", path, errnoText(errno));
  return uint64_t(st.st_size);
}

std::string joinPath(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string parentDir(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  auto pos = p.rfind('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return p.substr(0, pos);
}

std::string baseName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  auto pos = p.rfind('/');
  return pos == std::string::npos ? p : p.substr(pos + 1);
}

void fsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open for fsync: {}", path, errnoText(errno));
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    // Some filesystems refuse fsync on directories; that is not a data-loss error.
    if (e == EINVAL || e == EROFS) return;
    fail("{}: fsync failed: {}", path, errnoText(e));
  }
  ::close(fd);
}

void removeAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);  // does not follow symlinks
}

uint64_t copyFile(const std::string& from, const std::string& to, Sha256* hash, bool sync) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) fail("{}: cannot open: {}", from, errnoText(errno));
  FileWriter out;
  try {
    out = FileWriter(to);
  } catch (...) {
    ::close(in);
    throw;
  }
  constexpr size_t kBuf = size_t(4) << 20;
  std::unique_ptr<char[]> buf(new char[kBuf]);  // not zero-filled: only the pages a read touches get faulted in
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(in, buf.get(), kBuf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(in);
      fail("{}: read error: {}", from, errnoText(e));
    }
    if (n == 0) break;
    try {
      if (hash) hash->update(buf.get(), size_t(n));
      out.write(buf.get(), size_t(n));
    } catch (...) {
      ::close(in);
      throw;
    }
    total += uint64_t(n);
  }
  ::close(in);
  out.close(sync);
  return total;
}

uint64_t forEachChunk(const std::string& path, const std::function<void(const uint8_t*, size_t)>& fn) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, errnoText(errno));
  constexpr size_t kBuf = size_t(4) << 20;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kBuf]);
  uint64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.get(), kBuf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      fail("{}: read error: {}", path, errnoText(e));
    }
    if (n == 0) break;
    try {
      fn(buf.get(), size_t(n));
    } catch (...) {
      ::close(fd);
      throw;
    }
    total += uint64_t(n);
  }
  ::close(fd);
  return total;
}

// ---- FileWriter ----

FileWriter::FileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", path, errnoText(errno));
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

FileWriter& FileWriter::operator=(FileWriter&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    written_ = o.written_;
    o.fd_ = -1;
  }
  return *this;
}

void FileWriter::write(const void* data, size_t n) {
  if (fd_ < 0) fail("{}: write after close", path_);
  auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write error: {}", path_, errnoText(errno));
    }
    if (w == 0) fail("{}: write returned 0 (disk full?)", path_);
    p += w;
    n -= size_t(w);
    written_ += uint64_t(w);
  }
}

void FileWriter::close(bool sync) {
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  if (sync && ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    fail("{}: fsync failed: {}", path_, errnoText(e));
  }
  if (::close(fd) != 0) fail("{}: close failed: {}", path_, errnoText(errno));
}

// ---- AtomicDir ----

AtomicDir::AtomicDir(const std::string& dest, bool force, bool sync) : force_(force), sync_(sync) {
  dest_ = dest;
  while (dest_.size() > 1 && dest_.back() == '/') dest_.pop_back();
  check(!dest_.empty(), "output path is empty");
  if (pathExists(dest_) && !force)
    fail("{}: already exists (use --force to replace it)", dest_);
  std::string parent = parentDir(dest_);
  check(isDirectory(parent), "{}: cannot create output: parent directory {} does not exist or is not a directory",
        dest_, parent);
  std::string tmpl = dest_ + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) fail("{}: cannot create output directory: {}", dest_, errnoText(errno));
  tmp_ = buf.data();
}

AtomicDir::~AtomicDir() {
  if (!committed_ && !tmp_.empty()) removeAll(tmp_);
}

void AtomicDir::commit() {
  check(!committed_, "{}: already committed", dest_);
  if (sync_) fsyncPath(tmp_);
  std::string parent = parentDir(dest_);
  std::string old;
  if (pathExists(dest_)) {
    if (!force_) fail("{}: already exists (use --force to replace it)", dest_);
    old = dest_ + ".old-" + baseName(tmp_).substr(baseName(tmp_).size() - 6);
    if (::rename(dest_.c_str(), old.c_str()) != 0) fail("{}: cannot move the existing output aside: {}", dest_, errnoText(errno));
  }
  if (::rename(tmp_.c_str(), dest_.c_str()) != 0) {
    int e = errno;
    if (!old.empty()) (void)::rename(old.c_str(), dest_.c_str());
    fail("{}: cannot rename {} into place: {}", dest_, tmp_, errnoText(e));
  }
  committed_ = true;
  if (sync_) fsyncPath(parent);
  if (!old.empty()) removeAll(old);
}

}  // namespace doppler

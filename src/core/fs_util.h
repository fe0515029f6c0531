// Small filesystem helpers with errors that name the path: whole-file reads and writes, fsync, recursive
// removal, and AtomicDir (build a directory under a temporary name beside its destination, then publish it
// with one rename; a failure leaves nothing at the destination).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace doppler {

std::string readFile(const std::string& path);                     // Error "<path>: cannot open: ..."
void writeFile(const std::string& path, std::string_view data, bool sync = true);  // creates/truncates, fsyncs
bool pathExists(const std::string& path);                           // lstat succeeds (any kind of file)
bool isDirectory(const std::string& path);
bool isRegularFile(const std::string& path);
uint64_t fileSize(const std::string& path);                         // Error if it cannot be stat'ed
std::string joinPath(const std::string& dir, const std::string& name);
// "a/b/c" -> "a/b"; "c" -> "."; "/c" -> "/"; trailing slashes are ignored.
std::string parentDir(const std::string& path);
// "a/b/c/" -> "c".
std::string baseName(const std::string& path);
void fsyncPath(const std::string& path);   // fsync a file or directory by path
void removeAll(const std::string& path);   // rm -rf; missing is fine; never follows symlinks into dirs
class Sha256;
// Copies a file (4 MiB buffered), fsyncs the copy, feeds the bytes to `hash` if given. Returns bytes copied.
uint64_t copyFile(const std::string& from, const std::string& to, Sha256* hash = nullptr, bool sync = true);
// Streams a file through `fn(data, n)` in chunks of up to 4 MiB. Returns the bytes read.
uint64_t forEachChunk(const std::string& path, const std::function<void(const uint8_t*, size_t)>& fn);

// Writes a file in large sequential chunks, fsyncs on close(). Errors name the path.
class FileWriter {
 public:
  FileWriter() = default;
  explicit FileWriter(const std::string& path);  // creates (O_EXCL) the file
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  FileWriter(FileWriter&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_), written_(o.written_) { o.fd_ = -1; }
  FileWriter& operator=(FileWriter&& o) noexcept;
  void write(const void* data, size_t n);  // unbuffered: callers pass large chunks
  void close(bool sync = true);            // fsync (unless !sync) + close; idempotent
  const std::string& path() const { return path_; }
  uint64_t written() const { return written_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t written_ = 0;
};

// A directory built under "<dest>.tmp-XXXXXX" (same parent, so the final rename is atomic) and published by
// commit(): fsync the temp dir, rename it to dest, fsync the parent. If commit() is never reached (an Error,
// an exception) the destructor removes the temp dir, so dest is either complete or absent.
// dest must not exist unless `force`; with force an existing dest is removed at commit time, just before the
// rename (a failure before then leaves the old dest untouched). sync = false skips the fsyncs (the rename is
// still atomic, but not durable across a power cut; tests use it for speed).
class AtomicDir {
 public:
  AtomicDir(const std::string& dest, bool force, bool sync = true);
  ~AtomicDir();
  AtomicDir(const AtomicDir&) = delete;
  AtomicDir& operator=(const AtomicDir&) = delete;
  const std::string& path() const { return tmp_; }  // write files here
  const std::string& dest() const { return dest_; }
  void commit();

 private:
  std::string dest_, tmp_;
  bool force_ = false, sync_ = true, committed_ = false;
};

}  // namespace doppler

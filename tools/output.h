// Buffered writing of large outputs (listings, traces) with error checks,
// so a closed pipe or a full disk becomes an exit-1 error, never a signal.
#ifndef CVMSTATE_TOOLS_OUTPUT_H_
#define CVMSTATE_TOOLS_OUTPUT_H_

#include <unistd.h>

#include <cstdio>
#include <string>

namespace cvmstate::tools {

class OutputBuffer {
 public:
  explicit OutputBuffer(std::FILE* f) : file_(f) {}
  std::string* buffer() { return &buf_; }
  // Writes the buffer out once it holds over 1 MiB.
  void MaybeFlush() {
    if (buf_.size() > (1u << 20)) Flush();
  }
  // Writes everything; false if any write so far failed.
  bool Flush() {
    if (!buf_.empty() && std::fwrite(buf_.data(), 1, buf_.size(), file_) != buf_.size()) ok_ = false;
    buf_.clear();
    if (std::fflush(file_) != 0) ok_ = false;
    return ok_;
  }
  bool ok() const { return ok_; }

 private:
  std::FILE* file_;
  std::string buf_;
  bool ok_ = true;
};

// Owns a file descriptor: closes it when it goes out of scope.
struct ScopedFd {
  int fd = -1;
  ScopedFd() = default;
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd >= 0) ::close(fd);
  }
};

// Prints "cvmstate: error: MSG" on stderr and returns 1.
int Fail(const std::string& msg);

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_OUTPUT_H_

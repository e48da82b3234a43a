// Pre-shared key files.
#include "migration/psk.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "migration/auth.h"
#include "tracker/format.h"

namespace cvmstate {
namespace {

// Closes on every return path.
struct KeyFd {
  int fd = -1;
  ~KeyFd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

Result<std::string> LoadPskFile(const std::string& path, double timeout_seconds) {
  using Clock = std::chrono::steady_clock;
  const std::string what = "the key file " + Quoted(path);
  // Non-blocking open: a FIFO nobody writes to must not hold us in open().
  KeyFd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (f.fd < 0) return Status::IOError("cannot read " + what + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return Status::IOError("cannot read " + what + ": " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) return Status::InvalidArgument(what + " is a directory");
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  std::string content;
  char buf[4096];
  for (;;) {
    // A regular file is always readable; a pipe or FIFO is waited for.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      return Status::TimedOut("timed out after " + FormatSeconds(timeout_seconds) + " reading " + what +
                              " (a pipe or FIFO that nobody writes to?)");
    }
    pollfd p{f.fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (r < 0 && errno != EINTR) return Status::IOError("cannot read " + what + ": " + std::strerror(errno));
    if (r <= 0) continue;
    const ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::IOError("cannot read " + what + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > (1u << 16)) return Status::InvalidArgument(what + " is larger than 64 KiB");
  }
  if (content.size() < 16) {
    return Status::InvalidArgument(what + " holds " + std::to_string(content.size()) +
                                   " bytes; use at least 16 random bytes (head -c 32 /dev/urandom > key)");
  }
  return migration_internal::Hmac(content, "cvmstate psk v1");
}

}  // namespace cvmstate

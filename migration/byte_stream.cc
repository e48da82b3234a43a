// File-descriptor byte streams.
#include "migration/byte_stream.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>

#include "tracker/format.h"

namespace cvmstate {
namespace {

using Clock = std::chrono::steady_clock;

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

FdSink::Kind FdSink::kind() {
  if (kind_ == Kind::kUnknown) {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      kind_ = Kind::kOther;  // the write reports the real error
    } else if (S_ISSOCK(st.st_mode)) {
      kind_ = Kind::kSocket;
    } else if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) {
      kind_ = Kind::kFile;
    } else {
      kind_ = Kind::kOther;
    }
  }
  return kind_;
}

Status FdSink::Write(std::string_view data) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_));
  // A file never makes a writer wait for a peer: it is written as it is.
  const bool bounded = timeout_ > 0 && kind() != Kind::kFile;
  while (!data.empty()) {
    if (bounded) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        return Status::TimedOut("timed out after " + FormatSeconds(timeout_) +
                                " writing to the migration channel (the peer stopped reading)");
      }
      pollfd pfd{fd_, POLLOUT, 0};
      const int r = poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (r < 0 && errno != EINTR) return Status::IOError(Errno("poll"));
      if (r <= 0) continue;
      // POLLERR or POLLHUP: the write below reports the error.
    }
    ssize_t n;
    if (kind() == Kind::kSocket) {
      n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL | (bounded ? MSG_DONTWAIT : 0));
    } else {
      // A pipe or FIFO that poll reports writable has room for PIPE_BUF
      // bytes at least, so a write of that many does not block.
      n = ::write(fd_, data.data(), bounded ? std::min<size_t>(data.size(), PIPE_BUF) : data.size());
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // Full (a non-blocking descriptor): wait for room, within the deadline if any.
        if (!bounded) {
          pollfd pfd{fd_, POLLOUT, 0};
          (void)poll(&pfd, 1, -1);
        }
        continue;
      }
      return Status::IOError(Errno("write to the migration channel failed"));
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::OK();
}

Status FdSource::Read(void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_));
  while (n > 0) {
    if (timeout_ > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Status::TimedOut("timed out after " + FormatSeconds(timeout_) + " waiting for the next frame");
      pollfd pfd{fd_, POLLIN, 0};
      int r = poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (r < 0 && errno != EINTR) return Status::IOError(Errno("poll"));
      if (r <= 0) continue;
    }
    ssize_t got = ::read(fd_, p, n);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::IOError(Errno("read from the migration channel failed"));
    }
    if (got == 0) return Status::IOError("the stream ended in the middle of a frame or before its end frame");
    p += got;
    n -= static_cast<size_t>(got);
  }
  return Status::OK();
}

}  // namespace cvmstate

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

// Polls fd for events and the cancel token's descriptor (if any) for at
// most timeout_ms (-1: no limit). > 0: fd is ready (or in error), 0: not
// yet, < 0: poll failed (errno set; EINTR counts as not yet).
int PollWithCancel(int fd, short events, const CancelToken* cancel, int timeout_ms) {
  pollfd pfd[2] = {{fd, events, 0}, {cancel != nullptr ? cancel->fd() : -1, POLLIN, 0}};
  // Without a descriptor to wake on, a cancel is seen within a second.
  if (cancel != nullptr && cancel->fd() < 0 && (timeout_ms < 0 || timeout_ms > 1000)) timeout_ms = 1000;
  const int r = poll(pfd, 2, timeout_ms);
  if (r < 0) return errno == EINTR ? 0 : -1;
  return pfd[0].revents != 0 ? 1 : 0;
}

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
  const bool bounded = (timeout_ > 0 || cancel_ != nullptr) && kind() != Kind::kFile;
  while (!data.empty()) {
    if (cancel_ != nullptr && cancel_->cancelled()) return cancel_->Check();
    if (bounded) {
      long long wait_ms = -1;
      if (timeout_ > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
          return Status::TimedOut("timed out after " + FormatSeconds(timeout_) +
                                  " writing to the migration channel (the peer stopped reading)");
        }
        wait_ms = std::min<long long>(left, 1000);
      }
      const int r = PollWithCancel(fd_, POLLOUT, cancel_, static_cast<int>(wait_ms));
      if (r < 0) return Status::IOError(Errno("poll"));
      if (r == 0) continue;
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
    if (cancel_ != nullptr && cancel_->cancelled()) return cancel_->Check();
    if (timeout_ > 0 || cancel_ != nullptr) {
      long long wait_ms = -1;
      if (timeout_ > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) return Status::TimedOut("timed out after " + FormatSeconds(timeout_) + " waiting for the next frame");
        wait_ms = std::min<long long>(left, 1000);
      }
      const int r = PollWithCancel(fd_, POLLIN, cancel_, static_cast<int>(wait_ms));
      if (r < 0) return Status::IOError(Errno("poll"));
      if (r == 0) continue;
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

// ByteSink and ByteSource: the byte channel a migration stream runs over,
// and their file-descriptor implementations (TCP socket, pipe, file,
// socketpair). A VMM with its own migration channel implements the two
// interfaces itself.
#ifndef CVMSTATE_MIGRATION_BYTE_STREAM_H_
#define CVMSTATE_MIGRATION_BYTE_STREAM_H_

#include <cstddef>
#include <string_view>

#include "migration/cancel_token.h"
#include "tracker/status.h"

namespace cvmstate {

class ByteSink {
 public:
  virtual ~ByteSink() = default;
  // Writes all of data, or fails (IOError).
  [[nodiscard]] virtual Status Write(std::string_view data) = 0;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Reads exactly n bytes, or fails: IOError when the channel closed or
  // broke, TimedOut when no byte came within the source's deadline.
  [[nodiscard]] virtual Status Read(void* buf, size_t n) = 0;
};

// Writes to a file descriptor it does not own. Each Write must finish
// within timeout_seconds (0: no limit), else TimedOut: a peer that stops
// reading cannot hold the writer. With a limit it never blocks in the
// kernel: sockets are written with MSG_DONTWAIT, pipes and FIFOs at most
// PIPE_BUF bytes at a time once poll says there is room (the descriptor's
// own flags are left alone); regular files are written as they are. With
// a CancelToken (not owned; nullptr: none) a cancel ends any wait at once
// with Cancelled.
class FdSink : public ByteSink {
 public:
  FdSink(int fd, double timeout_seconds) : fd_(fd), timeout_(timeout_seconds) {}
  [[nodiscard]] Status Write(std::string_view data) override;
  void set_timeout(double seconds) { timeout_ = seconds; }
  void set_cancel(const CancelToken* token) { cancel_ = token; }

 private:
  enum class Kind { kUnknown, kSocket, kFile, kOther };
  Kind kind();  // what fd_ is, found on the first write

  int fd_;
  double timeout_;
  Kind kind_ = Kind::kUnknown;
  const CancelToken* cancel_ = nullptr;
};

// Reads from a file descriptor it does not own; each Read waits at most
// timeout_seconds for data to arrive (0: no limit); a CancelToken ends the
// wait as for FdSink.
class FdSource : public ByteSource {
 public:
  FdSource(int fd, double timeout_seconds) : fd_(fd), timeout_(timeout_seconds) {}
  [[nodiscard]] Status Read(void* buf, size_t n) override;
  void set_timeout(double seconds) { timeout_ = seconds; }
  void set_cancel(const CancelToken* token) { cancel_ = token; }

 private:
  int fd_;
  double timeout_;
  const CancelToken* cancel_ = nullptr;
};

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_BYTE_STREAM_H_

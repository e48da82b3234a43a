// CancelToken: lets another thread stop a migration's waits. Cancel() may
// be called from any thread (and from a signal handler: it only stores a
// flag and writes an eventfd); FdSink and FdSource given the token poll its
// descriptor beside their own, so a wait in the kernel ends at once.
// Cancelling is final: every later wait of a stream holding the token fails
// with Cancelled.
#ifndef CVMSTATE_MIGRATION_CANCEL_TOKEN_H_
#define CVMSTATE_MIGRATION_CANCEL_TOKEN_H_

#include <atomic>

#include "tracker/status.h"

namespace cvmstate {

class CancelToken {
 public:
  // Makes its eventfd; if that fails (out of descriptors) the token still
  // works, and waits notice it within their one-second poll slices.
  CancelToken();
  ~CancelToken();
  CancelToken(const CancelToken&) = delete;
  CancelToken& operator=(const CancelToken&) = delete;

  void Cancel();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // Readable once cancelled; -1 if none could be made.
  int fd() const { return fd_; }
  // Cancelled("the migration was cancelled") once cancelled, else OK.
  [[nodiscard]] Status Check() const;

 private:
  std::atomic<bool> cancelled_{false};
  int fd_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_CANCEL_TOKEN_H_

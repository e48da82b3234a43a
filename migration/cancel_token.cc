#include "migration/cancel_token.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace cvmstate {

CancelToken::CancelToken() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

CancelToken::~CancelToken() {
  if (fd_ >= 0) ::close(fd_);
}

void CancelToken::Cancel() {
  cancelled_.store(true, std::memory_order_release);
  if (fd_ >= 0) {
    const uint64_t one = 1;
    // Nothing to do if it fails: the counter is already non-zero.
    [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
  }
}

Status CancelToken::Check() const {
  return cancelled() ? Status::Cancelled("the migration was cancelled") : Status::OK();
}

}  // namespace cvmstate

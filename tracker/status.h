// Status and Result: how every fallible cvmstate call reports failure.
// No exception crosses an API; a failed call returns a Status whose message
// is one line meant for a person (no trailing newline). Callers branch on
// code(), never on the message.
#ifndef CVMSTATE_TRACKER_STATUS_H_
#define CVMSTATE_TRACKER_STATUS_H_

#include <optional>
#include <string>
#include <utility>

namespace cvmstate {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,  // the caller's input breaks a rule
    kNotFound,         // no such block, VM or checkpoint
    kAlreadyExists,    // the name or VM id is taken
    kCorruption,       // stored or received bytes are damaged or forged
    kIOError,          // the file system or the channel failed
    kRefused,          // a listener or the peer declined a valid operation
    kTimedOut,         // a wait ran past the deadline the caller set
    kCancelled,        // the caller cancelled the operation
  };

  Status() = default;  // OK
  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string msg) { return Status(Code::kInvalidArgument, std::move(msg)); }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status AlreadyExists(std::string msg) { return Status(Code::kAlreadyExists, std::move(msg)); }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
  static Status IOError(std::string msg) { return Status(Code::kIOError, std::move(msg)); }
  static Status Refused(std::string msg) { return Status(Code::kRefused, std::move(msg)); }
  static Status TimedOut(std::string msg) { return Status(Code::kTimedOut, std::move(msg)); }
  static Status Cancelled(std::string msg) { return Status(Code::kCancelled, std::move(msg)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "ok" for success, otherwise the message.
  std::string ToString() const { return ok() ? std::string("ok") : message_; }
  // The same code with `prefix` put before the message ("frame 3: ...").
  Status WithPrefix(const std::string& prefix) const {
    return ok() ? *this : Status(code_, prefix + message_);
  }

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

namespace status_internal {
// Reports a value() read of a failed Result (a bug in the caller) and
// terminates: there is no value to return.
[[noreturn]] void DieOnBadValue(const Status& s);
}  // namespace status_internal

// A value or the Status explaining why there is none. value() on a failed
// Result is a programming error: it terminates with the status's message.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) status_ = Status::InvalidArgument("a Result was made from an OK status without a value");
  }
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return Checked(), *value_; }
  const T& value() const& { return Checked(), *value_; }
  T&& value() && { return Checked(), std::move(*value_); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void Checked() const {
    if (!value_.has_value()) status_internal::DieOnBadValue(status_);
  }
  std::optional<T> value_;
  Status status_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_TRACKER_STATUS_H_

// In-memory byte channels for tests: a sink that records a stream and a
// source that replays one.
#ifndef CVMSTATE_TESTS_COMMON_STRING_STREAM_H_
#define CVMSTATE_TESTS_COMMON_STRING_STREAM_H_

#include <cstring>
#include <string>
#include <string_view>

#include "migration/byte_stream.h"

namespace cvmstate::testing {

class StringSink : public ByteSink {
 public:
  Status Write(std::string_view d) override {
    data.append(d);
    return Status::OK();
  }
  std::string data;
};

class StringSource : public ByteSource {
 public:
  explicit StringSource(std::string_view d) : data_(d) {}
  Status Read(void* buf, size_t n) override {
    if (n > data_.size()) return Status::IOError("the stream ended in the middle of a frame");
    std::memcpy(buf, data_.data(), n);
    data_.remove_prefix(n);
    return Status::OK();
  }

 private:
  std::string_view data_;
};

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_COMMON_STRING_STREAM_H_

// InfoLog: RocksDB's informational log, written by the store itself.
//
// RocksDB's own log writer asserts (and so aborts the process, in builds
// with assertions such as Debian's) when it writes again after a failed
// write, which a nearly full disk makes happen at Open. This log writes each
// line with one write(2), drops lines it cannot write, and so never fails
// and never stops the store. Internal to store/.
#ifndef CVMSTATE_STORE_INFO_LOG_H_
#define CVMSTATE_STORE_INFO_LOG_H_

#include <rocksdb/env.h>

#include <cstdarg>
#include <mutex>
#include <string>

namespace cvmstate {

class InfoLog final : public rocksdb::Logger {
 public:
  // Appends lines at `level` or above to `path` (created on the first line;
  // started afresh once it passes max_bytes). An empty path drops every
  // line (a read-only store writes nothing).
  InfoLog(std::string path, rocksdb::InfoLogLevel level, size_t max_bytes);
  ~InfoLog() override;

  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override;

 private:
  std::mutex mu_;
  const std::string path_;
  const size_t max_bytes_;
  int fd_ = -1;
};

}  // namespace cvmstate

#endif  // CVMSTATE_STORE_INFO_LOG_H_

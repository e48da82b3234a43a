#include "store/info_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>

namespace cvmstate {

InfoLog::InfoLog(std::string path, rocksdb::InfoLogLevel level, size_t max_bytes)
    : rocksdb::Logger(level), path_(std::move(path)), max_bytes_(max_bytes) {}

InfoLog::~InfoLog() {
  if (fd_ >= 0) close(fd_);
}

void InfoLog::Logv(const char* format, va_list ap) {
  if (path_.empty()) return;
  char line[1024];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  size_t n = std::strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S UTC ", &tm);
  const int m = std::vsnprintf(line + n, sizeof line - n - 1, format, ap);
  if (m < 0) return;
  n = std::min(sizeof line - 2, n + static_cast<size_t>(m));
  line[n++] = '\n';
  std::lock_guard<std::mutex> lock(mu_);
  if (fd_ < 0) {
    fd_ = open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) return;  // the directory may not exist yet: drop the line
  }
  struct stat st;
  if (fstat(fd_, &st) == 0 && static_cast<size_t>(st.st_size) > max_bytes_) (void)ftruncate(fd_, 0);
  // A short or failed write (a full disk) loses this line and nothing else.
  (void)!write(fd_, line, n);
}

}  // namespace cvmstate

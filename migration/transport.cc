// File-descriptor and TCP transports, and the frame checksum.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "cvmstate/migration.h"

namespace cvmstate {
namespace {

using Clock = std::chrono::steady_clock;

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

Status SplitHostPort(const std::string& hp, std::string* host, std::string* port) {
  size_t colon = hp.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == hp.size()) {
    return Status::InvalidArgument("'" + hp + "' is not HOST:PORT");
  }
  *host = hp.substr(0, colon);
  *port = hp.substr(colon + 1);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') *host = host->substr(1, host->size() - 2);
  for (char c : *port) {
    if (c < '0' || c > '9') return Status::InvalidArgument("bad port in '" + hp + "'");
  }
  if (port->size() > 5 || std::stoul(*port) > 65535) return Status::InvalidArgument("bad port in '" + hp + "'");
  return Status::OK();
}

Result<addrinfo*> Resolve(const std::string& hp, bool passive) {
  std::string host, port;
  Status s = SplitHostPort(hp, &host, &port);
  if (!s.ok()) return s;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) return Status::IOError("cannot resolve '" + host + "': " + gai_strerror(rc));
  return res;
}

uint32_t kCrcTable[8][256];
bool InitCrc() {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
    kCrcTable[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (int t = 1; t < 8; ++t) kCrcTable[t][i] = (kCrcTable[t - 1][i] >> 8) ^ kCrcTable[0][kCrcTable[t - 1][i] & 0xff];
  }
  return true;
}
const bool kCrcReady = InitCrc();

}  // namespace

uint32_t Crc32c(const void* data, size_t size) {
  (void)kCrcReady;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xffffffffu;
  while (size >= 8) {  // slicing by 8
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + 4, 4);
    lo ^= c;
    c = kCrcTable[7][lo & 0xff] ^ kCrcTable[6][(lo >> 8) & 0xff] ^ kCrcTable[5][(lo >> 16) & 0xff] ^
        kCrcTable[4][lo >> 24] ^ kCrcTable[3][hi & 0xff] ^ kCrcTable[2][(hi >> 8) & 0xff] ^
        kCrcTable[1][(hi >> 16) & 0xff] ^ kCrcTable[0][hi >> 24];
    p += 8;
    size -= 8;
  }
  while (size--) c = (c >> 8) ^ kCrcTable[0][(c ^ *p++) & 0xff];
  return c ^ 0xffffffffu;
}

Status FdSink::Write(std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == ENOTSOCK) n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
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
      if (left <= 0) return Status::IOError("timed out after " + std::to_string(static_cast<int>(timeout_)) + " s waiting for the next frame");
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

Result<int> TcpConnect(const std::string& host_port, double retry_seconds) {
  auto res = Resolve(host_port, false);
  if (!res.ok()) return res.status();
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(retry_seconds));
  std::string last = "no address";
  for (;;) {
    for (addrinfo* ai = res.value(); ai != nullptr; ai = ai->ai_next) {
      int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) continue;
      if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        freeaddrinfo(res.value());
        return fd;
      }
      last = std::strerror(errno);
      close(fd);
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  freeaddrinfo(res.value());
  return Status::IOError("cannot connect to " + host_port + ": " + last);
}

Result<int> TcpListen(const std::string& host_port, std::string* bound) {
  auto res = Resolve(host_port, true);
  if (!res.ok()) return res.status();
  std::string last = "no address";
  for (addrinfo* ai = res.value(); ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4) == 0) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
      char host[NI_MAXHOST], port[NI_MAXSERV];
      getnameinfo(reinterpret_cast<sockaddr*>(&ss), len, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV);
      *bound = (ss.ss_family == AF_INET6 ? "[" + std::string(host) + "]" : std::string(host)) + ":" + port;
      freeaddrinfo(res.value());
      return fd;
    }
    last = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(res.value());
  return Status::IOError("cannot listen on " + host_port + ": " + last);
}

Result<int> TcpAccept(int listen_fd, double timeout_seconds) {
  pollfd pfd{listen_fd, POLLIN, 0};
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Status::IOError("timed out after " + std::to_string(static_cast<int>(timeout_seconds)) + " s waiting for the source to connect");
    int r = poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (r < 0 && errno != EINTR) return Status::IOError(Errno("poll"));
    if (r > 0) break;
  }
  int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return Status::IOError(Errno("accept"));
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

}  // namespace cvmstate

// TCP connections for migration streams.
#include "migration/tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "tracker/format.h"

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

}  // namespace

Result<int> TcpConnect(const std::string& host_port, double retry_seconds) {
  auto res = Resolve(host_port, false);
  if (!res.ok()) return res.status();
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(retry_seconds));
  std::string last = "no address";
  for (;;) {
    for (addrinfo* ai = res.value(); ai != nullptr; ai = ai->ai_next) {
      // Non-blocking, so that a host that drops the SYN cannot hold us past
      // the deadline (a blocking connect waits for the kernel's retries).
      int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
      if (fd < 0) continue;
      int err = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ? 0 : errno;
      while (err == EINPROGRESS || err == EINTR) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) {
          err = ETIMEDOUT;
          break;
        }
        pollfd p{fd, POLLOUT, 0};
        const int r = poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
        if (r < 0 && errno != EINTR) {
          err = errno;
        } else if (r > 0) {
          socklen_t len = sizeof err;
          if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        }
      }
      if (err == 0 && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        freeaddrinfo(res.value());
        return fd;
      }
      last = std::strerror(err != 0 ? err : errno);
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
      Result<std::string> name = getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0
                                     ? FormatSocketAddress(reinterpret_cast<sockaddr*>(&ss), len)
                                     : Result<std::string>(Status::IOError(Errno("getsockname")));
      freeaddrinfo(res.value());
      if (!name.ok()) {
        close(fd);
        return name.status().WithPrefix("cannot listen on " + host_port + ": ");
      }
      *bound = name.value();
      return fd;
    }
    last = std::strerror(errno);
    close(fd);
  }
  freeaddrinfo(res.value());
  return Status::IOError("cannot listen on " + host_port + ": " + last);
}

Result<std::string> FormatSocketAddress(const sockaddr* addr, socklen_t len) {
  if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t)) ||
      (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)) {
    return Status::InvalidArgument("not an IPv4 or IPv6 socket address");
  }
  char host[NI_MAXHOST], port[NI_MAXSERV];
  const int rc = getnameinfo(addr, len, host, sizeof host, port, sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
  if (rc != 0) return Status::InvalidArgument(std::string("cannot format the socket address: ") + gai_strerror(rc));
  // Appended piece by piece: GCC 12's -Wrestrict misreads "x" + std::string
  // (its bug 105329) in optimised builds.
  std::string out;
  if (addr->sa_family == AF_INET6) out += '[';
  out += host;
  if (addr->sa_family == AF_INET6) out += ']';
  out += ':';
  out += port;
  return out;
}

Result<int> TcpAccept(int listen_fd, double timeout_seconds) {
  pollfd pfd{listen_fd, POLLIN, 0};
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_seconds));
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Status::TimedOut("timed out after " + FormatSeconds(timeout_seconds) + " waiting for the source to connect");
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

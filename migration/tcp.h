// TCP endpoints for migration streams. Every call that waits takes its
// deadline from the caller.
#ifndef CVMSTATE_MIGRATION_TCP_H_
#define CVMSTATE_MIGRATION_TCP_H_

#include <sys/socket.h>

#include <string>

#include "tracker/status.h"

namespace cvmstate {

// "HOST:PORT" (HOST an IPv4 or IPv6 literal in brackets, or a name) to a
// connected TCP socket, retrying for up to retry_seconds while nobody
// listens yet; no attempt outlasts that deadline (an unreachable host is an
// error after retry_seconds, not after the kernel's SYN retries). Name
// resolution (getaddrinfo) is not bounded: give an address to avoid it.
// The caller closes it.
Result<int> TcpConnect(const std::string& host_port, double retry_seconds);
// A listening TCP socket; *bound gets "HOST:PORT" with the real port.
Result<int> TcpListen(const std::string& host_port, std::string* bound);
// Accepts one connection, waiting at most timeout_seconds (TimedOut).
Result<int> TcpAccept(int listen_fd, double timeout_seconds);

// A numeric "HOST:PORT" ("[HOST]:PORT" for IPv6) for an IPv4 or IPv6
// socket address; InvalidArgument for any other family or a short length.
Result<std::string> FormatSocketAddress(const sockaddr* addr, socklen_t len);

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_TCP_H_

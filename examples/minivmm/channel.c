#define _GNU_SOURCE
#include "channel.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int split(const char* addr, char* host, size_t hn, char* port, size_t pn) {
  const char* colon = strrchr(addr, ':');
  if (colon == NULL || colon == addr || (size_t)(colon - addr) >= hn || strlen(colon + 1) >= pn ||
      colon[1] == '\0') {
    return -EINVAL;
  }
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = '\0';
  strcpy(port, colon + 1);
  return 0;
}

static int resolve(const char* addr, int passive, struct addrinfo** out, char* err, size_t n) {
  char host[256], port[16];
  if (split(addr, host, sizeof host, port, sizeof port) != 0) {
    snprintf(err, n, "address '%s' is not HOST:PORT", addr);
    return -EINVAL;
  }
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  int rc = getaddrinfo(host, port, &hints, out);
  if (rc != 0) {
    snprintf(err, n, "address '%s': %s", addr, gai_strerror(rc));
    return -EINVAL;
  }
  return 0;
}

static void set_timeouts(int fd, double timeout_s) {
  struct timeval tv = {(time_t)timeout_s,
                       (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int channel_listen(const char* addr, int* port, char* err, size_t n) {
  struct addrinfo* ai = NULL;
  int rc = resolve(addr, 1, &ai, err, n);
  if (rc != 0) return rc;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1) < 0) {
    rc = -errno;
    snprintf(err, n, "listen on %s: %s", addr, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return rc;
  }
  freeaddrinfo(ai);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  getsockname(fd, (struct sockaddr*)&ss, &len);
  *port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in*)&ss)->sin_port
                                        : ((struct sockaddr_in6*)&ss)->sin6_port);
  return fd;
}

int channel_accept(int listen_fd, double timeout_s, char* err, size_t n) {
  struct pollfd p = {listen_fd, POLLIN, 0};
  int rc;
  do {
    rc = poll(&p, 1, (int)(timeout_s * 1000));
  } while (rc < 0 && errno == EINTR);
  if (rc == 0) {
    snprintf(err, n, "no source connected within %.0f s", timeout_s);
    return -ETIMEDOUT;
  }
  int fd = rc < 0 ? -1 : accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) {
    snprintf(err, n, "accept: %s", strerror(errno));
    return -EIO;
  }
  set_timeouts(fd, timeout_s);
  return fd;
}

int channel_connect(const char* addr, double timeout_s, char* err, size_t n) {
  struct addrinfo* ai = NULL;
  int rc = resolve(addr, 0, &ai, err, n);
  if (rc != 0) return rc;
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) set_timeouts(fd, timeout_s); /* SO_SNDTIMEO bounds connect too */
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
    rc = -errno;
    snprintf(err, n, "connect to %s: %s", addr, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(ai);
    return rc;
  }
  freeaddrinfo(ai);
  return fd;
}

int channel_write(int fd, const void* buf, size_t size) {
  const char* p = buf;
  while (size > 0) {
    ssize_t w = send(fd, p, size, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
    }
    p += w;
    size -= (size_t)w;
  }
  return 0;
}

int channel_read(int fd, void* buf, size_t size) {
  char* p = buf;
  while (size > 0) {
    ssize_t r = recv(fd, p, size, 0);
    if (r == 0) return -EPIPE;
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
    }
    p += r;
    size -= (size_t)r;
  }
  return 0;
}

int channel_send(int fd, uint32_t type, uint32_t count, uint64_t arg, const void* payload,
                 size_t size) {
  struct msg_header h = {type, count, arg};
  int rc = channel_write(fd, &h, sizeof h);
  if (rc == 0 && size > 0) rc = channel_write(fd, payload, size);
  return rc;
}

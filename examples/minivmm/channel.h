/*
 * minivmm's migration channel: one TCP connection that carries, source to
 * destination, RAM pages, cvmstate's stream (in STATE messages) and the
 * vCPU state; destination to source, cvmstate's own bytes (challenge and
 * acknowledgement) unframed. Every read and write on it is bounded by the
 * socket timeouts set at connect/accept.
 */
#ifndef MINIVMM_CHANNEL_H_
#define MINIVMM_CHANNEL_H_

#include <stddef.h>
#include <stdint.h>

enum {
  MSG_HELLO = 1, /* arg: guest RAM bytes; count: protocol version */
  MSG_PAGES = 2, /* arg: guest-physical address; count: pages that follow */
  MSG_STATE = 3, /* arg: bytes of cvmstate's stream that follow */
  MSG_VCPU = 4,  /* count: bytes of struct vcpu_message that follow */
};
#define CHANNEL_VERSION 1
#define CHANNEL_MAX_PAGES 256         /* pages in one MSG_PAGES */
#define CHANNEL_MAX_STATE (16u << 20) /* bytes in one MSG_STATE */

struct msg_header {
  uint32_t type;
  uint32_t count;
  uint64_t arg;
};

/* "host:port" -> a listening socket (port 0: any; *port gets it). */
int channel_listen(const char* addr, int* port, char* err, size_t n);
/* Accepts one connection within timeout_s; sets its timeouts. */
int channel_accept(int listen_fd, double timeout_s, char* err, size_t n);
/* Connects to "host:port" within timeout_s; sets its timeouts. */
int channel_connect(const char* addr, double timeout_s, char* err, size_t n);

/* All of buf, or -errno (-ETIMEDOUT past the socket timeout, -EPIPE when
 * the peer closed). */
int channel_write(int fd, const void* buf, size_t size);
int channel_read(int fd, void* buf, size_t size);
int channel_send(int fd, uint32_t type, uint32_t count, uint64_t arg, const void* payload,
                 size_t size);

#endif /* MINIVMM_CHANNEL_H_ */

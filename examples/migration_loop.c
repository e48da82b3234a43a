/*
 * cvmstate inside a VMM's own live-migration loop, on the v1 C API only:
 * QEMU's shape (save_live_pending -> save_live_iterate with a byte budget,
 * interleaved with RAM pages, until little is pending -> stop the vCPUs ->
 * complete), with the guest converting pages throughout. A destination
 * thread checks the layout it received (block count, sizes, per-state
 * bytes) before it acknowledges. A second migration is cancelled from
 * another thread while it is blocked. Exits 0 only if the destination's
 * state equals the source's and the cancelled one returned -ECANCELED.
 */
#define _GNU_SOURCE
#include <cvmstate/cvmstate.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GIB (1ull << 30)
#define PAGES (4 * GIB / 4096)

static void check(int rc, const char* what) {
  if (rc < 0) {
    fprintf(stderr, "migration_loop: %s: %s (%d)\n", what, cvmstate_last_error(), rc);
    exit(1);
  }
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The guest: conversions of 1 to 64 pages anywhere. */
static void guest_converts(cvmstate_vm* vm, uint64_t* seed, int n) {
  for (int i = 0; i < n; ++i) {
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    const uint64_t r = *seed >> 11;
    const uint64_t len = 1 + r % 64, at = (r >> 8) % (PAGES - len);
    check(cvmstate_convert(vm, "ram", at * 4096, len * 4096, (int)((r >> 40) % 3)), "convert");
  }
}

struct destination {
  int fd;
  int rc;
  uint64_t digest;
  uint64_t bytes[3];
};

static void* destination_main(void* arg) {
  struct destination* d = arg;
  cvmstate_destination* dst = NULL;
  d->rc = cvmstate_destination_new_fd(d->fd, NULL, 30, &dst);
  if (d->rc != 0) return NULL;
  cvmstate_vm* vm = NULL;
  d->rc = cvmstate_destination_receive(dst, &vm);
  if (d->rc == 0) {
    /* The layout must match this side's RAM before the guest may run here. */
    uint32_t count = 0;
    cvmstate_block_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    if (cvmstate_vm_block_count(vm, &count) != 0 || count != 1 ||
        cvmstate_vm_block_info(vm, 0, &info) != 0 || strcmp(info.name, "ram") != 0 ||
        info.size != 4 * GIB || info.page_size != 4096) {
      d->rc =
          cvmstate_destination_ack(dst, 0, "the received layout does not match this host's RAM");
      d->rc = -EINVAL;
    } else {
      memcpy(d->bytes, info.bytes, sizeof d->bytes);
      cvmstate_vm_digest(vm, &d->digest);
      d->rc = cvmstate_destination_ack(dst, 1, NULL);
    }
    cvmstate_vm_free(vm);
  }
  cvmstate_destination_free(dst);
  return NULL;
}

/* One live migration through the VMM's loop; returns the source's digest. */
static uint64_t migrate(cvmstate_vm* vm, uint64_t* seed) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) exit(1);
  struct destination d = {.fd = sv[1], .rc = 1};
  pthread_t t;
  pthread_create(&t, NULL, destination_main, &d);

  cvmstate_source* src = NULL;
  check(cvmstate_source_new_fd(vm, "guest-1", sv[0], NULL, &src), "source_new_fd");
  check(cvmstate_source_set_timeout(src, 30), "source_set_timeout");
  const uint64_t budget = 8 << 10; /* what this iteration may spend on page state */
  const uint64_t threshold = 1 << 10;
  uint64_t pending = 0, total = 0, max_step = 0;
  int iterations = 0, rounds = 0;
  double max_step_ms = 0;
  check(cvmstate_source_pending(src, &pending), "pending");
  printf("  pending before the first iteration: %llu bytes\n", (unsigned long long)pending);
  while (pending > threshold || rounds == 0) {
    uint64_t sent = 0;
    int round_done = 0;
    const double t0 = now();
    check(cvmstate_source_step(src, budget, &sent, &round_done), "step");
    const double ms = (now() - t0) * 1e3;
    if (ms > max_step_ms) max_step_ms = ms;
    /* The first step also reads the challenge and sends the hello. */
    if (iterations > 0 && sent > max_step) max_step = sent;
    if (iterations > 0 && sent > budget + 1024) {
      fprintf(stderr, "migration_loop: a step of %llu bytes for a budget of %llu\n",
              (unsigned long long)sent, (unsigned long long)budget);
      exit(1);
    }
    total += sent;
    rounds += round_done;
    ++iterations;
    /* ... here QEMU sends dirty RAM pages; the guest keeps running ... */
    guest_converts(vm, seed, 50);
    check(cvmstate_source_pending(src, &pending), "pending");
    if (iterations > 100000) {
      fprintf(stderr, "migration_loop: does not converge\n");
      exit(1);
    }
  }
  /* Stop-and-copy: the vCPUs are paused; no conversion from here. */
  uint64_t last = 0;
  const double t0 = now();
  check(cvmstate_source_finish(src, &last), "finish");
  printf(
      "  %d iterations (%d rounds), after the first at most %llu bytes (budget %llu), at most %.2f "
      "ms; %llu bytes, "
      "then %llu in "
      "stop-and-copy (%.2f ms with the acknowledgement)\n",
      iterations, rounds, (unsigned long long)max_step, (unsigned long long)budget, max_step_ms,
      (unsigned long long)total, (unsigned long long)last, (now() - t0) * 1e3);
  cvmstate_source_free(src);
  pthread_join(t, NULL);
  close(sv[0]);
  close(sv[1]);
  uint64_t digest = 0;
  check(cvmstate_vm_digest(vm, &digest), "digest");
  if (d.rc != 0 || d.digest != digest) {
    fprintf(stderr, "migration_loop: the destination differs (rc %d)\n", d.rc);
    exit(1);
  }
  printf("  destination: %llu shared, %llu private, %llu discarded bytes; digest equal\n",
         (unsigned long long)d.bytes[CVMSTATE_SHARED],
         (unsigned long long)d.bytes[CVMSTATE_PRIVATE],
         (unsigned long long)d.bytes[CVMSTATE_DISCARDED]);
  return digest;
}

struct canceller {
  cvmstate_source* src;
  double cancelled_at;
};

static void* cancel_main(void* arg) {
  struct canceller* c = arg;
  usleep(200 * 1000);
  c->cancelled_at = now();
  cvmstate_source_cancel(c->src);
  return NULL;
}

/* A migration to a destination that never answers, cancelled by the
 * management thread while the source waits for it. */
static void cancelled_migration(cvmstate_vm* vm) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) exit(1);
  cvmstate_source* src = NULL;
  check(cvmstate_source_new_fd(vm, "guest-1", sv[0], NULL, &src), "source_new_fd");
  struct canceller c = {.src = src};
  pthread_t t;
  pthread_create(&t, NULL, cancel_main, &c);
  const int rc = cvmstate_source_step(src, 1 << 20, NULL, NULL);
  const double latency_ms = (now() - c.cancelled_at) * 1e3;
  pthread_join(t, NULL);
  if (rc != -ECANCELED) {
    fprintf(stderr, "migration_loop: a cancelled step returned %d (%s)\n", rc,
            cvmstate_last_error());
    exit(1);
  }
  printf("  cancelled from another thread: the blocked step returned -ECANCELED %.3f ms later\n",
         latency_ms);
  cvmstate_source_free(src);
  close(sv[0]);
  close(sv[1]);
}

int main(void) {
  cvmstate_vm* vm = cvmstate_vm_new();
  if (vm == NULL) return 1;
  check(cvmstate_vm_add_block(vm, "ram", 4 * GIB, 4096, CVMSTATE_DISCARDED), "add_block");
  uint64_t seed = 42;
  guest_converts(vm, &seed, 200000);
  printf("migration_loop: a 4 GiB guest, live migration in a VMM's loop (cvmstate %u.%u)\n",
         cvmstate_version() >> 16, (cvmstate_version() >> 8) & 0xff);
  migrate(vm, &seed);
  cancelled_migration(vm);
  cvmstate_vm_free(vm);
  printf("migration_loop: ok\n");
  return 0;
}

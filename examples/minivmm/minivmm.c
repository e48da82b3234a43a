/*
 * cvmstate-minivmm: a small VMM, on cvmstate's public C API only, that runs
 * a real KVM guest (guest.S) which converts its own pages, and migrates it
 * live to another process or host.
 *
 *   cvmstate-minivmm probe
 *   cvmstate-minivmm run --ram SIZE --ops N --seed S [--db DIR --vm ID
 *       --checkpoint-every K] [--migrate-to HOST:PORT --migrate-after K
 *       --rounds R --psk-file F --timeout S]
 *   cvmstate-minivmm incoming --listen HOST:PORT --db DIR [--psk-file F]
 *       [--timeout S] [--checkpoint-every K]
 *
 * Every page-state request of the guest becomes one cvmstate_convert with
 * three listeners: a DMA listener (recording what a VFIO container would
 * map), a memory-attribute listener (recording the private attribute: the
 * default VM type has no KVM_SET_MEMORY_ATTRIBUTES) and a discard listener
 * that frees discarded pages' memory with fallocate(PUNCH_HOLE).
 *
 * Live migration runs beside the vCPU: pre-copy rounds send dirty RAM
 * (KVM's dirty log, discarded pages never) and cvmstate's delta rounds over
 * one connection while the guest converts; then the vCPU pauses and the
 * last dirty pages, the vCPU state and the last delta go. The destination
 * verifies, commits, replays the listeners and frees discarded RAM before
 * it resumes the vCPU; if it fails, the source resumes its own guest.
 *
 * Exit status: 0 when the guest verified everything on the side where it
 * finished (or, on the source, when it was handed off), 1 on any failure or
 * mismatch, 2 for a usage error, 77 when KVM is not usable here.
 */
#define _GNU_SOURCE
#include <cvmstate/cvmstate.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/kvm_para.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "guest_abi.h"
#include "kvm_guest.h"

#define BLOCK "ram"
#define EXIT_SKIP 77
#define CALIBRATION_EXITS 2000

extern const uint8_t minivmm_guest_start[];
extern const uint8_t minivmm_guest_end[];

static double mono(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Wall clock: the two sides of a migration compare it (one host, or hosts
 * in sync). */
static double wall(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("minivmm: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* ---- the VMM -------------------------------------------------------------- */

struct options {
  uint64_t ram;
  uint32_t ops, seed;
  const char *db, *vm_id, *migrate_to, *listen, *psk_file, *fault;
  uint64_t checkpoint_every, migrate_after;
  uint32_t rounds;
  double timeout;
};

struct vmm {
  struct options opt;
  struct kvm_probe probe;
  struct kvm_guest g;
  uint64_t pages, conv_base;
  cvmstate_vm* vm;
  cvmstate_store* store;
  cvmstate_listener *dma, *attr, *discard;
  pthread_mutex_t mu; /* cvmstate calls: the vCPU thread's and the migration's */
  pthread_cond_t cv;

  /* What the listeners recorded (under mu: they run inside cvmstate calls). */
  uint64_t dma_bytes, dma_maps, private_bytes;
  double listener_s;

  /* The vCPU thread's counters. */
  uint64_t conversions, conversion_exits;
  uint64_t conversions_at_migration_start, conversions_at_pause;
  double convert_s, conversion_handling_s;
  uint64_t nops;
  double nop_first, nop_last;

  /* Migration control (under mu). */
  pthread_t vcpu_thread;
  atomic_int pause_requested;
  int paused, handed_off, migration_wanted;
  int guest_done, guest_ok, vcpu_error;
  char vm_id[72]; /* a received VM id (at most 64 bytes) */
  char verdict[512];
};

static uint32_t guest_word(struct vmm* v, uint64_t gpa) {
  uint32_t w;
  memcpy(&w, v->g.ram + gpa, sizeof w);
  return w;
}

static void guest_set_word(struct vmm* v, uint64_t gpa, uint32_t w) {
  memcpy(v->g.ram + gpa, &w, sizeof w);
}

/* Listeners: they run inside cvmstate_convert, cvmstate_register_* and
 * cvmstate_listener_replay, always with mu held. */
static int dma_populate(void* o, uint64_t offset, uint64_t size) {
  (void)offset;
  struct vmm* v = o;
  v->dma_bytes += size;
  v->dma_maps++;
  return 0;
}
static void dma_discard(void* o, uint64_t offset, uint64_t size) {
  (void)offset;
  struct vmm* v = o;
  v->dma_bytes -= size;
}
static int attr_set_private(void* o, uint64_t offset, uint64_t size) {
  (void)offset;
  ((struct vmm*)o)->private_bytes += size;
  return 0;
}
static void attr_clear_private(void* o, uint64_t offset, uint64_t size) {
  (void)offset;
  ((struct vmm*)o)->private_bytes -= size;
}
static void discard_free(void* o, uint64_t offset, uint64_t size) {
  struct vmm* v = o;
  double t = mono();
  int rc = kvm_guest_punch_hole(&v->g, offset, size);
  if (rc != 0)
    say("fallocate(PUNCH_HOLE) at %#" PRIx64 "+%#" PRIx64 ": %s", offset, size, strerror(-rc));
  v->listener_s += mono() - t;
}

static int register_listeners(struct vmm* v) {
  const cvmstate_dma_ops_v1 dma = {sizeof dma, dma_populate, dma_discard, 0, 1};
  const cvmstate_attr_ops_v1 attr = {sizeof attr, attr_set_private, attr_clear_private, 0};
  const cvmstate_discard_ops_v1 discard = {sizeof discard, NULL, discard_free, 0};
  int rc;
  if ((rc = cvmstate_register_dma_listener_v1(v->vm, BLOCK, 0, v->g.ram_size, &dma, v, &v->dma)) !=
          0 ||
      (rc = cvmstate_register_attr_listener_v1(v->vm, BLOCK, 0, v->g.ram_size, &attr, v,
                                               &v->attr)) != 0 ||
      (rc = cvmstate_register_discard_listener_v1(v->vm, BLOCK, 0, v->g.ram_size, &discard, v,
                                                  &v->discard)) != 0) {
    say("registering listeners: %s", cvmstate_last_error());
  }
  return rc;
}

/* The layout of vm's one block and the bytes in each state. */
static int read_block_info(const cvmstate_vm* vm, cvmstate_block_info* info) {
  memset(info, 0, sizeof *info);
  info->struct_size = sizeof *info;
  return cvmstate_vm_block_info(vm, 0, info);
}

/* The listeners' records must agree with cvmstate's per-state bytes. */
static int check_listeners(const struct vmm* v, const cvmstate_block_info* info) {
  if (v->dma_bytes != info->bytes[CVMSTATE_SHARED] ||
      v->private_bytes != info->bytes[CVMSTATE_PRIVATE]) {
    say("listeners disagree with cvmstate: DMA-mapped %" PRIu64 " vs shared %" PRIu64
        ", private attribute %" PRIu64 " vs private %" PRIu64,
        v->dma_bytes, info->bytes[CVMSTATE_SHARED], v->private_bytes,
        info->bytes[CVMSTATE_PRIVATE]);
    return -1;
  }
  return 0;
}

static int checkpoint(struct vmm* v) {
  if (v->store == NULL) return 0;
  int rc = cvmstate_checkpoint(v->store, v->vm, v->opt.vm_id, NULL);
  if (rc != 0) say("checkpoint: %s", cvmstate_last_error());
  return rc;
}

/* One page-state change the guest asked for. */
static int convert(struct vmm* v, uint64_t pfn, uint64_t npages, int state) {
  if (npages == 0 || pfn >= v->pages || npages > v->pages - pfn || state < 0 || state > 2)
    return -EINVAL;
  pthread_mutex_lock(&v->mu);
  double listener_before = v->listener_s, t = mono();
  int rc = cvmstate_convert(v->vm, BLOCK, pfn * GUEST_PAGE, npages * GUEST_PAGE, state);
  v->convert_s += mono() - t - (v->listener_s - listener_before);
  if (rc != 0) {
    say("conversion of pages %#" PRIx64 "+%" PRIu64 " to %d refused: %s", pfn, npages, state,
        cvmstate_last_error());
  } else {
    v->conversions++;
    if (v->opt.checkpoint_every != 0 && v->conversions % v->opt.checkpoint_every == 0)
      rc = checkpoint(v);
    if (v->migration_wanted && v->conversions == v->opt.migrate_after)
      pthread_cond_broadcast(&v->cv);
  }
  pthread_mutex_unlock(&v->mu);
  return rc;
}

struct query {
  struct vmm* v;
  uint32_t count;
  uint64_t next;
};

static int query_run(void* o, uint64_t offset, uint64_t size, int state) {
  struct query* q = o;
  if (q->count == RUNS_MAX) return 1;
  uint32_t run[4] = {(uint32_t)(offset / GUEST_PAGE), (uint32_t)(size / GUEST_PAGE),
                     (uint32_t)state, 0};
  if (q->v->opt.fault != NULL && strcmp(q->v->opt.fault, "state") == 0 && q->count == 1)
    run[2] = (run[2] + 1) % 3;
  memcpy(q->v->g.ram + GUEST_RUNS + (uint64_t)q->count * 16, run, sizeof run);
  q->count++;
  q->next = (offset + size) / GUEST_PAGE;
  return 0;
}

static void handle_query(struct vmm* v) {
  uint64_t start = guest_word(v, GUEST_REQ + Q_START);
  struct query q = {v, 0, v->pages};
  if (start < v->pages) {
    pthread_mutex_lock(&v->mu);
    cvmstate_for_each_run(v->vm, BLOCK, start * GUEST_PAGE, (v->pages - start) * GUEST_PAGE, -1,
                          query_run, &q);
    pthread_mutex_unlock(&v->mu);
  }
  guest_set_word(v, GUEST_REQ + Q_COUNT, q.count);
  guest_set_word(v, GUEST_REQ + Q_NEXT, (uint32_t)q.next);
}

static void handle_psc(struct vmm* v) {
  uint32_t count = guest_word(v, GUEST_REQ + REQ_COUNT), done = 0;
  int32_t status = 0;
  if (count > REQ_MAX_ENTRIES) status = -EINVAL;
  for (; status == 0 && done < count; ++done) {
    uint64_t e = GUEST_REQ + REQ_ENTRIES + (uint64_t)done * REQ_ENTRY_SIZE;
    status = convert(v, guest_word(v, e), guest_word(v, e + 4), (int)guest_word(v, e + 8));
    if (status != 0) break;
  }
  guest_set_word(v, GUEST_REQ + REQ_STATUS, (uint32_t)status);
  guest_set_word(v, GUEST_REQ + REQ_DONE, done);
}

static const char* state_name(uint32_t s) {
  return s == 0 ? "shared" : s == 1 ? "private" : s == 2 ? "discarded" : "unknown";
}

static void handle_report(struct vmm* v) {
  uint32_t ok = guest_word(v, GUEST_REQ + V_OK), kind = guest_word(v, GUEST_REQ + V_KIND);
  uint32_t pages = guest_word(v, GUEST_REQ + V_PAGES), runs = guest_word(v, GUEST_REQ + V_RUNS);
  uint32_t conv = guest_word(v, GUEST_REQ + V_CONVERSIONS),
           pfn = guest_word(v, GUEST_REQ + V_FIRST_PFN);
  uint32_t expected = guest_word(v, GUEST_REQ + V_EXPECTED), got = guest_word(v, GUEST_REQ + V_GOT);
  if (ok == 1 && pages == v->pages) {
    snprintf(v->verdict, sizeof v->verdict, "guest: verified %u pages, %u runs, %u conversions: ok",
             pages, runs, conv);
  } else if (kind == 1) {
    snprintf(v->verdict, sizeof v->verdict,
             "guest: page state differs on %u of %u pages: the first, page %#x, is %s, its record "
             "says %s",
             guest_word(v, GUEST_REQ + V_STATE_BAD), pages, pfn, state_name(got),
             state_name(expected));
  } else if (kind == 2) {
    snprintf(
        v->verdict, sizeof v->verdict,
        "guest: content differs on %u owned pages: the first, page %#x, should hold the pattern of "
        "conversion %u (its stamp word reads %u)",
        guest_word(v, GUEST_REQ + V_CONTENT_BAD), pfn, expected, got);
  } else if (kind == 3) {
    snprintf(v->verdict, sizeof v->verdict,
             "guest: its conversion of page %#x to %s was refused (%d) after %u", pfn,
             state_name(expected), (int)guest_word(v, GUEST_REQ + V_CONVERT_STATUS), conv);
  } else if (kind == 4) {
    snprintf(v->verdict, sizeof v->verdict, "guest: no boot parameters");
  } else {
    snprintf(v->verdict, sizeof v->verdict, "guest: verified %u of %" PRIu64 " pages: incomplete",
             pages, v->pages);
  }
  pthread_mutex_lock(&v->mu);
  v->guest_done = 1;
  v->guest_ok = ok == 1 && pages == v->pages;
  pthread_cond_broadcast(&v->cv);
  pthread_mutex_unlock(&v->mu);
}

static void handle_io(struct vmm* v) {
  struct kvm_run* run = v->g.run;
  if (run->io.direction != KVM_EXIT_IO_OUT) return;
  switch (run->io.port) {
    case PORT_NOP: {
      double t = mono();
      if (v->nops++ == 0) v->nop_first = t;
      v->nop_last = t;
      break;
    }
    case PORT_PHASE: {
      uint32_t value = 0;
      memcpy(&value, (uint8_t*)run + run->io.data_offset, run->io.size < 4 ? run->io.size : 4);
      if (value == PHASE_VERIFYING && v->opt.fault != NULL &&
          strcmp(v->opt.fault, "content") == 0) {
        /* A fault for the tests: one owned page's stamp changes under the guest. */
        pthread_mutex_lock(&v->mu);
        for (uint64_t pfn = v->conv_base; pfn < v->pages; ++pfn) {
          if (cvmstate_state_at(v->vm, BLOCK, pfn * GUEST_PAGE) != CVMSTATE_DISCARDED) {
            guest_set_word(v, pfn * GUEST_PAGE + 4, guest_word(v, pfn * GUEST_PAGE + 4) + 1);
            break;
          }
        }
        pthread_mutex_unlock(&v->mu);
      }
      break;
    }
    case PORT_PSC: {
      double t = mono();
      handle_psc(v);
      v->conversion_handling_s += mono() - t;
      v->conversion_exits++;
      break;
    }
    case PORT_QUERY:
      handle_query(v);
      break;
    case PORT_REPORT:
      handle_report(v);
      break;
    default:
      break;
  }
}

static void handle_hypercall(struct vmm* v) {
  struct kvm_run* run = v->g.run;
  double t = mono();
  if (run->hypercall.nr != KVM_HC_MAP_GPA_RANGE) {
    run->hypercall.ret = (uint64_t)-ENOSYS;
    return;
  }
  uint64_t gpa = run->hypercall.args[0], npages = run->hypercall.args[1],
           attrs = run->hypercall.args[2];
  int state = (attrs & 0x10) ? CVMSTATE_PRIVATE : CVMSTATE_SHARED;
  int rc = gpa % GUEST_PAGE != 0 ? -EINVAL : convert(v, gpa / GUEST_PAGE, npages, state);
  run->hypercall.ret = (uint64_t)(int64_t)rc;
  v->conversion_handling_s += mono() - t;
  v->conversion_exits++;
}

static void kick_handler(int sig) { (void)sig; }

enum { VCPU_GUEST_DONE = 0, VCPU_HANDED_OFF = 1, VCPU_FAILED = 2 };

/* Runs the vCPU until the guest halts after its report, or the migration
 * hands it off; parks while a migration has it paused. */
static int vcpu_loop(struct vmm* v) {
  struct kvm_run* run = v->g.run;
  for (;;) {
    if (atomic_load(&v->pause_requested)) {
      /* Complete the exit in flight (its I/O or hypercall result) without
       * running the guest, so the saved registers are past it. */
      run->immediate_exit = 1;
      if (ioctl(v->g.vcpu_fd, KVM_RUN, 0) == 0 || errno != EINTR) {
        say("KVM_RUN to complete the last exit: %s", strerror(errno));
      }
      run->immediate_exit = 0;
      pthread_mutex_lock(&v->mu);
      v->paused = 1;
      pthread_cond_broadcast(&v->cv);
      while (atomic_load(&v->pause_requested) && !v->handed_off) pthread_cond_wait(&v->cv, &v->mu);
      v->paused = 0;
      int handed_off = v->handed_off;
      pthread_mutex_unlock(&v->mu);
      if (handed_off) return VCPU_HANDED_OFF;
      continue;
    }
    if (ioctl(v->g.vcpu_fd, KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        /* A kick: the loop's top sees a pause request (set before the
         * kick); one that came to nothing must not keep KVM_RUN from
         * running the guest. */
        run->immediate_exit = 0;
        continue;
      }
      say("KVM_RUN: %s", strerror(errno));
      return VCPU_FAILED;
    }
    switch (run->exit_reason) {
      case KVM_EXIT_IO:
        handle_io(v);
        break;
      case KVM_EXIT_HYPERCALL:
        handle_hypercall(v);
        break;
      case KVM_EXIT_HLT:
        if (v->guest_done) return VCPU_GUEST_DONE;
        say("the guest halted without a report");
        return VCPU_FAILED;
      default: {
        struct kvm_regs regs;
        ioctl(v->g.vcpu_fd, KVM_GET_REGS, &regs);
        say("unexpected exit %u at rip %#llx", run->exit_reason, regs.rip);
        return VCPU_FAILED;
      }
    }
  }
}

static void* vcpu_main(void* arg) {
  struct vmm* v = arg;
  int r = vcpu_loop(v);
  pthread_mutex_lock(&v->mu);
  v->vcpu_error = r == VCPU_FAILED;
  if (r == VCPU_FAILED) v->guest_done = 1;
  pthread_cond_broadcast(&v->cv);
  pthread_mutex_unlock(&v->mu);
  return (void*)(intptr_t)r;
}

/* Asks the vCPU thread to pause and waits until it has. */
static void pause_vcpu(struct vmm* v) {
  atomic_store(&v->pause_requested, 1);
  v->g.run->immediate_exit = 1;
  pthread_kill(v->vcpu_thread, SIGUSR1);
  pthread_mutex_lock(&v->mu);
  while (!v->paused && !v->guest_done) pthread_cond_wait(&v->cv, &v->mu);
  pthread_mutex_unlock(&v->mu);
}

static void resume_vcpu(struct vmm* v, int handed_off) {
  pthread_mutex_lock(&v->mu);
  v->handed_off = handed_off;
  atomic_store(&v->pause_requested, 0);
  pthread_cond_broadcast(&v->cv);
  pthread_mutex_unlock(&v->mu);
}

static int setup_vmm(struct vmm* v) {
  char err[256];
  int rc = kvm_guest_create(&v->g, v->opt.ram, v->probe.hypercall_works, err, sizeof err);
  if (rc != 0) {
    say("%s", err);
    return rc;
  }
  v->pages = v->opt.ram / GUEST_PAGE;
  /* The record takes a word a page; the converted area starts at the next
   * 2 MiB boundary after it. */
  v->conv_base =
      ((GUEST_RECORD + v->pages * 4 + (2u << 20) - 1) & ~((2ull << 20) - 1)) / GUEST_PAGE;
  v->vm = cvmstate_vm_new();
  if (v->vm == NULL) return -ENOMEM;
  if (v->opt.db != NULL && v->store == NULL &&
      (rc = cvmstate_store_open(v->opt.db, &v->store)) != 0) {
    say("store %s: %s", v->opt.db, cvmstate_last_error());
    return rc;
  }
  return 0;
}

static void print_costs(struct vmm* v) {
  if (v->conversion_exits == 0) return;
  double per_exit = v->conversion_handling_s / (double)v->conversion_exits * 1e6;
  double cvm = v->convert_s / (double)v->conversions * 1e6;
  double listeners = v->listener_s / (double)v->conversions * 1e6;
  if (v->nops > 1) {
    double rt = (v->nop_last - v->nop_first) / (double)(v->nops - 1) * 1e6;
    say("cost: an exit's round trip %.2f us (%" PRIu64
        " empty requests); a conversion exit %.2f us: "
        "round trip + %.2f us in the VMM, of which cvmstate %.3f us (%.1f%%) and its discard "
        "listener's fallocate %.3f us",
        rt, v->nops, rt + per_exit, per_exit, cvm, 100.0 * cvm / (rt + per_exit), listeners);
  } else {
    say("cost: %.2f us in the VMM a conversion exit, of which cvmstate %.3f us", per_exit, cvm);
  }
}

static void print_memory(const struct vmm* v, const cvmstate_block_info* info) {
  say("host memory: %" PRIu64 " MiB of the guest's %" PRIu64 " MiB resident; %" PRIu64
      " MiB discarded (freed), %" PRIu64 " MiB private, %" PRIu64
      " MiB shared (DMA-mapped, %" PRIu64 " mapping calls)",
      kvm_guest_resident_bytes(&v->g) >> 20, v->g.ram_size >> 20,
      info->bytes[CVMSTATE_DISCARDED] >> 20, info->bytes[CVMSTATE_PRIVATE] >> 20,
      info->bytes[CVMSTATE_SHARED] >> 20, v->dma_maps);
}

/* The end on the side where the guest finished. */
static int finish_guest(struct vmm* v) {
  if (v->vcpu_error) return 1;
  /* The vCPU thread has ended: nothing converts any more. */
  int rc = checkpoint(v);
  cvmstate_block_info info;
  const int info_rc = read_block_info(v->vm, &info);
  print_costs(v);
  if (info_rc != 0) {
    rc = info_rc;
  } else {
    print_memory(v, &info);
    if (check_listeners(v, &info) != 0) rc = -1;
  }
  printf("%s\n", v->verdict);
  fflush(stdout);
  return v->guest_ok && rc == 0 ? 0 : 1;
}

/* ---- migration, source side ------------------------------------------------ */

struct out_channel {
  int fd;
};

static long source_write(void* o, const void* buf, size_t size) {
  struct out_channel* c = o;
  if (size > CHANNEL_MAX_STATE) size = CHANNEL_MAX_STATE;
  int rc = channel_send(c->fd, MSG_STATE, 0, size, buf, size);
  return rc < 0 ? rc : (long)size;
}

static long source_read(void* o, void* buf, size_t size) {
  struct out_channel* c = o;
  for (;;) {
    ssize_t r = recv(c->fd, buf, size, 0);
    if (r >= 0) return (long)r;
    if (errno != EINTR) return errno == EAGAIN ? -ETIMEDOUT : -errno;
  }
}

/* Sends the pages set in `bitmap` that are not discarded; clears the bits.
 * Returns the bytes sent or -errno. */
static int64_t send_pages(struct vmm* v, int fd, uint64_t* bitmap) {
  /* Which pages to send is decided under mu (the guest may be converting);
   * their content is read after, and a page written since is dirty again. */
  pthread_mutex_lock(&v->mu);
  for (uint64_t w = 0; w < (v->pages + 63) / 64; ++w) {
    for (uint64_t bits = bitmap[w]; bits != 0; bits &= bits - 1) {
      uint64_t pfn = w * 64 + (uint64_t)__builtin_ctzll(bits);
      if (pfn >= v->pages ||
          cvmstate_state_at(v->vm, BLOCK, pfn * GUEST_PAGE) == CVMSTATE_DISCARDED) {
        bitmap[w] &= ~(1ull << (pfn % 64));
      }
    }
  }
  pthread_mutex_unlock(&v->mu);
  int64_t sent = 0;
  uint64_t pfn = 0;
  while (pfn < v->pages) {
    if (!(bitmap[pfn / 64] >> (pfn % 64) & 1)) {
      pfn++;
      continue;
    }
    uint64_t n = 1;
    while (n < CHANNEL_MAX_PAGES && pfn + n < v->pages &&
           (bitmap[(pfn + n) / 64] >> ((pfn + n) % 64) & 1))
      n++;
    int rc = channel_send(fd, MSG_PAGES, (uint32_t)n, pfn * GUEST_PAGE, v->g.ram + pfn * GUEST_PAGE,
                          n * GUEST_PAGE);
    if (rc != 0) return rc;
    for (uint64_t i = pfn; i < pfn + n; ++i) bitmap[i / 64] &= ~(1ull << (i % 64));
    sent += (int64_t)(n * GUEST_PAGE);
    pfn += n;
  }
  return sent;
}

/* Pages the VMM itself writes (the request page and run buffer): KVM's
 * dirty log does not see them, so every pass sends them. */
static void mark_vmm_written(uint64_t* bitmap) {
  for (uint64_t pfn = GUEST_REQ / GUEST_PAGE; pfn < GUEST_RUNS_END / GUEST_PAGE; ++pfn) {
    bitmap[pfn / 64] |= 1ull << (pfn % 64);
  }
}

static int mark_run(void* o, uint64_t offset, uint64_t size, int state) {
  (void)state;
  uint64_t* bitmap = o;
  for (uint64_t pfn = offset / GUEST_PAGE; pfn < (offset + size) / GUEST_PAGE; ++pfn) {
    bitmap[pfn / 64] |= 1ull << (pfn % 64);
  }
  return 0;
}

static int step_round(struct vmm* v, cvmstate_source* src, uint64_t* bytes) {
  int done = 0;
  *bytes = 0;
  while (!done) {
    uint64_t sent = 0;
    pthread_mutex_lock(&v->mu);
    int rc = cvmstate_source_step(src, 256 << 10, &sent, &done);
    pthread_mutex_unlock(&v->mu);
    if (rc != 0) return rc;
    *bytes += sent;
  }
  return 0;
}

/* The first message: what the destination must provide. */
struct hello {
  uint32_t version;
  uint32_t guest_flags; /* the guest's P_FLAGS: FLAG_HYPERCALL needs the exit there too */
  uint64_t ram_size;
};

struct vcpu_message {
  struct kvm_vcpu_state vcpu;
  double paused_at; /* the source's wall clock */
  uint64_t conversions;
};

static uint64_t conversions_now(struct vmm* v) {
  pthread_mutex_lock(&v->mu);
  uint64_t n = v->conversions;
  pthread_mutex_unlock(&v->mu);
  return n;
}

enum { MIGRATED = 0, MIGRATION_FAILED = 1, MIGRATION_UNKNOWN = 2 };

/* The live migration: MIGRATED once the destination has acknowledged;
 * MIGRATION_FAILED when the destination cannot run the guest (the guest is
 * to resume here); MIGRATION_UNKNOWN when the end of the stream went but
 * no answer came back (the destination may be running it). */
static int migrate(struct vmm* v) {
  char err[256];
  int fd = channel_connect(v->opt.migrate_to, v->opt.timeout, err, sizeof err);
  if (fd < 0) {
    say("migration: %s", err);
    return MIGRATION_FAILED;
  }
  uint64_t* bitmap = calloc((v->pages + 63) / 64, sizeof(uint64_t));
  struct out_channel out = {fd};
  const cvmstate_io_v1 io = {sizeof io, source_read, source_write};
  cvmstate_source* src = NULL;
  const struct hello hello = {CHANNEL_VERSION, guest_word(v, GUEST_PARAMS + P_FLAGS),
                              v->g.ram_size};
  int rc =
      bitmap == NULL ? -ENOMEM : channel_send(fd, MSG_HELLO, sizeof hello, 0, &hello, sizeof hello);
  if (rc == 0) {
    /* Making and freeing a source touch the vm: under mu like every call. */
    pthread_mutex_lock(&v->mu);
    rc = cvmstate_source_new_io_v1(v->vm, v->opt.vm_id, &io, &out, v->opt.psk_file, &src);
    pthread_mutex_unlock(&v->mu);
    if (rc == 0) rc = cvmstate_source_set_timeout(src, v->opt.timeout);
  }
  if (rc == 0) {
    pthread_mutex_lock(&v->mu);
    rc = kvm_guest_set_dirty_logging(&v->g, 1);
    if (rc == 0) rc = kvm_guest_get_dirty_log(&v->g, bitmap); /* from now on */
    v->conversions_at_migration_start = v->conversions;
    pthread_mutex_unlock(&v->mu);
  }
  uint64_t ram_sent = 0;
  double t0 = mono();
  for (uint32_t round = 0; rc == 0 && round < v->opt.rounds; ++round) {
    double t = mono();
    uint64_t conv0 = conversions_now(v), state_bytes = 0;
    if (round == 0) {
      /* Every page with backing. */
      pthread_mutex_lock(&v->mu);
      cvmstate_for_each_run(v->vm, BLOCK, 0, v->g.ram_size, CVMSTATE_SHARED, mark_run, bitmap);
      cvmstate_for_each_run(v->vm, BLOCK, 0, v->g.ram_size, CVMSTATE_PRIVATE, mark_run, bitmap);
      pthread_mutex_unlock(&v->mu);
    } else {
      rc = kvm_guest_get_dirty_log(&v->g, bitmap);
    }
    mark_vmm_written(bitmap);
    int64_t sent = rc == 0 ? send_pages(v, fd, bitmap) : rc;
    if (sent < 0) {
      rc = (int)sent;
      break;
    }
    ram_sent += (uint64_t)sent;
    if ((rc = step_round(v, src, &state_bytes)) != 0) break;
    say("migration: round %u: RAM %" PRIu64 " KiB, page states %" PRIu64 " bytes, %.1f ms, %" PRIu64
        " conversions during it",
        round, (uint64_t)sent >> 10, state_bytes, (mono() - t) * 1e3, conversions_now(v) - conv0);
    pthread_mutex_lock(&v->mu);
    if (v->guest_done) rc = -ECANCELED;
    pthread_mutex_unlock(&v->mu);
  }
  int result = rc == 0 ? MIGRATED : MIGRATION_FAILED;
  if (rc == -ECANCELED) {
    say("migration: the guest finished during pre-copy; it stays here");
  } else if (rc != 0) {
    say("migration failed during pre-copy: %s",
        rc == -EPIPE || rc == -ECONNRESET         ? "the destination went away"
        : src != NULL && cvmstate_last_error()[0] ? cvmstate_last_error()
                                                  : strerror(-rc));
  } else {
    /* Stop and copy. */
    double t = mono();
    pause_vcpu(v);
    struct vcpu_message m;
    memset(&m, 0, sizeof m);
    m.paused_at = wall();
    v->conversions_at_pause = m.conversions = v->conversions;
    if (v->guest_done) {
      say("migration: the guest finished before it could be paused; it stays here");
      rc = -ECANCELED;
    }
    if (rc == 0) rc = kvm_guest_get_dirty_log(&v->g, bitmap);
    mark_vmm_written(bitmap);
    int64_t sent = rc == 0 ? send_pages(v, fd, bitmap) : rc;
    if (sent < 0) rc = (int)sent;
    if (rc == 0) {
      ram_sent += (uint64_t)sent;
      rc = kvm_guest_save_vcpu(&v->g, &m.vcpu);
    }
    if (rc == 0) rc = channel_send(fd, MSG_VCPU, sizeof m, 0, &m, sizeof m);
    uint64_t last = 0;
    if (rc == 0) {
      rc = cvmstate_source_finish(src, &last);
      if (rc != 0 && rc != -EACCES && cvmstate_source_end_sent(src) == 1) {
        /* The destination has the whole stream and may have resumed the
         * guest: running it here too could run it twice. */
        say("migration outcome unknown: the end of the stream went but no answer came (%s); the "
            "guest "
            "stays paused here: check the destination",
            cvmstate_last_error());
        result = MIGRATION_UNKNOWN;
      } else if (rc != 0) {
        say("migration failed at stop-and-copy: %s", cvmstate_last_error());
      }
    } else if (rc != -ECANCELED) {
      say("migration failed at stop-and-copy: %s", strerror(-rc));
    }
    if (rc != 0 && result == MIGRATED) result = MIGRATION_FAILED;
    if (rc == 0) {
      uint64_t state_total = 0;
      for (uint32_t r = 0; r < cvmstate_source_rounds(src); ++r)
        state_total += cvmstate_source_round_bytes(src, r);
      say("migration: handed off to %s after %u rounds in %.1f ms (stop-and-copy %.1f ms on this "
          "side): RAM %" PRIu64 " MiB of %" PRIu64 " MiB guest (%.1f%%), page states %" PRIu64
          " bytes; conversions before %" PRIu64 ", during %" PRIu64,
          v->opt.migrate_to, cvmstate_source_rounds(src), (mono() - t0) * 1e3, (mono() - t) * 1e3,
          ram_sent >> 20, v->g.ram_size >> 20, 100.0 * (double)ram_sent / (double)v->g.ram_size,
          state_total, v->conversions_at_migration_start,
          v->conversions_at_pause - v->conversions_at_migration_start);
    }
  }
  pthread_mutex_lock(&v->mu);
  if (src != NULL) cvmstate_source_free(src);
  pthread_mutex_unlock(&v->mu);
  free(bitmap);
  close(fd);
  if (result == MIGRATION_FAILED && v->g.dirty_logging) {
    pthread_mutex_lock(&v->mu);
    if (kvm_guest_set_dirty_logging(&v->g, 0) != 0)
      say("turning dirty logging off: %s", strerror(errno));
    pthread_mutex_unlock(&v->mu);
  }
  return result;
}

/* ---- the commands ------------------------------------------------------------ */

static int load_guest(struct vmm* v) {
  size_t code = (size_t)(minivmm_guest_end - minivmm_guest_start);
  if (code > GUEST_CODE_MAX) return -E2BIG;
  memcpy(v->g.ram + GUEST_CODE, minivmm_guest_start, code);
  uint32_t params[7] = {
      PARAMS_MAGIC,
      v->opt.seed,
      v->opt.ops,
      (uint32_t)v->pages,
      (uint32_t)v->conv_base,
      (v->probe.hypercall_works ? FLAG_HYPERCALL : 0) | (v->probe.amd ? FLAG_VMMCALL : 0),
      CALIBRATION_EXITS};
  memcpy(v->g.ram + GUEST_PARAMS + P_MAGIC, params, sizeof params);
  return kvm_guest_reset_vcpu(&v->g, GUEST_CODE, GUEST_STACK_TOP);
}

/* The layout the guest starts with: firmware pages private, its request
 * page and run buffer shared, the rest discarded (not yet accepted). */
static int initial_state(struct vmm* v) {
  int rc = cvmstate_vm_add_block(v->vm, BLOCK, v->g.ram_size, GUEST_PAGE, CVMSTATE_DISCARDED);
  if (rc == 0) rc = cvmstate_convert(v->vm, BLOCK, 0, v->conv_base * GUEST_PAGE, CVMSTATE_PRIVATE);
  if (rc == 0) rc = cvmstate_convert(v->vm, BLOCK, GUEST_REQ, GUEST_PAGE, CVMSTATE_SHARED);
  if (rc == 0)
    rc = cvmstate_convert(v->vm, BLOCK, GUEST_RUNS, GUEST_RUNS_END - GUEST_RUNS, CVMSTATE_SHARED);
  if (rc != 0) say("initial state: %s", cvmstate_last_error());
  return rc;
}

static int start_vcpu_thread(struct vmm* v) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = kick_handler; /* no SA_RESTART: KVM_RUN returns EINTR */
  sigaction(SIGUSR1, &sa, NULL);
  int rc = pthread_create(&v->vcpu_thread, NULL, vcpu_main, v);
  if (rc != 0) say("pthread_create: %s", strerror(rc));
  return -rc;
}

static int cmd_run(struct vmm* v) {
  if (setup_vmm(v) != 0 || initial_state(v) != 0 || register_listeners(v) != 0 ||
      load_guest(v) != 0)
    return 1;
  say("guest: %" PRIu64 " MiB RAM, %u conversions, seed %u; pages from %#" PRIx64
      " are the guest's to convert",
      v->g.ram_size >> 20, v->opt.ops, v->opt.seed, v->conv_base);
  pthread_mutex_lock(&v->mu);
  int rc = checkpoint(v);
  v->migration_wanted = v->opt.migrate_to != NULL;
  pthread_mutex_unlock(&v->mu);
  if (rc != 0 || start_vcpu_thread(v) != 0) return 1;
  int outcome = MIGRATION_FAILED;
  if (v->opt.migrate_to != NULL) {
    pthread_mutex_lock(&v->mu);
    while (v->conversions < v->opt.migrate_after && !v->guest_done)
      pthread_cond_wait(&v->cv, &v->mu);
    int start = !v->guest_done;
    pthread_mutex_unlock(&v->mu);
    if (start) {
      outcome = migrate(v);
      if (outcome == MIGRATION_FAILED) say("the guest resumes here");
      /* Migrated or unknown: the vCPU thread ends without running again. */
      resume_vcpu(v, outcome != MIGRATION_FAILED);
    } else {
      say("migration: the guest finished before %" PRIu64 " conversions", v->opt.migrate_after);
    }
  }
  void* r = NULL;
  pthread_join(v->vcpu_thread, &r);
  /* Migrated: the destination owns the guest now; this side's checkpoint
   * stays as the last state it had. */
  if (outcome == MIGRATED) return 0;
  if (outcome == MIGRATION_UNKNOWN) return 1;
  return finish_guest(v);
}

/* ---- migration, destination side ------------------------------------------ */

struct in_channel {
  struct vmm* v;
  int fd;
  uint64_t state_left; /* bytes of the current STATE message not yet read */
  uint64_t ram_bytes, ram_messages;
  int have_vcpu;
  struct vcpu_message vcpu;
  double vcpu_at; /* when the vCPU state arrived (stop-and-copy under way) */
  char error[200];
};

static long dest_fail(struct in_channel* c, int rc, const char* what) {
  snprintf(c->error, sizeof c->error, "%s", what);
  return rc;
}

/* cvmstate's read: RAM and vCPU messages are applied as they pass. */
static long dest_read(void* o, void* buf, size_t size) {
  struct in_channel* c = o;
  while (c->state_left == 0) {
    struct msg_header h;
    int rc = channel_read(c->fd, &h, sizeof h);
    if (rc == -EPIPE) return 0;
    if (rc != 0)
      return dest_fail(c, rc,
                       rc == -ETIMEDOUT ? "the source went silent" : "reading from the source");
    if (h.type == MSG_PAGES) {
      if (h.count == 0 || h.count > CHANNEL_MAX_PAGES || h.arg % GUEST_PAGE != 0 ||
          h.arg >= c->v->g.ram_size || (uint64_t)h.count * GUEST_PAGE > c->v->g.ram_size - h.arg) {
        return dest_fail(c, -EBADMSG, "a RAM message outside guest RAM");
      }
      rc = channel_read(c->fd, c->v->g.ram + h.arg, (uint64_t)h.count * GUEST_PAGE);
      if (rc != 0) return dest_fail(c, rc, "reading RAM");
      c->ram_bytes += (uint64_t)h.count * GUEST_PAGE;
      c->ram_messages++;
    } else if (h.type == MSG_VCPU) {
      if (h.count != sizeof c->vcpu || c->have_vcpu)
        return dest_fail(c, -EBADMSG, "a malformed vCPU message");
      rc = channel_read(c->fd, &c->vcpu, sizeof c->vcpu);
      if (rc != 0) return dest_fail(c, rc, "reading the vCPU state");
      c->have_vcpu = 1;
      c->vcpu_at = wall();
    } else if (h.type == MSG_STATE) {
      if (h.arg == 0 || h.arg > CHANNEL_MAX_STATE)
        return dest_fail(c, -EBADMSG, "a malformed state message");
      c->state_left = h.arg;
    } else {
      return dest_fail(c, -EBADMSG, "an unknown message");
    }
  }
  size_t n = size < c->state_left ? size : (size_t)c->state_left;
  for (;;) {
    ssize_t r = recv(c->fd, buf, n, 0);
    if (r > 0) {
      c->state_left -= (uint64_t)r;
      return (long)r;
    }
    if (r == 0) return 0;
    if (errno != EINTR)
      return dest_fail(c, errno == EAGAIN ? -ETIMEDOUT : -errno, "reading the page states");
  }
}

static long dest_write(void* o, const void* buf, size_t size) {
  struct in_channel* c = o;
  int rc = channel_write(c->fd, buf, size);
  return rc < 0 ? rc : (long)size;
}

static int cmd_incoming(struct vmm* v) {
  char err[256];
  if (cvmstate_store_open(v->opt.db, &v->store) != 0) {
    say("store %s: %s", v->opt.db, cvmstate_last_error());
    return 1;
  }
  int port = 0;
  int lfd = channel_listen(v->opt.listen, &port, err, sizeof err);
  if (lfd < 0) {
    say("%s", err);
    return 1;
  }
  say("incoming: listening on port %d", port);
  int fd = channel_accept(lfd, v->opt.timeout, err, sizeof err);
  close(lfd);
  if (fd < 0) {
    say("incoming: %s", err);
    return 1;
  }
  struct msg_header h;
  struct hello hello;
  if (channel_read(fd, &h, sizeof h) != 0 || h.type != MSG_HELLO || h.count != sizeof hello ||
      channel_read(fd, &hello, sizeof hello) != 0 || hello.version != CHANNEL_VERSION ||
      hello.ram_size < (16u << 20) || hello.ram_size > (2ull << 30) ||
      hello.ram_size % (2u << 20) != 0) {
    say("incoming: the source did not say hello with a guest size from 16 MiB to 2 GiB");
    close(fd);
    return 1;
  }
  if ((hello.guest_flags & FLAG_HYPERCALL) && !v->probe.hypercall_works) {
    /* Refused before anything is received: the source resumes its guest. */
    say("incoming: the guest makes its conversions with KVM_HC_MAP_GPA_RANGE, which this host's "
        "KVM does "
        "not deliver (%s)",
        v->probe.hypercall_why);
    close(fd);
    return 1;
  }
  v->probe.hypercall_works = (hello.guest_flags & FLAG_HYPERCALL) != 0;
  v->opt.ram = hello.ram_size;
  if (setup_vmm(v) != 0) {
    close(fd);
    return 1;
  }
  struct in_channel in;
  memset(&in, 0, sizeof in);
  in.v = v;
  in.fd = fd;
  const cvmstate_io_v1 io = {sizeof io, dest_read, dest_write};
  cvmstate_destination* dst = NULL;
  cvmstate_vm* received = NULL;
  /* cvmstate's deadline bounds each frame's reads, and this channel
   * applies a round's RAM between two frames: allow the RAM at 10 MiB/s on
   * top of --timeout (the socket's own timeout still bounds every read). */
  const double state_timeout = v->opt.timeout + (double)v->g.ram_size / (10 << 20);
  int rc = cvmstate_destination_new_io_v1(&io, &in, v->opt.psk_file, state_timeout, &dst);
  double t_received = 0, t_committed = 0, t_replayed = 0, t_restored = 0;
  int committed = 0;
  char reason[300] = "";
  if (rc == 0) {
    rc = cvmstate_destination_receive(dst, &received);
    t_received = wall();
    if (rc != 0) {
      snprintf(reason, sizeof reason, "%s%s%s", cvmstate_last_error(), in.error[0] ? ": " : "",
               in.error);
    }
  } else {
    snprintf(reason, sizeof reason, "%s", cvmstate_last_error());
  }
  if (rc == 0 && v->opt.fault != NULL && strcmp(v->opt.fault, "no-answer") == 0) {
    /* A fault for the tests: the destination goes away with the whole
     * stream received, before it answers. */
    say("incoming: leaving without an answer (--fault no-answer)");
    cvmstate_vm_free(received);
    cvmstate_destination_free(dst);
    close(fd);
    return 1;
  }
  /* Verify what arrived against this side's RAM. */
  if (rc == 0) {
    uint32_t blocks = 0;
    cvmstate_block_info info;
    if (!in.have_vcpu) {
      rc = -EBADMSG;
      snprintf(reason, sizeof reason, "the stream ended without the vCPU state");
    } else if (cvmstate_vm_block_count(received, &blocks) != 0 || blocks != 1 ||
               read_block_info(received, &info) != 0 || strcmp(info.name, BLOCK) != 0 ||
               info.size != v->g.ram_size || info.page_size != GUEST_PAGE) {
      rc = -EBADMSG;
      snprintf(reason, sizeof reason,
               "the page states do not describe one %" PRIu64 "-byte block '%s'", v->g.ram_size,
               BLOCK);
    }
  }
  if (rc == 0) {
    cvmstate_vm_free(v->vm);
    v->vm = received;
    received = NULL;
    snprintf(v->vm_id, sizeof v->vm_id, "%s", cvmstate_destination_vm_id(dst));
    v->opt.vm_id = v->vm_id;
    rc = cvmstate_store_commit(v->store, v->opt.vm_id, v->vm);
    if (rc != 0) snprintf(reason, sizeof reason, "commit: %s", cvmstate_last_error());
    committed = rc == 0;
    t_committed = wall();
  }
  if (rc == 0) {
    /* Shared runs to the DMA listener, private runs to the attribute
     * listener (both replayed by registering), discarded RAM freed. */
    pthread_mutex_lock(&v->mu);
    rc = register_listeners(v);
    if (rc == 0) rc = cvmstate_listener_replay(v->vm, v->discard, CVMSTATE_DISCARDED);
    pthread_mutex_unlock(&v->mu);
    if (rc != 0) snprintf(reason, sizeof reason, "listener replay: %s", cvmstate_last_error());
    t_replayed = wall();
  }
  if (rc == 0) {
    rc = kvm_guest_restore_vcpu(&v->g, &in.vcpu.vcpu);
    if (rc != 0) snprintf(reason, sizeof reason, "vCPU restore: %s", strerror(-rc));
    t_restored = wall();
  }
  if (rc == 0) {
    rc = cvmstate_destination_ack(dst, 1, NULL);
    if (rc != 0) snprintf(reason, sizeof reason, "acknowledging: %s", cvmstate_last_error());
  } else if (dst != NULL) {
    if (cvmstate_destination_ack(dst, 0, reason) != 0) { /* the source may be gone already */
    }
  }
  if (rc != 0) {
    if (committed && cvmstate_store_delete(v->store, v->opt.vm_id) != 0) {
      say("incoming: removing the committed state: %s", cvmstate_last_error());
    }
    say("incoming: migration failed, nothing kept: %s", reason);
    cvmstate_destination_free(dst);
    cvmstate_vm_free(received);
    close(fd);
    return 1;
  }
  cvmstate_destination_free(dst);
  close(fd);
  v->conversions = in.vcpu.conversions;
  double resumed = wall();
  say("incoming: downtime %.1f ms: stop-and-copy transfer %.1f ms, verify %.2f ms, commit %.2f ms, "
      "listener "
      "replay %.2f ms, vCPU restore %.3f ms",
      (resumed - in.vcpu.paused_at) * 1e3, (in.vcpu_at - in.vcpu.paused_at) * 1e3,
      (t_received - in.vcpu_at) * 1e3, (t_committed - t_received) * 1e3,
      (t_replayed - t_committed) * 1e3, (t_restored - t_replayed) * 1e3);
  say("incoming: RAM received %" PRIu64 " MiB of the guest's %" PRIu64 " MiB (%.1f%%) in %" PRIu64
      " messages; resident after freeing discarded pages: %" PRIu64 " MiB",
      in.ram_bytes >> 20, v->g.ram_size >> 20, 100.0 * (double)in.ram_bytes / (double)v->g.ram_size,
      in.ram_messages, kvm_guest_resident_bytes(&v->g) >> 20);
  uint64_t before = v->conversions;
  if (start_vcpu_thread(v) != 0) return 1;
  pthread_join(v->vcpu_thread, NULL);
  say("incoming: the guest made %" PRIu64 " conversions here", v->conversions - before);
  return finish_guest(v);
}

/* ---- arguments ------------------------------------------------------------------ */

static int usage(const char* msg) {
  fprintf(
      stderr,
      "cvmstate-minivmm: %s\n"
      "usage: cvmstate-minivmm probe\n"
      "       cvmstate-minivmm run --ram SIZE --ops N --seed S [--db DIR --vm ID "
      "--checkpoint-every K]\n"
      "                            [--migrate-to HOST:PORT --migrate-after K --rounds R --psk-file "
      "F --timeout S]\n"
      "       cvmstate-minivmm incoming --listen HOST:PORT --db DIR [--psk-file F] [--timeout S]\n"
      "                            [--checkpoint-every K]\n",
      msg);
  return 2;
}

static int parse_u64(const char* s, uint64_t max, uint64_t* out) {
  char* end = NULL;
  errno = 0;
  if (s == NULL || *s < '0' || *s > '9') return -1;
  unsigned long long x = strtoull(s, &end, 10);
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10;
  if (*end == 'M' || *end == 'm') mul = 1ull << 20;
  if (*end == 'G' || *end == 'g') mul = 1ull << 30;
  if (mul != 1) end++;
  if (errno != 0 || *end != '\0' || x > max / mul) return -1;
  *out = x * mul;
  return 0;
}

static int parse(int argc, char** argv, struct options* o, char* msg, size_t n) {
  o->ram = 256ull << 20;
  o->ops = 10000;
  o->seed = 1;
  o->vm_id = "minivmm";
  o->rounds = 3;
  o->timeout = 30;
  for (int i = 2; i < argc; ++i) {
    const char* a = argv[i];
    const char* val = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t x = 0;
    if (val == NULL) {
      snprintf(msg, n, "%s needs a value", a);
      return -1;
    }
    ++i;
    if (strcmp(a, "--ram") == 0) {
      if (parse_u64(val, 2ull << 30, &x) != 0 || x < (16u << 20) || x % (2u << 20) != 0) {
        snprintf(msg, n, "--ram must be 16M to 2G, a multiple of 2M (got '%s')", val);
        return -1;
      }
      o->ram = x;
    } else if (strcmp(a, "--ops") == 0 || strcmp(a, "--seed") == 0) {
      /* The guest's record keeps a conversion number in 30 bits. */
      if (parse_u64(val, (1u << 30) - 1, &x) != 0) {
        snprintf(msg, n, "%s must be a number below 2^30 (got '%s')", a, val);
        return -1;
      }
      if (a[2] == 'o')
        o->ops = (uint32_t)x;
      else
        o->seed = (uint32_t)x;
    } else if (strcmp(a, "--checkpoint-every") == 0 || strcmp(a, "--migrate-after") == 0 ||
               strcmp(a, "--rounds") == 0 || strcmp(a, "--timeout") == 0) {
      if (parse_u64(val, 1u << 30, &x) != 0 || (a[2] == 'r' && (x < 1 || x > 100)) ||
          (a[2] == 't' && (x < 1 || x > 3600))) {
        snprintf(msg, n, "%s: bad value '%s'", a, val);
        return -1;
      }
      if (a[2] == 'c')
        o->checkpoint_every = x;
      else if (a[2] == 'm')
        o->migrate_after = x;
      else if (a[2] == 'r')
        o->rounds = (uint32_t)x;
      else
        o->timeout = (double)x;
    } else if (strcmp(a, "--db") == 0) {
      o->db = val;
    } else if (strcmp(a, "--vm") == 0) {
      o->vm_id = val;
    } else if (strcmp(a, "--migrate-to") == 0) {
      o->migrate_to = val;
    } else if (strcmp(a, "--listen") == 0) {
      o->listen = val;
    } else if (strcmp(a, "--psk-file") == 0) {
      o->psk_file = val;
    } else if (strcmp(a, "--fault") == 0) {
      if (strcmp(val, "state") != 0 && strcmp(val, "content") != 0 &&
          strcmp(val, "no-answer") != 0) {
        snprintf(msg, n, "--fault is 'state', 'content' or 'no-answer' (got '%s')", val);
        return -1;
      }
      o->fault = val;
    } else {
      snprintf(msg, n, "unknown option %s", a);
      return -1;
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  setvbuf(stderr, NULL, _IOLBF, 0);
  if (argc < 2) return usage("a command is needed");
  static struct vmm v;
  v.g.kvm_fd = v.g.vm_fd = v.g.vcpu_fd = v.g.ram_fd = -1; /* nothing to close yet */
  pthread_mutex_init(&v.mu, NULL);
  pthread_cond_init(&v.cv, NULL);
  char msg[256];
  const char* cmd = argv[1];
  if (strcmp(cmd, "probe") != 0 && strcmp(cmd, "run") != 0 && strcmp(cmd, "incoming") != 0) {
    return usage("the command is probe, run or incoming");
  }
  if (parse(argc, argv, &v.opt, msg, sizeof msg) != 0) return usage(msg);
  if (strcmp(cmd, "incoming") == 0 && (v.opt.listen == NULL || v.opt.db == NULL)) {
    return usage("incoming needs --listen and --db");
  }
  if (strcmp(cmd, "run") == 0 && v.opt.migrate_to == NULL && v.opt.migrate_after != 0) {
    return usage("--migrate-after needs --migrate-to");
  }
  char err[256], line[512];
  if (kvm_probe_host(&v.probe, err, sizeof err) != 0) {
    fprintf(stderr, "cvmstate-minivmm: KVM is not usable here: %s\n", err);
    return EXIT_SKIP;
  }
  kvm_probe_describe(&v.probe, line, sizeof line);
  if (strcmp(cmd, "probe") == 0) {
    printf("%s\n", line);
    return 0;
  }
  say("%s", line); /* what is in use, on every run */
  int rc = strcmp(cmd, "run") == 0 ? cmd_run(&v) : cmd_incoming(&v);
  if (v.store != NULL) cvmstate_store_close(v.store);
  cvmstate_vm_free(v.vm);
  kvm_guest_destroy(&v.g);
  return rc;
}

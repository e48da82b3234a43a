#define _GNU_SOURCE
#include "kvm_guest.h"

#include <asm/kvm_para.h>
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/kvm_para.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* Newer than Debian 12's kernel headers; the values are the kernel's ABI. */
#ifndef KVM_CAP_MEMORY_ATTRIBUTES
#define KVM_CAP_MEMORY_ATTRIBUTES 233
#endif
#ifndef KVM_CAP_GUEST_MEMFD
#define KVM_CAP_GUEST_MEMFD 234
#endif
#ifndef KVM_CAP_VM_TYPES
#define KVM_CAP_VM_TYPES 235
#endif
#define MINIVMM_KVM_X86_SW_PROTECTED_VM 1
#define KVM_MEMORY_ATTRIBUTE_PRIVATE_BIT (1ull << 3)

static int fail(char* err, size_t n, int e, const char* what) {
  snprintf(err, n, "%s: %s", what, strerror(e));
  return -e;
}

static void flat_segment(struct kvm_segment* s, uint16_t selector, uint8_t type) {
  memset(s, 0, sizeof *s);
  s->base = 0;
  s->limit = 0xffffffff;
  s->selector = selector;
  s->type = type;
  s->present = 1;
  s->dpl = 0;
  s->db = 1;
  s->s = 1;
  s->g = 1;
}

static int setup_flat32(int vcpu_fd, uint32_t rip, uint32_t rsp) {
  struct kvm_sregs sregs;
  if (ioctl(vcpu_fd, KVM_GET_SREGS, &sregs) < 0) return -errno;
  flat_segment(&sregs.cs, 0x8, 11); /* execute/read, accessed */
  flat_segment(&sregs.ds, 0x10, 3); /* read/write, accessed */
  sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
  sregs.cr0 |= 1; /* protected mode, no paging */
  if (ioctl(vcpu_fd, KVM_SET_SREGS, &sregs) < 0) return -errno;
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = rip;
  regs.rsp = rsp;
  regs.rflags = 2;
  if (ioctl(vcpu_fd, KVM_SET_REGS, &regs) < 0) return -errno;
  return 0;
}

static void probe_alarm(int sig) { (void)sig; }

/* Runs `mov eax,12; mov ebx,0; mov ecx,1; mov edx,0x10; vm(m)call; hlt`
 * in a throwaway VM and reports whether it came out as the hypercall. */
static void probe_hypercall(int kvm_fd, struct kvm_probe* p) {
  p->hypercall_works = 0;
  int vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
  if (vm < 0) {
    snprintf(p->hypercall_why, sizeof p->hypercall_why, "KVM_CREATE_VM: %s", strerror(errno));
    return;
  }
  uint8_t* mem = MAP_FAILED;
  int vcpu = -1;
  struct kvm_run* run = MAP_FAILED;
  size_t run_size = 0;
  struct kvm_enable_cap cap;
  memset(&cap, 0, sizeof cap);
  cap.cap = KVM_CAP_EXIT_HYPERCALL;
  cap.args[0] = 1ull << KVM_HC_MAP_GPA_RANGE;
  if (ioctl(vm, KVM_ENABLE_CAP, &cap) < 0) {
    snprintf(p->hypercall_why, sizeof p->hypercall_why, "KVM_ENABLE_CAP(EXIT_HYPERCALL): %s",
             strerror(errno));
    goto out;
  }
  mem = mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) goto out;
  static const uint8_t code[] = {0xb8, 12, 0, 0,    0,    0xbb, 0, 0x10, 0,    0,    0xb9, 1,
                                 0,    0,  0, 0xba, 0x10, 0,    0, 0,    0x0f, 0x01, 0xd9, 0xf4};
  memcpy(mem, code, sizeof code);
  if (!p->amd) mem[22] = 0xc1; /* vmcall */
  struct kvm_userspace_memory_region region = {0, 0, 0, 0x2000, (uint64_t)(uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) goto out;
  ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul);
  vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) goto out;
  run_size = (size_t)ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED || setup_flat32(vcpu, 0, 0x1000) != 0) goto out;
  /* Some KVMs (this one's PVM flavour, seen here) re-execute the call
   * forever instead of exiting: give it 300 ms. */
  struct sigaction sa, old_sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = probe_alarm; /* no SA_RESTART: KVM_RUN returns EINTR */
  sigaction(SIGALRM, &sa, &old_sa);
  struct itimerval timer = {{0, 0}, {0, 300000}}, off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &timer, NULL);
  int rc = ioctl(vcpu, KVM_RUN, 0);
  int e = errno;
  setitimer(ITIMER_REAL, &off, NULL);
  sigaction(SIGALRM, &old_sa, NULL);
  if (rc < 0) {
    if (e == EINTR) {
      snprintf(p->hypercall_why, sizeof p->hypercall_why,
               "a %s in a probe guest did not exit within 300 ms", p->amd ? "vmmcall" : "vmcall");
    } else {
      snprintf(p->hypercall_why, sizeof p->hypercall_why, "KVM_RUN: %s", strerror(e));
    }
    goto out;
  }
  if (run->exit_reason == KVM_EXIT_HYPERCALL && run->hypercall.nr == KVM_HC_MAP_GPA_RANGE &&
      run->hypercall.args[0] == 0x1000 && run->hypercall.args[1] == 1) {
    p->hypercall_works = 1;
  } else {
    snprintf(p->hypercall_why, sizeof p->hypercall_why,
             "the probe guest's %s exited with reason %u", p->amd ? "vmmcall" : "vmcall",
             run->exit_reason);
  }
out:
  if (run != MAP_FAILED) munmap(run, run_size);
  if (vcpu >= 0) close(vcpu);
  close(vm);
  if (mem != MAP_FAILED) munmap(mem, 0x2000);
}

int kvm_probe_host(struct kvm_probe* p, char* err, size_t n) {
  memset(p, 0, sizeof *p);
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return fail(err, n, errno, "/dev/kvm");
  p->api_version = ioctl(kvm, KVM_GET_API_VERSION, 0);
  if (p->api_version != KVM_API_VERSION) {
    close(kvm);
    snprintf(err, n, "/dev/kvm: API version %d, expected %d", p->api_version, KVM_API_VERSION);
    return -ENOTSUP;
  }
  unsigned a, b, c, d;
  __cpuid(0, a, b, c, d);
  p->amd = b == 0x68747541; /* "Auth" */
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) {
    int e = errno;
    close(kvm);
    return fail(err, n, e, "KVM_CREATE_VM");
  }
  int mask = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_EXIT_HYPERCALL);
  p->exit_hypercall = mask > 0 && (mask & (1 << KVM_HC_MAP_GPA_RANGE)) != 0;
  int attrs = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_MEMORY_ATTRIBUTES);
  p->memory_attributes = attrs > 0 && (attrs & KVM_MEMORY_ATTRIBUTE_PRIVATE_BIT) != 0;
  p->guest_memfd = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD) > 0;
  int types = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES);
  p->sw_protected_vm = types > 0 && (types & (1 << MINIVMM_KVM_X86_SW_PROTECTED_VM)) != 0;
  close(vm);
  if (p->exit_hypercall) {
    probe_hypercall(kvm, p);
  } else {
    snprintf(p->hypercall_why, sizeof p->hypercall_why,
             "KVM_CAP_EXIT_HYPERCALL lacks KVM_HC_MAP_GPA_RANGE");
  }
  close(kvm);
  return 0;
}

void kvm_probe_describe(const struct kvm_probe* p, char* out, size_t size) {
  char conv[192];
  if (p->hypercall_works) {
    snprintf(conv, sizeof conv,
             "shared/private through KVM_HC_MAP_GPA_RANGE (%s exit), discards through port I/O",
             p->amd ? "vmmcall" : "vmcall");
  } else {
    snprintf(conv, sizeof conv, "every conversion through port I/O (hypercall exit unusable: %s)",
             p->hypercall_why);
  }
  snprintf(
      out, size,
      "kvm: %s; memory attributes %s (private attributes recorded by the VMM); guest_memfd %s, "
      "sw-protected VM type %s (not used: RAM is a memfd the VMM reads for migration)",
      conv, p->memory_attributes ? "supported" : "not supported on the default VM type",
      p->guest_memfd ? "supported" : "not supported",
      p->sw_protected_vm ? "supported" : "not supported");
}

int kvm_guest_create(struct kvm_guest* g, uint64_t ram_size, int hypercall, char* err, size_t n) {
  memset(g, 0, sizeof *g);
  g->kvm_fd = g->vm_fd = g->vcpu_fd = g->ram_fd = -1;
  g->ram = MAP_FAILED;
  g->run = MAP_FAILED;
  g->ram_size = ram_size;
  int rc;
  g->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (g->kvm_fd < 0) return fail(err, n, errno, "/dev/kvm");
  g->vm_fd = ioctl(g->kvm_fd, KVM_CREATE_VM, 0);
  if (g->vm_fd < 0) return fail(err, n, errno, "KVM_CREATE_VM");
  if (hypercall) {
    struct kvm_enable_cap cap;
    memset(&cap, 0, sizeof cap);
    cap.cap = KVM_CAP_EXIT_HYPERCALL;
    cap.args[0] = 1ull << KVM_HC_MAP_GPA_RANGE;
    if (ioctl(g->vm_fd, KVM_ENABLE_CAP, &cap) < 0)
      return fail(err, n, errno, "KVM_ENABLE_CAP(EXIT_HYPERCALL)");
  }
  ioctl(g->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul); /* VMX wants it; harmless elsewhere */
  g->ram_fd = memfd_create("minivmm-ram", MFD_CLOEXEC);
  if (g->ram_fd < 0) return fail(err, n, errno, "memfd_create");
  if (ftruncate(g->ram_fd, (off_t)ram_size) < 0) return fail(err, n, errno, "ftruncate(guest RAM)");
  g->ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, g->ram_fd, 0);
  if (g->ram == MAP_FAILED) return fail(err, n, errno, "mmap(guest RAM)");
  if ((rc = kvm_guest_set_dirty_logging(g, 0)) != 0)
    return fail(err, n, -rc, "KVM_SET_USER_MEMORY_REGION");
  g->vcpu_fd = ioctl(g->vm_fd, KVM_CREATE_VCPU, 0);
  if (g->vcpu_fd < 0) return fail(err, n, errno, "KVM_CREATE_VCPU");
  long run_size = ioctl(g->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size <= 0) return fail(err, n, errno, "KVM_GET_VCPU_MMAP_SIZE");
  g->run_size = (size_t)run_size;
  g->run = mmap(NULL, g->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, g->vcpu_fd, 0);
  if (g->run == MAP_FAILED) return fail(err, n, errno, "mmap(kvm_run)");
  return 0;
}

void kvm_guest_destroy(struct kvm_guest* g) {
  if (g->run != MAP_FAILED && g->run != NULL) munmap(g->run, g->run_size);
  if (g->vcpu_fd >= 0) close(g->vcpu_fd);
  if (g->vm_fd >= 0) close(g->vm_fd);
  if (g->ram != MAP_FAILED && g->ram != NULL) munmap(g->ram, g->ram_size);
  if (g->ram_fd >= 0) close(g->ram_fd);
  if (g->kvm_fd >= 0) close(g->kvm_fd);
  memset(g, 0, sizeof *g);
  g->kvm_fd = g->vm_fd = g->vcpu_fd = g->ram_fd = -1;
}

int kvm_guest_reset_vcpu(struct kvm_guest* g, uint32_t rip, uint32_t rsp) {
  return setup_flat32(g->vcpu_fd, rip, rsp);
}

int kvm_guest_save_vcpu(struct kvm_guest* g, struct kvm_vcpu_state* s) {
  if (ioctl(g->vcpu_fd, KVM_GET_REGS, &s->regs) < 0) return -errno;
  if (ioctl(g->vcpu_fd, KVM_GET_SREGS, &s->sregs) < 0) return -errno;
  return 0;
}

int kvm_guest_restore_vcpu(struct kvm_guest* g, const struct kvm_vcpu_state* s) {
  if (ioctl(g->vcpu_fd, KVM_SET_SREGS, &s->sregs) < 0) return -errno;
  if (ioctl(g->vcpu_fd, KVM_SET_REGS, &s->regs) < 0) return -errno;
  return 0;
}

int kvm_guest_set_dirty_logging(struct kvm_guest* g, int on) {
  struct kvm_userspace_memory_region region = {0, on ? KVM_MEM_LOG_DIRTY_PAGES : 0, 0, g->ram_size,
                                               (uint64_t)(uintptr_t)g->ram};
  if (ioctl(g->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) return -errno;
  g->dirty_logging = on;
  return 0;
}

int kvm_guest_get_dirty_log(struct kvm_guest* g, uint64_t* bitmap) {
  struct kvm_dirty_log log;
  memset(&log, 0, sizeof log);
  log.slot = 0;
  log.dirty_bitmap = bitmap;
  if (ioctl(g->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) return -errno;
  return 0;
}

int kvm_guest_punch_hole(struct kvm_guest* g, uint64_t offset, uint64_t size) {
  if (fallocate(g->ram_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)size) <
      0)
    return -errno;
  return 0;
}

uint64_t kvm_guest_resident_bytes(const struct kvm_guest* g) {
  struct stat st;
  if (fstat(g->ram_fd, &st) < 0) return 0;
  return (uint64_t)st.st_blocks * 512;
}

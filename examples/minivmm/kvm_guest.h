/*
 * The KVM side of minivmm: one VM with one vCPU in flat 32-bit protected
 * mode, its RAM a memfd mapped into the VMM, and the probes of what this
 * host's KVM offers for confidential-VM style conversions.
 */
#ifndef MINIVMM_KVM_GUEST_H_
#define MINIVMM_KVM_GUEST_H_

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

/* What KVM offers here, read once at start-up. */
struct kvm_probe {
  int api_version;
  int amd;                 /* AuthenticAMD: vmmcall, else vmcall */
  int exit_hypercall;      /* KVM_CAP_EXIT_HYPERCALL can carry KVM_HC_MAP_GPA_RANGE */
  int hypercall_works;     /* a protected-mode guest's hypercall reached us */
  int memory_attributes;   /* KVM_CAP_MEMORY_ATTRIBUTES on the default VM type */
  int guest_memfd;         /* KVM_CAP_GUEST_MEMFD */
  int sw_protected_vm;     /* KVM_CAP_VM_TYPES lists KVM_X86_SW_PROTECTED_VM */
  char hypercall_why[128]; /* why the hypercall is not used, if not */
};

/* -1 with errno and a message in err if /dev/kvm is missing or unusable. */
int kvm_probe_host(struct kvm_probe* probe, char* err, size_t err_size);
/* One line saying what is in use. */
void kvm_probe_describe(const struct kvm_probe* probe, char* out, size_t size);

struct kvm_guest {
  int kvm_fd, vm_fd, vcpu_fd;
  struct kvm_run* run;
  size_t run_size;
  int ram_fd;   /* the memfd backing guest RAM */
  uint8_t* ram; /* its mapping in the VMM */
  uint64_t ram_size;
  int dirty_logging;
};

/* Creates the VM, its RAM (a memfd of ram_size bytes mapped at guest
 * physical 0) and its vCPU; enables the hypercall exit if `hypercall`.
 * 0, or -errno with a message in err. */
int kvm_guest_create(struct kvm_guest* g, uint64_t ram_size, int hypercall, char* err,
                     size_t err_size);
void kvm_guest_destroy(struct kvm_guest* g);

/* Puts the vCPU at the start of flat 32-bit protected mode: rip, rsp. */
int kvm_guest_reset_vcpu(struct kvm_guest* g, uint32_t rip, uint32_t rsp);

/* The vCPU state a live migration carries. */
struct kvm_vcpu_state {
  struct kvm_regs regs;
  struct kvm_sregs sregs;
};
int kvm_guest_save_vcpu(struct kvm_guest* g, struct kvm_vcpu_state* s);
int kvm_guest_restore_vcpu(struct kvm_guest* g, const struct kvm_vcpu_state* s);

/* Dirty-page logging of guest RAM (KVM_MEM_LOG_DIRTY_PAGES). */
int kvm_guest_set_dirty_logging(struct kvm_guest* g, int on);
/* Fetches and clears the dirty bitmap (one bit a page; bitmap holds
 * ram_size / 4096 bits rounded up to 64). */
int kvm_guest_get_dirty_log(struct kvm_guest* g, uint64_t* bitmap);

/* Frees the RAM of [offset, offset+size): fallocate(PUNCH_HOLE). */
int kvm_guest_punch_hole(struct kvm_guest* g, uint64_t offset, uint64_t size);
/* Bytes of RAM the host really holds for the guest (the memfd's blocks). */
uint64_t kvm_guest_resident_bytes(const struct kvm_guest* g);

#endif /* MINIVMM_KVM_GUEST_H_ */

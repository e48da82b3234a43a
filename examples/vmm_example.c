/*
 * A small VMM using the cvmstate C API: it handles the guest's page
 * conversion exits, keeps a VFIO-like DMA listener and a KVM-like
 * memory-attribute listener in step, checkpoints, and migrates the state to
 * a second process over a socketpair, which commits it, rebuilds its DMA
 * mappings and acknowledges. Exits 0 only if both sides end up equal.
 */
#define _GNU_SOURCE
#include <cvmstate/cvmstate.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define GIB (1ull << 30)
#define MIB (1ull << 20)

struct vfio {
  uint64_t mappings, limit, mapped_bytes;
};

static int vfio_map(void* opaque, uint64_t offset, uint64_t size) {
  struct vfio* v = opaque;
  (void)offset;
  if (v->mappings + 1 > v->limit) return -ENOSPC; /* as type1's dma_entry_limit */
  v->mappings++;
  v->mapped_bytes += size;
  return 0;
}

static void vfio_unmap(void* opaque, uint64_t offset, uint64_t size) {
  struct vfio* v = opaque;
  (void)offset;
  v->mappings--;
  v->mapped_bytes -= size;
}

struct kvm {
  uint64_t private_bytes;
};

static int kvm_set_private(void* opaque, uint64_t offset, uint64_t size) {
  (void)offset;
  ((struct kvm*)opaque)->private_bytes += size;
  return 0;
}

static void kvm_clear_private(void* opaque, uint64_t offset, uint64_t size) {
  (void)offset;
  ((struct kvm*)opaque)->private_bytes -= size;
}

static int add_bytes(void* opaque, uint64_t offset, uint64_t size, int state) {
  (void)offset;
  (void)state;
  *(uint64_t*)opaque += size;
  return 0;
}

static uint64_t bytes_in(const cvmstate_vm* vm, const char* block, uint64_t size, int state) {
  uint64_t n = 0;
  cvmstate_for_each_run(vm, block, 0, size, state, add_bytes, &n);
  return n;
}

static int check(int rc, const char* what) {
  if (rc < 0) {
    fprintf(stderr, "vmm_example: %s: %s (%d)\n", what, cvmstate_last_error(), rc);
    exit(1);
  }
  return rc;
}

/* A guest's conversion exits: accept memory, share SWIOTLB, DMA churn. */
static void run_guest(cvmstate_vm* vm, uint64_t* seed, int exits) {
  for (int i = 0; i < exits; ++i) {
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t r = *seed >> 16;
    uint64_t page = (r % (4 * GIB / 4096 - 16)) * 4096;
    if (i % 3 == 0) {
      check(cvmstate_convert(vm, "pc.ram", page & ~(2 * MIB - 1), 2 * MIB, CVMSTATE_PRIVATE), "accept");
    } else if (i % 3 == 1) {
      check(cvmstate_convert(vm, "pc.ram", page, 4096 * (1 + r % 16), CVMSTATE_SHARED), "share");
    } else {
      check(cvmstate_convert(vm, "pc.ram", page, 4096, (r & 1) ? CVMSTATE_PRIVATE : CVMSTATE_DISCARDED), "unshare");
    }
  }
}

static int destination(int fd, const char* db) {
  cvmstate_destination* dst;
  cvmstate_vm* vm;
  cvmstate_store* store;
  check(cvmstate_destination_new_fd(fd, NULL, 30, &dst), "destination");
  check(cvmstate_destination_receive(dst, &vm), "receive");
  check(cvmstate_store_open(db, &store), "open destination store");
  check(cvmstate_store_commit(store, cvmstate_destination_vm_id(dst), vm), "commit");
  /* Rebuild DMA mappings and memory attributes before the guest resumes. */
  struct vfio v = {0, 65535, 0};
  struct kvm k = {0};
  cvmstate_dma_ops dma = {vfio_map, vfio_unmap, 0, 1};
  cvmstate_attr_ops attr = {kvm_set_private, kvm_clear_private, 0};
  cvmstate_listener *l1, *l2;
  check(cvmstate_register_dma_listener(vm, "pc.ram", 0, 4 * GIB, &dma, &v, &l1), "dma listener");
  check(cvmstate_register_attr_listener(vm, "pc.ram", 0, 4 * GIB, &attr, &k, &l2), "attr listener");
  if (v.mapped_bytes != bytes_in(vm, "pc.ram", 4 * GIB, CVMSTATE_SHARED) ||
      k.private_bytes != bytes_in(vm, "pc.ram", 4 * GIB, CVMSTATE_PRIVATE)) {
    cvmstate_destination_ack(dst, 0, "listeners disagree with the state");
    return 1;
  }
  check(cvmstate_destination_ack(dst, 1, "ready"), "ack");
  printf("destination: %llu DMA mappings rebuilt, ready\n", (unsigned long long)v.mappings);
  fflush(stdout); /* the child leaves with _exit */
  cvmstate_unregister_listener(vm, l1);
  cvmstate_unregister_listener(vm, l2);
  cvmstate_store_close(store);
  cvmstate_vm_free(vm);
  cvmstate_destination_free(dst);
  return 0;
}

int main(void) {
  char dir[] = "/tmp/cvmstate-example-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  char src_db[128], dst_db[128];
  snprintf(src_db, sizeof src_db, "%s/src", dir);
  snprintf(dst_db, sizeof dst_db, "%s/dst", dir);
  printf("cvmstate %u.%u.%u\n", cvmstate_version() >> 16, (cvmstate_version() >> 8) & 255, cvmstate_version() & 255);

  cvmstate_vm* vm = cvmstate_vm_new();
  check(cvmstate_vm_add_block(vm, "pc.bios", 4 * MIB, 4096, CVMSTATE_PRIVATE), "block");
  check(cvmstate_vm_add_block(vm, "pc.ram", 4 * GIB, 4096, CVMSTATE_DISCARDED), "block");
  if (cvmstate_vm_add_block(vm, "pc.ram", 4096, 4096, CVMSTATE_SHARED) != -EEXIST) return 1;
  if (cvmstate_convert(vm, "pc.ram", 2048, 4096, CVMSTATE_SHARED) != -EINVAL) return 1;

  struct vfio v = {0, 65535, 0};
  struct kvm k = {0};
  cvmstate_dma_ops dma = {vfio_map, vfio_unmap, 0, 0};
  cvmstate_attr_ops attr = {kvm_set_private, kvm_clear_private, 0};
  cvmstate_listener *l1, *l2;
  check(cvmstate_register_dma_listener(vm, "pc.ram", 0, 4 * GIB, &dma, &v, &l1), "dma listener");
  check(cvmstate_register_attr_listener(vm, "pc.ram", 0, 4 * GIB, &attr, &k, &l2), "attr listener");

  uint64_t seed = 42;
  check(cvmstate_convert(vm, "pc.ram", 1 * GIB, 64 * MIB, CVMSTATE_SHARED), "swiotlb");
  run_guest(vm, &seed, 3000);
  /* A listener that refuses: the conversion is rolled back, its code returned. */
  uint64_t limit = v.limit;
  v.limit = v.mappings;
  int state_before = cvmstate_state_at(vm, "pc.ram", 3 * GIB);
  int rc = cvmstate_convert(vm, "pc.ram", 3 * GIB, 8192, CVMSTATE_SHARED);
  if (state_before != CVMSTATE_SHARED && (rc != -ENOSPC || cvmstate_state_at(vm, "pc.ram", 3 * GIB) != state_before)) {
    fprintf(stderr, "refusal not rolled back (rc %d)\n", rc);
    return 1;
  }
  v.limit = limit;
  if (v.mapped_bytes != bytes_in(vm, "pc.ram", 4 * GIB, CVMSTATE_SHARED) ||
      k.private_bytes != bytes_in(vm, "pc.ram", 4 * GIB, CVMSTATE_PRIVATE)) {
    fprintf(stderr, "listeners out of step with the state\n");
    return 1;
  }
  printf("source: %llu DMA mappings for %llu shared bytes\n", (unsigned long long)v.mappings,
         (unsigned long long)v.mapped_bytes);

  cvmstate_store* store;
  uint64_t bytes;
  check(cvmstate_store_open(src_db, &store), "open store");
  check(cvmstate_checkpoint(store, vm, "guest", &bytes), "checkpoint");
  printf("checkpoint: %llu bytes\n", (unsigned long long)bytes);
  run_guest(vm, &seed, 100);
  check(cvmstate_checkpoint(store, vm, "guest", &bytes), "checkpoint");
  printf("incremental checkpoint: %llu bytes\n", (unsigned long long)bytes);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 1;
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    _exit(destination(sv[1], dst_db));
  }
  close(sv[1]);
  cvmstate_source* src;
  check(cvmstate_source_new_fd(vm, "guest", sv[0], NULL, &src), "source");
  check(cvmstate_source_begin(src, &bytes), "round 0");
  run_guest(vm, &seed, 200); /* the guest keeps converting during pre-copy */
  check(cvmstate_source_round(src, &bytes), "pre-copy round");
  run_guest(vm, &seed, 50);
  check(cvmstate_source_finish(src, &bytes), "stop-and-copy");
  for (uint32_t r = 0; r < cvmstate_source_rounds(src); ++r) {
    printf("round %u: %llu bytes\n", r, (unsigned long long)cvmstate_source_round_bytes(src, r));
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;

  cvmstate_store* dst;
  cvmstate_vm* moved;
  uint64_t a, b;
  check(cvmstate_store_open(dst_db, &dst), "open destination store");
  check(cvmstate_store_load(dst, "guest", &moved), "load destination");
  check(cvmstate_vm_digest(vm, &a), "digest");
  check(cvmstate_vm_digest(moved, &b), "digest");
  printf("%s\n", a == b ? "destination equals source: OK" : "MISMATCH");

  cvmstate_source_free(src);
  cvmstate_unregister_listener(vm, l1);
  cvmstate_unregister_listener(vm, l2);
  cvmstate_vm_free(moved);
  cvmstate_vm_free(vm);
  cvmstate_store_close(dst);
  cvmstate_store_close(store);
  close(sv[0]);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) return 1;
  return a == b ? 0 : 1;
}

/*
 * cvmstate C API: the page-state store for live migration of confidential
 * VMs, for VMMs written in C (QEMU) or binding C headers (Cloud Hypervisor).
 *
 * Conventions
 *  - Plain C11, opaque handles, fixed-width integers.
 *  - Functions returning int return 0 (or a non-negative value where said)
 *    on success and a negative errno value on failure; cvmstate_last_error()
 *    then returns a one-line message for the calling thread (names and
 *    other strings the caller passed appear in it quoted and escaped).
 *  - A pointer argument not documented as optional must not be NULL: a
 *    NULL one is refused with -EINVAL ("null argument: NAME").
 *  - No C++ exception ever crosses this boundary.
 *
 * Thread-safety
 *  - cvmstate_version and cvmstate_last_error: any thread, any time (the
 *    message is per thread).
 *  - A cvmstate_vm, its listeners, and a source or destination working on
 *    it: one thread at a time (the caller serializes; listener callbacks run
 *    on the calling thread, and must not call back into the same vm).
 *    Different vms may be used from different threads at once.
 *  - cvmstate_source_cancel and cvmstate_destination_cancel: any thread, any
 *    time between the handle's _new and its _free, also while another
 *    thread is inside a call on the same handle (that is what they are for).
 *  - A cvmstate_store may be shared by threads: cvmstate_checkpoint,
 *    cvmstate_store_load, cvmstate_store_commit and cvmstate_store_delete
 *    of different VM ids may run concurrently on it (a delete waits for the
 *    checkpoints in flight of the vms checkpointed to this store).
 *
 * Error codes, one per kind of failure (never derived from a message):
 * Versions: 0.1 is the v0 API; 0.2 adds the v1 calls (marked "v1" below),
 * every v0 call unchanged in source and binary; 0.3 adds the discard
 * listener (cvmstate_register_discard_listener_v1) and
 * cvmstate_source_end_sent; 0.4 redefines the value of cvmstate_vm_digest;
 * 0.5 adds cvmstate_get_runs. Structs that may grow
 * carry a leading struct_size the caller sets to sizeof (the _v1 structs,
 * cvmstate_block_info): the library reads or writes only that many bytes,
 * and refuses (-EINVAL) a size below the first version's, or a larger
 * size whose bytes beyond what it knows are not all zero.
 *
 * -EINVAL invalid argument or range, -ENOENT no such block, VM or listener,
 * -EEXIST name or VM id taken, -EBADMSG corrupted data or stream, -EIO I/O
 * failure, -ETIMEDOUT a wait ran past its deadline, -EACCES authentication
 * failed or the peer refused, -ECANCELED cancelled, -EBADF a file
 * descriptor that is not open, -ENOMEM; a refusing listener's own
 * (negative) code is returned as is.
 */
#ifndef CVMSTATE_CVMSTATE_H_
#define CVMSTATE_CVMSTATE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define CVMSTATE_API __attribute__((visibility("default")))
#else
#define CVMSTATE_API
#endif

#define CVMSTATE_VERSION_MAJOR 0
#define CVMSTATE_VERSION_MINOR 5
#define CVMSTATE_VERSION_PATCH 0
#define CVMSTATE_VERSION ((CVMSTATE_VERSION_MAJOR << 16) | (CVMSTATE_VERSION_MINOR << 8) | CVMSTATE_VERSION_PATCH)

/* The largest timeout a call accepts, in seconds (about 11.6 days): every
 * timeout must be finite, above 0 and at most this, else -EINVAL. */
#define CVMSTATE_MAX_TIMEOUT_SECONDS 1e6

/* The version of the library at run time, as CVMSTATE_VERSION. */
CVMSTATE_API uint32_t cvmstate_version(void);
/* The message of the last failing call on this thread ("" if none). The
 * pointer is valid until the next call on this thread. */
CVMSTATE_API const char* cvmstate_last_error(void);

enum cvmstate_page_state {
  CVMSTATE_SHARED = 0,     /* host-visible: DMA-mapped for assigned devices */
  CVMSTATE_PRIVATE = 1,    /* guest-owned (guest_memfd private) */
  CVMSTATE_DISCARDED = 2,  /* no backing: unaccepted, ballooned, unplugged */
  CVMSTATE_MIXED = 3       /* v1: cvmstate_range_state's answer for a range in more than one state */
};

typedef struct cvmstate_vm cvmstate_vm;
typedef struct cvmstate_listener cvmstate_listener;
typedef struct cvmstate_store cvmstate_store;
typedef struct cvmstate_source cvmstate_source;
typedef struct cvmstate_destination cvmstate_destination;

/* ---- VM state ---------------------------------------------------------- */

/* A new VM with no blocks; NULL if out of memory. Free with cvmstate_vm_free
 * (after unregistering its listeners; listeners still registered are freed
 * with it, untold, and their handles become invalid). */
CVMSTATE_API cvmstate_vm* cvmstate_vm_new(void);
CVMSTATE_API void cvmstate_vm_free(cvmstate_vm* vm);

/* Declares a RAM block: name [A-Za-z0-9._:/-]{1,64}, page_size a power of two
 * from 4 KiB to 1 GiB, size a positive multiple of it, initial a
 * cvmstate_page_state. -EINVAL, -EEXIST. */
CVMSTATE_API int cvmstate_vm_add_block(cvmstate_vm* vm, const char* name, uint64_t size, uint64_t page_size,
                                       int initial);

/* Converts bytes [offset, offset+size) of block to state: what a VMM does on
 * a KVM_EXIT_MEMORY_FAULT / page-conversion exit. Listeners are told per
 * maximal changed run; if one refuses, all are rolled back, the state is
 * unchanged, and its code is returned. -EINVAL (unaligned, empty, out of
 * bounds, or the part of the range inside a listener's section not aligned
 * to its granularity), -ENOENT (no such block). */
CVMSTATE_API int cvmstate_convert(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size, int state);

/* The state of the page holding byte offset (>= 0), or -ENOENT / -EINVAL. */
CVMSTATE_API int cvmstate_state_at(const cvmstate_vm* vm, const char* block, uint64_t offset);

/* Called for each maximal run; return non-zero to stop. */
typedef int (*cvmstate_run_fn)(void* opaque, uint64_t offset, uint64_t size, int state);

/* Calls fn for each maximal run intersecting [offset, offset+size) of block,
 * ascending, each clipped exactly to [offset, offset+size) (bounds need not
 * be page aligned: the first and last runs may start or end inside a page);
 * only runs in `state` unless state is -1. With a state, the other states'
 * runs are skipped without a step each (their state bytes are compared 64
 * at a time). size 0 reports nothing. Returns 0, or fn's non-zero value if it stopped,
 * or -ENOENT / -EINVAL (the range not inside the block). */
CVMSTATE_API int cvmstate_for_each_run(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                       int state, cvmstate_run_fn fn, void* opaque);

/* 0.5. Bytes [offset, offset+size) of a block. */
typedef struct cvmstate_range {
  uint64_t offset;
  uint64_t size;
} cvmstate_range;

/* 0.5. The runs cvmstate_for_each_run reports for one state (0..2), written
 * to runs[0 .. *count) instead of a call each: what a destination hands
 * to VFIO_IOMMU_MAP_DMA or KVM_SET_MEMORY_ATTRIBUTES a buffer at a time.
 * At most `capacity` runs (>= 1). Returns 0 when these are all of them, 1
 * when more remain: call again from the end of the last one written
 * (offset = runs[*count-1].offset + runs[*count-1].size, size shortened to
 * keep the same end); that run was maximal, so the next call starts with
 * the next run, never a piece of it. With room for 256 runs or more it
 * is cheaper per run than cvmstate_for_each_run: the runs are gathered
 * 256 at a time, and on CPUs with AVX-512 a list chunk's runs of the state
 * 32 at a time; a smaller buffer gets them one at a time, and a call then
 * costs what it returns. On an error *count is 0 and runs is left as it
 * was. -ENOENT, -EINVAL (state not 0..2, capacity 0, the range not inside
 * the block, a NULL pointer). */
CVMSTATE_API int cvmstate_get_runs(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                   int state, cvmstate_range* runs, size_t capacity, size_t* count);

/* A 64-bit digest of the whole state: equal digests, equal states. Its
 * definition is docs/stream-format.md section 4 since 0.4 (stream format 2:
 * a sum of per-chunk terms, kept up to date by the library); 0.3 and
 * earlier computed another value for the same state, so compare digests
 * from one version. */
CVMSTATE_API int cvmstate_vm_digest(const cvmstate_vm* vm, uint64_t* digest);

/* v1. The one state of every page holding a byte of [offset, offset+size)
 * of block in *state, or CVMSTATE_MIXED if they differ: QEMU's
 * is_populated (*state == CVMSTATE_SHARED) and is_discarded in one call.
 * Costs the runs it looks at, up to the second state met. -ENOENT,
 * -EINVAL (size 0, or the range not inside the block). */
CVMSTATE_API int cvmstate_range_state(const cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                      int* state);

/* v1. What a VM holds, for a destination to check the layout it received
 * against its own RAM. Blocks are numbered 0 .. count-1 in the order they
 * were added (for a received or loaded vm: the source's order). */
CVMSTATE_API int cvmstate_vm_block_count(const cvmstate_vm* vm, uint32_t* count);

typedef struct cvmstate_block_info {
  size_t struct_size;  /* set by the caller: sizeof(cvmstate_block_info) */
  const char* name;    /* valid until the vm is freed */
  uint64_t size;       /* bytes */
  uint64_t page_size;  /* bytes */
  uint64_t bytes[3];   /* bytes in each state, indexed by cvmstate_page_state */
} cvmstate_block_info;

/* v1. Fills *info for block `index` (O(1): the per-state bytes are kept up
 * to date on every conversion). -ENOENT for an index past the last block;
 * -EINVAL for a struct_size as the conventions above say. */
CVMSTATE_API int cvmstate_vm_block_info(const cvmstate_vm* vm, uint32_t index, cvmstate_block_info* info);

/* ---- Listeners ----------------------------------------------------------- */

/* The order of callbacks within one cvmstate_convert (fixed, and the same
 * for every block):
 *  1. The calls a listener may refuse, while the state is still the old
 *     one: populate (pages becoming shared; for a discard listener, pages
 *     leaving discarded) and set_private (pages becoming private),
 *     listener by listener in registration order, each listener's
 *     runs in ascending order. So a KVM attribute listener registered before
 *     a VFIO one sets the private attribute before VFIO maps anything, and
 *     the other way round if registered the other way round.
 *  2. If one refuses: every call of step 1 already accepted is undone with
 *     its inverse (discard, clear_private), listeners in reverse order, and
 *     cvmstate_convert returns the refusal; nothing else is called.
 *  3. The state changes.
 *  4. The calls that cannot fail: discard (pages no longer shared; for a
 *     discard listener, pages now discarded) and clear_private (pages no
 *     longer private), in registration order, ascending.
 * A run changing between private and discarded is not told to a DMA
 * listener (both are "not shared" to it); one between shared and
 * discarded is not told to an attribute listener; one between shared and
 * private is not told to a discard listener. */

/* A DMA-mapping listener (as QEMU's RamDiscardListener / VFIO): told when
 * pages become shared (populate: may refuse with a negative errno) and stop
 * being shared (discard: cannot fail). */
typedef struct cvmstate_dma_ops {
  int (*populate)(void* opaque, uint64_t offset, uint64_t size);
  void (*discard)(void* opaque, uint64_t offset, uint64_t size);
  uint64_t granularity;          /* bytes, a power of two; 0: the page size */
  int double_discard_supported;  /* non-zero: discard may cover unpopulated pages */
} cvmstate_dma_ops;

/* A memory-attribute listener (as KVM_SET_MEMORY_ATTRIBUTES): told when
 * pages become private (may refuse) and stop being private (cannot fail). */
typedef struct cvmstate_attr_ops {
  int (*set_private)(void* opaque, uint64_t offset, uint64_t size);
  void (*clear_private)(void* opaque, uint64_t offset, uint64_t size);
  uint64_t granularity;
} cvmstate_attr_ops;

/* Registers a listener for [offset, offset+size) of block and replays the
 * section's shared (or private) runs to it. The section must be aligned to
 * the granularity, and so must the section's current state: a run the
 * listener would be told of that is not (a shared 4 KiB page under a 2 MiB
 * DMA listener) is -EINVAL naming the block and the range. On failure
 * nothing stays registered or notified. ops is copied; opaque (optional) is
 * passed back; a NULL callback accepts and ignores its calls. */
CVMSTATE_API int cvmstate_register_dma_listener(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                                const cvmstate_dma_ops* ops, void* opaque, cvmstate_listener** out);
CVMSTATE_API int cvmstate_register_attr_listener(cvmstate_vm* vm, const char* block, uint64_t offset, uint64_t size,
                                                 const cvmstate_attr_ops* ops, void* opaque, cvmstate_listener** out);
/* Withdraws the section from the listener (discards / clears) and frees it:
 * after it returns 0 the handle is invalid and must not be used again. A
 * handle that is not a live listener of this vm (registered with another
 * vm, or already unregistered and not since reused by a new registration)
 * is refused with -ENOENT and nothing is touched; the vm checks handles by
 * membership in its own set, never by reading them. */
CVMSTATE_API int cvmstate_unregister_listener(cvmstate_vm* vm, cvmstate_listener* listener);

/* v1. The listener structs with a leading struct_size, for the fields later
 * versions add; otherwise as cvmstate_dma_ops and cvmstate_attr_ops. */
typedef struct cvmstate_dma_ops_v1 {
  size_t struct_size; /* sizeof(cvmstate_dma_ops_v1) */
  int (*populate)(void* opaque, uint64_t offset, uint64_t size);
  void (*discard)(void* opaque, uint64_t offset, uint64_t size);
  uint64_t granularity;
  int double_discard_supported;
} cvmstate_dma_ops_v1;

typedef struct cvmstate_attr_ops_v1 {
  size_t struct_size; /* sizeof(cvmstate_attr_ops_v1) */
  int (*set_private)(void* opaque, uint64_t offset, uint64_t size);
  void (*clear_private)(void* opaque, uint64_t offset, uint64_t size);
  uint64_t granularity;
} cvmstate_attr_ops_v1;

/* v1. As cvmstate_register_dma_listener / _attr_listener. */
CVMSTATE_API int cvmstate_register_dma_listener_v1(cvmstate_vm* vm, const char* block, uint64_t offset,
                                                   uint64_t size, const cvmstate_dma_ops_v1* ops, void* opaque,
                                                   cvmstate_listener** out);
CVMSTATE_API int cvmstate_register_attr_listener_v1(cvmstate_vm* vm, const char* block, uint64_t offset,
                                                    uint64_t size, const cvmstate_attr_ops_v1* ops, void* opaque,
                                                    cvmstate_listener** out);

/* v1 (0.3). A discard listener: the VMM's memory backend, which frees the
 * memory of pages the guest gives up (as QEMU's RamDiscardManager under a
 * balloon or virtio-mem). discard: [offset, offset+size) became discarded
 * (from shared or private), so its backing may be freed, for example with
 * fallocate(FALLOC_FL_PUNCH_HOLE) on a memfd; cannot fail. populate: the
 * range leaves discarded (for shared or private) and needs backing again;
 * may refuse with a negative errno (-ENOMEM), which rolls the conversion
 * back. Registering replays populate for the section's shared and private
 * runs (use cvmstate_listener_replay(vm, l, CVMSTATE_DISCARDED) to have
 * the discarded ones freed, as a destination does before it resumes the
 * guest); unregistering tells discard for them, as for a DMA listener: the
 * section's backing goes with the listener. Otherwise as the DMA listener:
 * a NULL callback accepts and ignores; granularity 0 is the page size. */
typedef struct cvmstate_discard_ops_v1 {
  size_t struct_size; /* sizeof(cvmstate_discard_ops_v1) */
  int (*populate)(void* opaque, uint64_t offset, uint64_t size);
  void (*discard)(void* opaque, uint64_t offset, uint64_t size);
  uint64_t granularity;
} cvmstate_discard_ops_v1;

CVMSTATE_API int cvmstate_register_discard_listener_v1(cvmstate_vm* vm, const char* block, uint64_t offset,
                                                       uint64_t size, const cvmstate_discard_ops_v1* ops,
                                                       void* opaque, cvmstate_listener** out);

/* v1. Tells the listener again about the runs of its section in `state`,
 * as registering did (QEMU's replay_populated and replay_discarded): a DMA
 * listener gets populate for each shared run (state CVMSTATE_SHARED) or
 * discard for each run in `state` (CVMSTATE_PRIVATE or CVMSTATE_DISCARDED);
 * an attribute listener gets set_private for each private run or
 * clear_private for each run in `state` (CVMSTATE_SHARED or
 * CVMSTATE_DISCARDED); a discard listener gets discard for each discarded
 * run (state CVMSTATE_DISCARDED) or populate for each run in `state`
 * (CVMSTATE_SHARED or CVMSTATE_PRIVATE). Runs are maximal, clipped to the
 * section, ascending. The state does not change. If a populate or set_private
 * refuses, the replay stops there and its code is returned (the runs
 * already told stay told: the listener asked for them). Other states'
 * runs are skipped as in cvmstate_for_each_run, and registering a DMA or
 * attribute listener skips all but the shared or private runs the same
 * way. -ENOENT for a handle that is not a live listener of vm, -EINVAL for
 * a state. */
CVMSTATE_API int cvmstate_listener_replay(cvmstate_vm* vm, cvmstate_listener* listener, int state);

/* ---- Persistent store ---------------------------------------------------- */

/* Opens (creating) the RocksDB store in dir; one process at a time. */
CVMSTATE_API int cvmstate_store_open(const char* dir, cvmstate_store** out);
CVMSTATE_API void cvmstate_store_close(cvmstate_store* store);

/* Commits vm as vm_id durably and atomically: the first call for a (vm,
 * store, id) replaces what id held, later ones write only what changed.
 * *bytes (optional) gets the bytes written. */
CVMSTATE_API int cvmstate_checkpoint(cvmstate_store* store, cvmstate_vm* vm, const char* vm_id, uint64_t* bytes);

/* Loads the last committed state of vm_id into a new vm (*out): verified,
 * digest checked. -ENOENT if there is none, -EBADMSG if corrupted, -EINVAL
 * for an invalid id (VM ids: [A-Za-z0-9._:-]{1,64}, for every call). */
CVMSTATE_API int cvmstate_store_load(cvmstate_store* store, const char* vm_id, cvmstate_vm** out);

/* Removes vm_id's checkpoint from the store, all of it in one synced batch.
 * Every vm checkpointed to (store, vm_id) forgets it, so its next
 * cvmstate_checkpoint of vm_id writes a whole checkpoint. -ENOENT if vm_id
 * has none, -EINVAL for an invalid id. */
CVMSTATE_API int cvmstate_store_delete(cvmstate_store* store, const char* vm_id);

/* ---- Live migration -------------------------------------------------------- */

/* Byte transport for a migration: read returns bytes read (> 0), 0 at end of
 * stream, or a negative errno; write returns bytes written (> 0) or a
 * negative errno. Use these when the VMM has its own migration channel;
 * the *_fd variants take a connected file descriptor (not closed): a
 * negative fd is -EINVAL, one that is not open -EBADF. */
typedef struct cvmstate_io {
  long (*read)(void* opaque, void* buf, size_t size);
  long (*write)(void* opaque, const void* buf, size_t size);
} cvmstate_io;

/* v1. cvmstate_io with a leading struct_size (sizeof(cvmstate_io_v1)). */
typedef struct cvmstate_io_v1 {
  size_t struct_size;
  long (*read)(void* opaque, void* buf, size_t size);
  long (*write)(void* opaque, const void* buf, size_t size);
} cvmstate_io_v1;

/* The source side. psk_file (optional) authenticates every frame; the
 * destination must use the same file. A key file that is a pipe or FIFO
 * must deliver its key within 30 s (-ETIMEDOUT); this holds for the
 * destination's psk_file too. Over a channel with a live
 * destination the source first reads its challenge. Over an fd each read
 * (the challenge, the acknowledgement) and each frame's write waits at most
 * 120 s, or what cvmstate_source_set_timeout set: a destination that stops
 * reading makes the call fail with -ETIMEDOUT instead of blocking. */
CVMSTATE_API int cvmstate_source_new_fd(cvmstate_vm* vm, const char* vm_id, int fd, const char* psk_file,
                                        cvmstate_source** out);
/* Sets how long each read and each frame's write of an fd source (or, v1,
 * one made with cvmstate_source_new_io_v1) may wait. timeout_seconds:
 * finite, > 0 and at most CVMSTATE_MAX_TIMEOUT_SECONDS, else -EINVAL;
 * -EINVAL too for a source made with the v0 cvmstate_source_new_io (its
 * callbacks bound their own waits). */
CVMSTATE_API int cvmstate_source_set_timeout(cvmstate_source* src, double timeout_seconds);
CVMSTATE_API int cvmstate_source_new_io(cvmstate_vm* vm, const char* vm_id, const cvmstate_io* io, void* opaque,
                                        const char* psk_file, cvmstate_source** out);
/* v1. As cvmstate_source_new_io; the source's timeout (120 s, or what
 * cvmstate_source_set_timeout sets) then bounds each read (a frame's
 * header, its body) and each frame's write, checked as the callbacks
 * return: one that the callbacks take longer over fails with -ETIMEDOUT
 * once one returns. A callback blocked in the VMM's own I/O is the VMM's to
 * end (a cancel takes effect when it returns, and its bytes are unused). */
CVMSTATE_API int cvmstate_source_new_io_v1(cvmstate_vm* vm, const char* vm_id, const cvmstate_io_v1* io,
                                           void* opaque, const char* psk_file, cvmstate_source** out);

/* v1: the VMM's own migration loop (QEMU's save_live_iterate shape):
 *
 *   cvmstate_source_pending(src, &pending);
 *   while (pending > threshold) {          // the guest keeps converting
 *     cvmstate_source_step(src, budget, &sent, &round_done);
 *     ... send RAM pages, check the bandwidth, ...
 *     cvmstate_source_pending(src, &pending);
 *   }
 *   ... pause the vCPUs ...
 *   cvmstate_source_finish(src, &bytes);   // the rest, then the ack
 *
 * The first step (or cvmstate_source_begin) reads the destination's
 * challenge and sends the hello: it waits for the destination. */

/* v1. An estimate of the bytes the next round would send now, in *bytes:
 * before the first step the whole state; during a round what it has left
 * plus what changed since it began; between rounds what changed since the
 * last one. Never below what the round then sends by more than one frame
 * (zstd's expansion of an incompressible frame); usually above it, as it
 * counts the runs uncompressed. Costs the runs it counts; sends nothing. */
CVMSTATE_API int cvmstate_source_pending(const cvmstate_source* src, uint64_t* bytes);

/* v1. Sends about max_bytes of the current round and returns: a new round
 * of what changed since the previous one if none is in progress (round 0,
 * the full state, at first). Frames are cut to what is left of the budget,
 * and the call returns once it has sent max_bytes, so it overshoots by at
 * most one small frame (a few hundred bytes), and always sends at least one
 * frame. *sent (optional) gets the bytes sent, *round_done (optional) 1 if
 * the round ended with this call (its last frame went), else 0. The guest
 * may convert pages between steps: the changes go in the next round.
 * cvmstate_source_begin and _round are this in one call; _finish first
 * ends a round in progress. */
CVMSTATE_API int cvmstate_source_step(cvmstate_source* src, uint64_t max_bytes, uint64_t* sent, int* round_done);

/* v1. Stops the migration from any thread: the call blocked on the
 * channel (a step, begin, round, finish, or set to wait) returns
 * -ECANCELED at once (over callbacks: when the callback returns), and so
 * does every later call on src but _free; the destination receives a
 * stream that never ends and commits nothing. Once cvmstate_source_finish
 * has sent the end frame, the destination decides: finish then still
 * waits (within the timeout) for its answer and returns it, because a
 * destination that acknowledged may already run the guest. Returns 0, or
 * -EINVAL for NULL. */
CVMSTATE_API int cvmstate_source_cancel(cvmstate_source* src);

/* Round 0: the full state. *bytes (optional) gets the round's bytes. */
CVMSTATE_API int cvmstate_source_begin(cvmstate_source* src, uint64_t* bytes);
/* A pre-copy round: what changed since the previous round. The guest may
 * convert pages (cvmstate_convert) between rounds. */
CVMSTATE_API int cvmstate_source_round(cvmstate_source* src, uint64_t* bytes);
/* Stop-and-copy: the final changes and the end frame, then waits for the
 * destination's acknowledgement. 0 once the destination is ready;
 * -EACCES / -EIO / -EBADMSG with its reason otherwise. It ends the stream
 * whatever its result: cvmstate_source_round, _begin or _finish after it
 * are -EINVAL ("the migration has finished") and send nothing. */
CVMSTATE_API int cvmstate_source_finish(cvmstate_source* src, uint64_t* bytes);
/* v1 (0.3). Whether cvmstate_source_finish handed the whole end frame to
 * the channel: 1 if it did, 0 if not (or finish was not called), -EINVAL
 * for NULL. What a VMM needs after a failed finish to decide about its
 * guest: 0 means the destination cannot have the end of the stream, so it
 * commits and runs nothing, and the source may resume its guest; 1 with
 * finish's result -EACCES means the destination refused (resume too); 1
 * with any other failure (-EIO, -ETIMEDOUT waiting for the answer) means
 * the outcome is unknown: the destination may have committed and resumed
 * the guest, so resuming it here as well could run it twice. */
CVMSTATE_API int cvmstate_source_end_sent(const cvmstate_source* src);
/* Rounds sent so far, and the bytes of round r. */
CVMSTATE_API uint32_t cvmstate_source_rounds(const cvmstate_source* src);
CVMSTATE_API uint64_t cvmstate_source_round_bytes(const cvmstate_source* src, uint32_t round);
CVMSTATE_API void cvmstate_source_free(cvmstate_source* src);

/* The destination side: sends its challenge, then receives and verifies
 * the whole stream (each read, and each write of the challenge and the
 * acknowledgement, bounded by timeout_seconds) into a new vm
 * (*out). It does not acknowledge: the destination's sequence is receive,
 * cvmstate_store_commit, register listeners (which replays shared runs to
 * DMA listeners and private runs to attribute listeners), then
 * cvmstate_destination_ack; on a failure, cvmstate_destination_ack(dst, 0,
 * reason) tells the source, which then commits nothing. These are the steps
 * of the library's own incoming sequence, which the cvmstate program runs.
 * timeout_seconds: finite, > 0 and at most CVMSTATE_MAX_TIMEOUT_SECONDS,
 * else -EINVAL (0, negative, NaN and infinity are refused). */
CVMSTATE_API int cvmstate_destination_new_fd(int fd, const char* psk_file, double timeout_seconds,
                                             cvmstate_destination** out);
CVMSTATE_API int cvmstate_destination_new_io(const cvmstate_io* io, void* opaque, const char* psk_file,
                                             cvmstate_destination** out);
/* v1. As cvmstate_destination_new_io, with a timeout bounding each frame's
 * reads and each write as the callbacks return (see
 * cvmstate_source_new_io_v1); timeout_seconds as for _new_fd. */
CVMSTATE_API int cvmstate_destination_new_io_v1(const cvmstate_io_v1* io, void* opaque, const char* psk_file,
                                                double timeout_seconds, cvmstate_destination** out);
/* v1. Changes the destination's timeout (any destination, before or
 * between calls): finite, > 0, at most CVMSTATE_MAX_TIMEOUT_SECONDS, else
 * -EINVAL. A v0 _new_io destination has none until this is called. */
CVMSTATE_API int cvmstate_destination_set_timeout(cvmstate_destination* dst, double timeout_seconds);
/* v1. Stops the destination from any thread: a blocked receive returns
 * -ECANCELED at once (over callbacks: when the callback returns), with
 * nothing received or committed, and so does every later call but _free
 * (an ack is not sent: the source's wait ends with its own timeout). A
 * vm already committed with cvmstate_store_commit stays: delete it if the
 * migration is abandoned. Returns 0, or -EINVAL for NULL. */
CVMSTATE_API int cvmstate_destination_cancel(cvmstate_destination* dst);

/* The largest state the destination accepts, in runs (default 4,194,304),
 * and with it its memory budget: the state being received may take 64
 * bytes a run of max_runs (plus 96 bytes per 256 MiB of guest); a stream
 * that claims or builds more is refused early (-EACCES, nothing kept).
 * Call before cvmstate_destination_receive; max_runs 1 to 2^32, else
 * -EINVAL. */
CVMSTATE_API int cvmstate_destination_set_max_runs(cvmstate_destination* dst, uint64_t max_runs);
CVMSTATE_API int cvmstate_destination_receive(cvmstate_destination* dst, cvmstate_vm** out);
/* The VM id the stream carried (valid after a successful receive). */
CVMSTATE_API const char* cvmstate_destination_vm_id(const cvmstate_destination* dst);
/* Commits a received vm under vm_id in one batch; -EEXIST if it exists. */
CVMSTATE_API int cvmstate_store_commit(cvmstate_store* store, const char* vm_id, const cvmstate_vm* vm);
/* Tells the source: ready (ok != 0) or the failure reason (optional; sent
 * on one line, control bytes escaped). Once only: a second call is -EINVAL
 * ("the migration has finished") and sends nothing. */
CVMSTATE_API int cvmstate_destination_ack(cvmstate_destination* dst, int ok, const char* reason);
CVMSTATE_API void cvmstate_destination_free(cvmstate_destination* dst);

#ifdef __cplusplus
}
#endif

#endif /* CVMSTATE_CVMSTATE_H_ */

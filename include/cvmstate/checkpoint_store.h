// CheckpointStore: durable, atomic, incremental checkpoints of VM page state
// in one RocksDB database per host directory, many VMs per database.
//
// Layout: every VM's keys share a prefix (no column family per VM). A VM has
// one manifest (blocks, chunk size, which chunks have records and the
// uniform state of the others, sequence, time, a digest of the whole state)
// and one ChunkRecord per chunk that is not uniform. A checkpoint is one
// synced WriteBatch: after a crash either all of it is visible or none.
//
// Thread-safety: a CheckpointStore may be shared by threads (RocksDB is);
// a VmCheckpointer and the VmState it commits belong to one thread.
#ifndef CVMSTATE_CHECKPOINT_STORE_H_
#define CVMSTATE_CHECKPOINT_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cvmstate/status.h"
#include "cvmstate/vm_state.h"

namespace rocksdb {
class DB;
class Env;
class WriteBatch;
}  // namespace rocksdb

namespace cvmstate {

// What a committed checkpoint says about itself.
struct CheckpointInfo {
  std::string vm;
  uint64_t sequence = 0;   // checkpoints committed for this VM id
  uint64_t unix_time = 0;
  uint64_t digest = 0;
  uint64_t total_runs = 0;
  uint64_t records = 0;    // chunk records (non-uniform chunks)
};

class CheckpointStore {
 public:
  // True if id matches [A-Za-z0-9._:-]{1,64}.
  static bool IsValidVmId(std::string_view id);

  // Opens (creating if missing, unless read_only) the database in dir.
  // IOError with RocksDB's reason if it cannot (for example another
  // process holds it open for writing). env (not owned; must outlive the
  // store) replaces the default file system, for fault injection.
  static Result<std::unique_ptr<CheckpointStore>> Open(const std::string& dir, bool read_only = false,
                                                       rocksdb::Env* env = nullptr);
  ~CheckpointStore();

  // The VM ids that have a committed checkpoint, sorted.
  Result<std::vector<std::string>> ListVms() const;
  // Whether `vm` has a committed checkpoint.
  Result<bool> HasVm(const std::string& vm) const;

  // Reads, verifies (sizes, FlatBuffers verifier, zstd, meaning) and
  // rebuilds the last committed state of `vm`, then checks its digest.
  // NotFound if there is none; Corruption naming the VM, block and chunk if
  // any byte is wrong. *info (optional) gets the manifest's figures.
  Result<VmState> Load(const std::string& vm, CheckpointInfo* info = nullptr) const;

  // Writes the whole state of `vm` as the checkpoint of `id` in one synced
  // batch, replacing whatever `id` held (used by the migration destination).
  // Returns the bytes written (keys plus values).
  Result<uint64_t> CommitFull(const std::string& id, const VmState& vm, uint64_t sequence);

  // Removes every key of `id` in one synced batch (a destination that
  // cannot finish takes its commit back this way).
  Status DeleteVm(const std::string& id);

  rocksdb::DB* db() const { return db_.get(); }

 private:
  friend class VmCheckpointer;
  explicit CheckpointStore(std::unique_ptr<rocksdb::DB> db);
  // Adds the manifest of `vm` to batch; returns bytes.
  Result<uint64_t> PutManifest(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm,
                               uint64_t sequence) const;
  Result<uint64_t> PutChunks(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm, size_t block,
                             uint64_t c0, uint64_t c1) const;
  Status Write(rocksdb::WriteBatch* batch);

  std::unique_ptr<rocksdb::DB> db_;
};

// Commits successive checkpoints of one VmState under one VM id. The first
// commit replaces whatever the id held; later ones write only the chunks
// the change journal says changed since the previous commit (plus the
// manifest). A failed commit changes nothing, and the next one writes
// everything changed since the last one that succeeded.
class VmCheckpointer {
 public:
  VmCheckpointer(CheckpointStore* store, std::string vm_id);

  struct Commit {
    uint64_t sequence = 0;  // 1 for the first commit of this checkpointer
    uint64_t bytes = 0;     // keys plus values written
    uint64_t records = 0;   // chunk records written
  };
  // Commits the state of vm (which must be the same VmState each time;
  // blocks may only be added). Opens a journal epoch in vm.
  Result<Commit> CommitState(VmState& vm);

 private:
  CheckpointStore* store_;
  std::string id_;
  bool first_ = true;
  uint64_t since_epoch_ = 0;
  size_t stored_blocks_ = 0;
  uint64_t sequence_ = 0;
};

}  // namespace cvmstate

#endif  // CVMSTATE_CHECKPOINT_STORE_H_

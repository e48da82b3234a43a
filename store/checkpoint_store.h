// CheckpointStore: durable, atomic checkpoints of VM page state in one
// RocksDB database per host directory, many VMs per database. The layout is
// described in docs/store-layout.md.
//
// Every VM's keys share a prefix (no column family per VM). A VM has one
// manifest (blocks, chunk size, which chunks have records and the uniform
// state of the others, sequence, time, a digest of the whole state) and one
// ChunkRecord per chunk that is not uniform. A checkpoint is one synced
// WriteBatch: after a crash either all of it is visible or none.
//
// Thread-safety: a CheckpointStore may be shared by threads (RocksDB is);
// a VmCheckpointer and the VmState it commits belong to one thread.
#ifndef CVMSTATE_STORE_CHECKPOINT_STORE_H_
#define CVMSTATE_STORE_CHECKPOINT_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace rocksdb {
class DB;
class Logger;
class Env;
class WriteBatch;
}  // namespace rocksdb

namespace cvmstate {

class ChunkSummary;
class CommitRecord;

// What a committed checkpoint says about itself.
struct CheckpointInfo {
  std::string vm;
  uint64_t sequence = 0;  // checkpoints committed for this VM id
  uint64_t unix_time = 0;
  uint64_t digest = 0;
  uint64_t total_runs = 0;
  uint64_t records = 0;  // chunk records (non-uniform chunks)
};

class CheckpointStore {
 public:
  // Pages a chunk record covers: 2^17, 512 MiB of 4 KiB pages.
  static constexpr unsigned kChunkShift = 17;

  // Opens (creating if missing, unless read_only) the database in dir.
  // IOError with RocksDB's reason if it cannot (for example another
  // process holds it open for writing). Corruption if a write-ahead log
  // record is damaged or the database recovers to an older commit than the
  // store recorded (docs/store-layout.md, "Durability"): the store never
  // silently opens an older state. env (not owned; must outlive the
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
  // batch, replacing whatever `id` held; AlreadyExists while a
  // VmCheckpointer holds `id` (VmCheckpointer::HoldNewVm). Returns the
  // bytes written (keys plus values).
  Result<uint64_t> CommitFull(const std::string& id, const VmState& vm, uint64_t sequence);
  // The same, but AlreadyExists if `id` has a checkpoint or is held: a
  // migration destination never overwrites a VM.
  Result<uint64_t> CommitNew(const std::string& id, const VmState& vm);

  // Removes every key of `id` in one synced batch (a destination that
  // cannot finish takes its commit back this way). AlreadyExists while a
  // VmCheckpointer holds `id`.
  [[nodiscard]] Status DeleteVm(const std::string& id);

  // The RocksDB database, for tests that damage it on purpose.
  rocksdb::DB* db() const { return db_.get(); }

 private:
  friend class VmCheckpointer;
  struct ChunkWrites {
    uint64_t bytes = 0;    // keys plus values
    uint64_t records = 0;  // chunk records put (deletes are not records)
  };
  CheckpointStore(std::unique_ptr<rocksdb::DB> db, std::unique_ptr<CommitRecord> record,
                  std::shared_ptr<rocksdb::Logger> log);
  // A block's stretch list as the manifest holds it, and the summary's
  // stretch_version() it was encoded at.
  struct EncodedStretches {
    uint64_t version = ~uint64_t{0};
    std::string z;  // the zstd frame
    uint32_t raw_size = 0, count = 0;
  };
  // Brings *cache (resized to the blocks) up to date with the summaries'
  // stretches, encoding only the blocks whose stretch_version() changed
  // since it last held them. A stage calls it, so that the commit after
  // it finds its blocks' stretches encoded (at 64 TiB, a walk of 131,072
  // chunks' pieces is 1-2 ms).
  [[nodiscard]] static Status EncodeStretches(const VmState& vm, const std::vector<ChunkSummary>& summaries,
                                              std::vector<EncodedStretches>* cache);
  // Adds the manifest of `vm` to batch, its stretches, run count and
  // digest taken from summaries (one per block, up to date); its stretches
  // through EncodeStretches(vm, summaries, cache). Returns bytes.
  Result<uint64_t> PutManifest(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm,
                               const std::vector<ChunkSummary>& summaries, std::vector<EncodedStretches>* cache,
                               uint64_t sequence) const;
  // Adds the records of chunks [c0, c1) of block bi, and deletes of the
  // records of uniform ones, to batch.
  [[nodiscard]] Status PutChunks(rocksdb::WriteBatch* batch, const std::string& id, const VmState& vm, size_t bi,
                                 uint64_t c0, uint64_t c1, ChunkWrites* out) const;
  // Adds a delete of every chunk record of `id`; returns bytes.
  static uint64_t DeleteAllChunks(rocksdb::WriteBatch* batch, const std::string& id);
  // Writes batch, synced. A commit (a manifest in it) then records
  // RocksDB's sequence for the next Open's check; records no manifest
  // names yet (VmCheckpointer::StageState) are synced all the same, since
  // a log whose middle a power loss can tear would refuse to open (the
  // store tolerates a torn last record only). A batch larger than the
  // memtable is flushed to a table before it returns.
  [[nodiscard]] Status Write(rocksdb::WriteBatch* batch, bool commit = true);
  // Holding ids (VmCheckpointer::HoldNewVm): while `holder` holds `id`,
  // every other writer of it is refused. Hold: AlreadyExists if `id` has a
  // checkpoint or another holder. RocksDB lets one process write a store,
  // so this process is the only place two writers of an id can meet.
  [[nodiscard]] Status Hold(const std::string& id, const void* holder);
  void Release(const std::string& id, const void* holder);
  // AlreadyExists if another than `writer` (null: a writer that holds
  // nothing) holds `id`.
  [[nodiscard]] Status CheckWriter(const std::string& id, const void* writer) const;
  Result<uint64_t> CommitFullAs(const std::string& id, const VmState& vm, uint64_t sequence, const void* writer);
  [[nodiscard]] Status DeleteVmAs(const std::string& id, const void* writer);

  std::shared_ptr<rocksdb::Logger> log_;  // outlives db_
  std::unique_ptr<rocksdb::DB> db_;
  std::unique_ptr<CommitRecord> record_;
  mutable std::mutex held_mu_;
  std::map<std::string, const void*> held_;  // id -> holder; guarded by held_mu_
};

}  // namespace cvmstate

#endif  // CVMSTATE_STORE_CHECKPOINT_STORE_H_

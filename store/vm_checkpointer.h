// VmCheckpointer: successive, incremental checkpoints of one VmState under
// one VM id.
#ifndef CVMSTATE_STORE_VM_CHECKPOINTER_H_
#define CVMSTATE_STORE_VM_CHECKPOINTER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codec/chunk_summary.h"
#include "store/checkpoint_store.h"
#include "tracker/journal_reader.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

// The first commit replaces whatever the id held; later ones write only the
// chunks the change journal says changed since the previous successful
// commit (plus the manifest). A failed commit changes nothing, and the next
// one writes everything changed since the last one that succeeded.
//
// Cost: the first commit reads every run; a later one reads the runs of
// the changed chunks and keeps each block's digest sum, run count and
// stretches (ChunkSummary) up to date from them, so it costs O(k log n)
// CPU for k changed chunks, plus the manifest's stretch list: kept encoded
// per segment of chunks, encoded again only where it changed, compressed
// whole when it changed (one or two bytes a stretch of chunks, never a pass
// over runs).
//
// Lifetime: the store must outlive the checkpointer, and the checkpointer
// (which reads the VM's change journal) must be destroyed before the
// VmState it committed. Not thread-safe.
class VmCheckpointer {
 public:
  VmCheckpointer(CheckpointStore* store, std::string vm_id);
  ~VmCheckpointer();  // ends its hold on the id, if any
  VmCheckpointer(const VmCheckpointer&) = delete;
  VmCheckpointer& operator=(const VmCheckpointer&) = delete;

  // Makes this checkpointer the only writer of its id in this process, for
  // a VM that must be new: AlreadyExists if the store has a checkpoint of
  // the id or another checkpointer holds it. Until this one is destroyed,
  // CommitFull, CommitNew, DeleteVm and other checkpointers' commits of
  // the id are refused (AlreadyExists). A migration destination holds its
  // id from the hello on, so no one else writes or deletes the records it
  // stages. (A writer that checked just before the hold began can still
  // race it: one VMM thread writes a given id at a time.)
  [[nodiscard]] Status HoldNewVm();
  // Removes every record of the id in one synced batch, manifest included:
  // what this checkpointer staged or committed (a destination that cannot
  // finish). Refused if another holds the id.
  [[nodiscard]] Status DeleteAll();

  struct Commit {
    uint64_t sequence = 0;  // 1 for the first commit of this checkpointer
    uint64_t bytes = 0;     // keys plus values written
    uint64_t records = 0;   // chunk records written (deletes not counted)
  };
  // Commits the state of vm, which must be the same VmState each time
  // (InvalidArgument otherwise); blocks may only be added.
  Result<Commit> CommitState(VmState& vm);

  // Writes the chunk records CommitState would, but no manifest: the VM
  // stays invisible (HasVm false, Load NotFound, not in ListVms) and the
  // next CommitState or StageState writes only the chunks changed since
  // (and encodes again only the manifest stretches that changed since).
  // What a crash or a failed commit leaves is records no reader sees; the
  // id's next first commit replaces them, DeleteVm removes them. A
  // migration destination stages each round as it arrives, so that its
  // final commit costs the last round's changes, not the state. The caller
  // should hold the id (HoldNewVm). Synced like a commit (see
  // CheckpointStore::Write), but with no manifest to name them.
  // Commit::sequence is 0.
  Result<Commit> StageState(VmState& vm);

 private:
  Result<Commit> Write(VmState& vm, bool with_manifest);

  CheckpointStore* store_;
  std::string id_;
  JournalReader journal_;  // attached at the first successful commit
  size_t stored_blocks_ = 0;
  // One per block of the VM as last read; a failed commit leaves them read
  // (they follow the state, not the store) and the next one reads the same
  // chunks again.
  std::vector<ChunkSummary> summaries_;
  std::vector<CheckpointStore::EncodedStretches> stretches_;  // as last encoded
  uint64_t sequence_ = 0;
  bool holds_ = false;  // HoldNewVm succeeded
  // The batch of the last commit, emptied, kept while it is small: the
  // next commit fills memory already touched instead of growing a new
  // batch page by page (page faults were a tenth of an incremental
  // commit's time).
  std::unique_ptr<rocksdb::WriteBatch> batch_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_STORE_VM_CHECKPOINTER_H_

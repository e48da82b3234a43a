// VmCheckpointer: successive, incremental checkpoints of one VmState under
// one VM id.
#ifndef CVMSTATE_STORE_VM_CHECKPOINTER_H_
#define CVMSTATE_STORE_VM_CHECKPOINTER_H_

#include <cstdint>
#include <string>

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
// Lifetime: the store must outlive the checkpointer, and the checkpointer
// (which reads the VM's change journal) must be destroyed before the
// VmState it committed. Not thread-safe.
class VmCheckpointer {
 public:
  VmCheckpointer(CheckpointStore* store, std::string vm_id);

  struct Commit {
    uint64_t sequence = 0;  // 1 for the first commit of this checkpointer
    uint64_t bytes = 0;     // keys plus values written
    uint64_t records = 0;   // chunk records written (deletes not counted)
  };
  // Commits the state of vm, which must be the same VmState each time
  // (InvalidArgument otherwise); blocks may only be added.
  Result<Commit> CommitState(VmState& vm);

 private:
  CheckpointStore* store_;
  std::string id_;
  JournalReader journal_;  // attached at the first successful commit
  size_t stored_blocks_ = 0;
  uint64_t sequence_ = 0;
};

}  // namespace cvmstate

#endif  // CVMSTATE_STORE_VM_CHECKPOINTER_H_

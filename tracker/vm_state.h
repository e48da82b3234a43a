// VmState: the RAM blocks of one VM, by name, in declaration order.
#ifndef CVMSTATE_VM_STATE_H_
#define CVMSTATE_VM_STATE_H_

#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tracker/block_tracker.h"
#include "tracker/status.h"

namespace cvmstate {

class JournalReader;

class VmState {
 public:
  VmState() = default;
  ~VmState();
  VmState(VmState&& other) noexcept;
  VmState& operator=(VmState&& other) noexcept;

  // Declares a block (see BlockTracker::Create for the rules). Fails with
  // InvalidArgument if the parameters are invalid or the name is taken.
  Status AddBlock(std::string name, uint64_t size, uint64_t page_size, PageState initial);
  // Takes ownership of a block built elsewhere; same name rule.
  Status AddBlock(std::unique_ptr<BlockTracker> block);

  // The block called `name`, or nullptr. The pointer stays valid for the
  // life of this VmState.
  BlockTracker* Find(std::string_view name);
  const BlockTracker* Find(std::string_view name) const;

  // Index of the block called `name` in declaration order, or -1.
  long IndexOf(std::string_view name) const;

  size_t num_blocks() const { return blocks_.size(); }
  BlockTracker& block(size_t i) { return *blocks_[i]; }
  const BlockTracker& block(size_t i) const { return *blocks_[i]; }

  // Opens a new epoch of the change journal in every block (the first call
  // turns journaling on) and returns it; see ChangeJournal.
  uint64_t OpenEpoch();
  uint64_t epoch() const { return epoch_; }


  // Heap bytes of all page-state structures.
  size_t MemoryBytes() const;

 private:
  std::vector<std::unique_ptr<BlockTracker>> blocks_;
  std::unordered_map<std::string, size_t> by_name_;
  friend class JournalReader;
  // Trims every block's journal to what the oldest attached reader needs.
  void TrimJournals();
  // Points every attached reader at this object (after a move).
  void AdoptReaders();

  uint64_t epoch_ = 0;  // 0: not journaling
  // The attached JournalReaders. A VmState that is destroyed detaches them;
  // one that moves takes them along.
  std::set<JournalReader*> readers_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_VM_STATE_H_

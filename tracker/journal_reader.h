// JournalReader: one reader of a VM's change journal (an incremental
// checkpointer, a migration source). It remembers the epoch it has read up
// to; the VM's journals keep only what their oldest attached reader has not
// read yet, so a long-lived VM's journal stays as small as the changes
// since the slowest reader's last read.
//
// Lifetime: a VmState that moves takes its readers along; one that is
// destroyed detaches them (attached() turns false). Not thread-safe: a
// reader belongs to the thread that uses its VmState.
#ifndef CVMSTATE_TRACKER_JOURNAL_READER_H_
#define CVMSTATE_TRACKER_JOURNAL_READER_H_

#include <cstdint>
#include <vector>

#include "tracker/change_journal.h"

namespace cvmstate {

class BlockTracker;
class VmState;

class JournalReader {
 public:
  JournalReader() = default;  // detached
  ~JournalReader() { Detach(); }
  JournalReader(const JournalReader&) = delete;
  JournalReader& operator=(const JournalReader&) = delete;

  // Attaches to vm (turning its journals on) at a fresh epoch: Changed()
  // reports what changes from now on. A reader attached elsewhere detaches
  // first.
  void Attach(VmState* vm);
  void Detach();
  bool attached() const { return vm_ != nullptr; }
  const VmState* vm() const { return vm_; }

  // Sorted, disjoint page ranges of `block` (a block of the attached VM)
  // changed since the last Advance() or Attach(); a superset is possible,
  // never less.
  std::vector<PageRange> Changed(const BlockTracker& block) const;

  // Marks everything recorded so far as read (requires attached()): later changes belong to a new
  // epoch, and the journals forget what every attached reader has read.
  void Advance();

 private:
  friend class VmState;
  VmState* vm_ = nullptr;
  uint64_t since_ = 0;
};

}  // namespace cvmstate

#endif  // CVMSTATE_TRACKER_JOURNAL_READER_H_

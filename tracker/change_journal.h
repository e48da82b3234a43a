// ChangeJournal: which page ranges of a block changed since a given epoch.
//
// The store's incremental checkpoints and the migration's delta rounds read
// it, each through a JournalReader (journal_reader.h), and the journal
// keeps only what the oldest attached reader has not read (Trim). Recording
// is O(1) amortized; ChangedSince costs what is kept, never the block size.
// Ranges come back sorted and merged, never smaller than what changed.
// Entries are compacted (sorted, merged within an epoch), so memory stays
// O(distinct changed ranges per epoch kept).
// Not thread-safe.
#ifndef CVMSTATE_CHANGE_JOURNAL_H_
#define CVMSTATE_CHANGE_JOURNAL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cvmstate {

struct PageRange {
  uint64_t begin;  // first page
  uint64_t end;    // one past the last
};

class ChangeJournal {
 public:
  // Epochs start at 0; a change recorded now belongs to current_epoch().
  uint64_t current_epoch() const { return epoch_; }

  // Starts a new epoch and returns its number: changes from now on belong
  // to it, and ChangedSince(returned value) will report only them.
  uint64_t OpenEpoch() { return ++epoch_; }
  // Moves to epoch e if it is newer (keeps the blocks of a VM in step).
  void AdvanceTo(uint64_t e) {
    if (e > epoch_) epoch_ = e;
  }

  // Records that pages [begin, end) changed in the current epoch.
  void Record(uint64_t begin, uint64_t end);

  // Sorted, disjoint, merged ranges changed in epochs >= since.
  std::vector<PageRange> ChangedSince(uint64_t since) const;

  // Forgets changes of epochs < before (no reader will ask for them).
  void Trim(uint64_t before);

  // Heap bytes held.
  size_t MemoryBytes() const {
    return recent_.capacity() * sizeof(Entry) + compacted_.capacity() * sizeof(Entry);
  }

 private:
  struct Entry {
    uint64_t epoch;  // compacted: the newest epoch of what was merged
    uint64_t begin, end;
  };
  void Compact();

  uint64_t epoch_ = 0;
  std::vector<Entry> recent_;     // in epoch order
  std::vector<Entry> compacted_;  // disjoint, sorted by begin
};

}  // namespace cvmstate

#endif  // CVMSTATE_CHANGE_JOURNAL_H_

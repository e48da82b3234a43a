// ChangeJournal: which page ranges of a block changed since a given epoch.
//
// The store's incremental checkpoints and the migration's delta rounds read
// it, each through a JournalReader (journal_reader.h), and the journal
// keeps only what the oldest attached reader has not read (Trim). Recording
// is O(1) amortized; ChangedSince costs what is kept, never the block size.
// Ranges come back sorted and merged, never smaller than what changed.
// Entries are compacted (sorted, merged within an epoch), so memory stays
// O(distinct changed ranges per epoch kept), plus a batch buffer of at
// most 384 KiB; recording costs O(log) amortized copies of an entry,
// whether or not anyone trims.
// Not thread-safe.
#ifndef CVMSTATE_CHANGE_JOURNAL_H_
#define CVMSTATE_CHANGE_JOURNAL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tracker/page_range.h"

namespace cvmstate {

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
  size_t MemoryBytes() const;

 private:
  struct Entry {
    uint64_t epoch;  // entries merge only within one epoch
    uint64_t begin, end;
  };
  void Compact();

  // Records go to recent_ (in epoch order) until it holds kBatch, which is
  // then sorted and merged (in cache) and becomes the newest sorted run.
  // Runs are merged pairwise while the older one is at most twice the size
  // of the newer: O(log) runs, and each entry is copied O(log) times in
  // all. A single sorted list grown by every batch would copy all of it per
  // batch, and sorting a large unsorted tail costs a cache miss a compare.
  static constexpr size_t kBatch = 16384;
  uint64_t epoch_ = 0;
  std::vector<Entry> recent_;
  std::vector<std::vector<Entry>> runs_;  // each sorted by begin and merged within an epoch; oldest first
  std::vector<Entry> spare_;              // a merge's output buffer, kept for the next
};

}  // namespace cvmstate

#endif  // CVMSTATE_CHANGE_JOURNAL_H_

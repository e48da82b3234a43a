#include "tracker/change_journal.h"

#include <algorithm>

namespace cvmstate {
namespace {

// Merges overlapping or adjacent ranges of a vector sorted by begin.
// Entries with epochs merge only within one epoch, so that a reader never
// gets an older epoch's range back as changed since a newer one (readers
// trim the old epochs away, which keeps this small).
template <typename E>
void MergeSorted(std::vector<E>* v) {
  size_t out = 0;
  for (size_t i = 0; i < v->size(); ++i) {
    bool same_epoch = true;
    if constexpr (requires { (*v)[i].epoch; }) same_epoch = out > 0 && (*v)[i].epoch == (*v)[out - 1].epoch;
    if (out > 0 && same_epoch && (*v)[i].begin <= (*v)[out - 1].end) {
      E& last = (*v)[out - 1];
      last.end = std::max(last.end, (*v)[i].end);
    } else {
      (*v)[out++] = (*v)[i];
    }
  }
  v->resize(out);
}

template <typename E>
bool ByBegin(const E& a, const E& b) {
  return a.begin < b.begin;
}

template <typename E>
void SortAndMerge(std::vector<E>* v) {
  std::sort(v->begin(), v->end(), ByBegin<E>);
  MergeSorted(v);
}

}  // namespace

void ChangeJournal::Record(uint64_t begin, uint64_t end) {
  if (begin >= end) return;
  if (!recent_.empty()) {
    Entry& last = recent_.back();
    // Repeated or adjacent conversions in one epoch merge in place.
    if (last.epoch == epoch_ && begin <= last.end && end >= last.begin) {
      last.begin = std::min(last.begin, begin);
      last.end = std::max(last.end, end);
      return;
    }
  }
  recent_.push_back({epoch_, begin, end});
  if (recent_.size() > std::max<size_t>(4096, 2 * compacted_.size())) Compact();
}

void ChangeJournal::Compact() {
  // Sort only what is new and merge it into the sorted rest: each entry is
  // sorted once, not again at every compaction.
  SortAndMerge(&recent_);
  const size_t mid = compacted_.size();
  compacted_.insert(compacted_.end(), recent_.begin(), recent_.end());
  recent_.clear();
  std::inplace_merge(compacted_.begin(), compacted_.begin() + static_cast<ptrdiff_t>(mid), compacted_.end(),
                     ByBegin<Entry>);
  MergeSorted(&compacted_);
}

std::vector<PageRange> ChangeJournal::ChangedSince(uint64_t since) const {
  std::vector<PageRange> out;
  for (const Entry& e : compacted_)
    if (e.epoch >= since) out.push_back({e.begin, e.end});
  auto first = std::lower_bound(recent_.begin(), recent_.end(), since,
                                [](const Entry& e, uint64_t s) { return e.epoch < s; });
  for (auto it = first; it != recent_.end(); ++it) out.push_back({it->begin, it->end});
  SortAndMerge(&out);
  return out;
}

void ChangeJournal::Trim(uint64_t before) {
  std::erase_if(compacted_, [before](const Entry& e) { return e.epoch < before; });
  auto first = std::lower_bound(recent_.begin(), recent_.end(), before,
                                [](const Entry& e, uint64_t s) { return e.epoch < s; });
  recent_.erase(recent_.begin(), first);
}

}  // namespace cvmstate

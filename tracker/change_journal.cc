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

// Sorts v by begin, stably: a least-significant-digit radix sort, a byte
// a pass, skipping the bytes in which every begin agrees. Page numbers of
// random changes make a comparison sort mispredict about every other
// compare: this costs a few passes of plain loads and stores instead.
template <typename E>
void SortByBegin(std::vector<E>* v) {
  if (v->size() < 2) return;
  uint64_t lo = ~uint64_t{0}, hi = 0;
  for (const E& e : *v) {
    lo &= e.begin;
    hi |= e.begin;
  }
  const uint64_t differ = lo ^ hi;  // bits in which some begins differ
  std::vector<E> tmp(v->size());
  for (unsigned shift = 0; shift < 64; shift += 8) {
    if (((differ >> shift) & 0xff) == 0) continue;
    size_t count[256] = {};
    for (const E& e : *v) ++count[(e.begin >> shift) & 0xff];
    size_t sum = 0;
    for (size_t& c : count) {
      const size_t n = c;
      c = sum;
      sum += n;
    }
    for (const E& e : *v) tmp[count[(e.begin >> shift) & 0xff]++] = e;
    v->swap(tmp);
  }
}

template <typename E>
void SortAndMerge(std::vector<E>* v) {
  SortByBegin(v);
  MergeSorted(v);
}

// Writes a and b (each sorted by begin) to out, sorted by begin, stably
// (a's entries first on ties). No branch per entry: the order of random
// ranges is unpredictable, and a mispredicted branch per copied entry was
// most of a merge's cost.
template <typename E>
void MergeByBegin(const std::vector<E>& a, const std::vector<E>& b, E* out) {
  const E *i = a.data(), *ie = i + a.size(), *j = b.data(), *je = j + b.size();
  while (i < ie && j < je) {
    const bool take_j = j->begin < i->begin;
    *out++ = *(take_j ? j : i);
    j += take_j;
    i += !take_j;
  }
  out = std::copy(i, ie, out);
  std::copy(j, je, out);
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
  if (recent_.size() >= kBatch) Compact();
}

void ChangeJournal::Compact() {
  SortAndMerge(&recent_);
  // A copy the size of what is left after merging repeats; the batch
  // buffer stays for the next batch.
  runs_.emplace_back(recent_.begin(), recent_.end());
  recent_.clear();
  while (runs_.size() >= 2 && runs_[runs_.size() - 2].size() <= 2 * runs_.back().size()) {
    std::vector<Entry>& older = runs_[runs_.size() - 2];
    std::vector<Entry>& newer = runs_.back();
    // Into the spare buffer, which then trades places with older: buffers
    // are reused instead of grown, since on a VM first touching a page of
    // fresh memory costs more than copying it.
    spare_.resize(older.size() + newer.size());
    MergeByBegin(older, newer, spare_.data());
    MergeSorted(&spare_);
    older.swap(spare_);
    if (spare_.capacity() < newer.capacity()) spare_.swap(newer);
    spare_.clear();  // a buffer, never entries
    runs_.pop_back();
  }
}

size_t ChangeJournal::MemoryBytes() const {
  size_t n = (recent_.capacity() + spare_.capacity()) * sizeof(Entry) + runs_.capacity() * sizeof(std::vector<Entry>);
  for (const auto& r : runs_) n += r.capacity() * sizeof(Entry);
  return n;
}

std::vector<PageRange> ChangeJournal::ChangedSince(uint64_t since) const {
  std::vector<PageRange> out;
  for (const auto& run : runs_) {
    for (const Entry& e : run)
      if (e.epoch >= since) out.push_back({e.begin, e.end});
  }
  auto first = std::lower_bound(recent_.begin(), recent_.end(), since,
                                [](const Entry& e, uint64_t s) { return e.epoch < s; });
  for (auto it = first; it != recent_.end(); ++it) out.push_back({it->begin, it->end});
  SortAndMerge(&out);
  return out;
}

void ChangeJournal::Trim(uint64_t before) {
  size_t emptied = 0;
  for (auto& run : runs_) {
    std::erase_if(run, [before](const Entry& e) { return e.epoch < before; });
    if (!run.empty()) continue;
    // The largest emptied buffer stays as the spare: a journal read and
    // trimmed at every checkpoint then refills memory it already has.
    emptied = std::max(emptied, run.capacity());
    if (run.capacity() > spare_.capacity()) spare_.swap(run);
  }
  std::erase_if(runs_, [](const std::vector<Entry>& r) { return r.empty(); });
  auto first = std::lower_bound(recent_.begin(), recent_.end(), before,
                                [](const Entry& e, uint64_t s) { return e.epoch < s; });
  recent_.erase(recent_.begin(), first);
  // But no larger than what this trim freed or what is kept: a burst's
  // buffer is given back at the next quiet trim.
  size_t kept = recent_.size();
  for (const auto& run : runs_) kept += run.size();
  if (spare_.capacity() > 2 * std::max({emptied, kept, kBatch})) std::vector<Entry>().swap(spare_);
}

}  // namespace cvmstate

#include "sim/sorted_ranges.h"

#include <algorithm>

namespace cvmstate {
namespace {

// Index of the last of v[0, n) at or before a, 0 if none (n >= 1); key(i)
// reads v[i]'s key. Branch-free halving: the probes are unpredictable.
template <typename Key>
size_t LastAtOrBefore(size_t n, uint64_t a, Key key) {
  size_t base = 0;
  while (n > 1) {
    const size_t half = n / 2;
    base = key(base + half) <= a ? base + half : base;
    n -= half;
  }
  return base;
}

}  // namespace

SortedRanges::SortedRanges() : leaves_(1), firsts_(1, 0) {}

size_t SortedRanges::LeafFor(uint64_t a) const {
  const uint64_t* f = firsts_.data();
  return LastAtOrBefore(firsts_.size(), a, [f](size_t i) { return f[i]; });
}

void SortedRanges::Find(uint64_t a, uint64_t b, bool touching, std::vector<Range>* out) const {
  out->clear();
  // Start one range before the last that begins at or before a: with
  // touching, a range ending at a may precede one beginning at a.
  const Pos p = Locate(a);
  size_t li = p.leaf, slot = 0;
  if (p.found && p.slot > 0) {
    slot = p.slot - 1;
  } else if (p.found && li > 0) {
    --li;
    slot = leaves_[li].size() - 1;
  }
  for (; li < leaves_.size(); ++li, slot = 0) {
    const std::vector<Range>& l = leaves_[li];
    for (; slot < l.size(); ++slot) {
      const Range& r = l[slot];
      if (touching ? r.begin > b : r.begin >= b) return;
      if (touching ? r.end >= a : r.end > a) out->push_back(r);
    }
  }
}

bool SortedRanges::Overlaps(uint64_t a, uint64_t b) const {
  Find(a, b, false, &scratch_);
  return !scratch_.empty();
}

SortedRanges::Pos SortedRanges::Locate(uint64_t a) const {
  const size_t li = LeafFor(a);
  const std::vector<Range>& leaf = leaves_[li];
  if (leaf.empty() || leaf[0].begin > a) return {li, 0, false};
  const Range* r = leaf.data();
  return {li, LastAtOrBefore(leaf.size(), a, [r](size_t i) { return r[i].begin; }), true};
}

const SortedRanges::Range* SortedRanges::NextAfter(Pos p) const {
  const std::vector<Range>& leaf = leaves_[p.leaf];
  const size_t next = p.found ? p.slot + 1 : 0;
  if (next < leaf.size()) return &leaf[next];
  return p.leaf + 1 < leaves_.size() ? &leaves_[p.leaf + 1][0] : nullptr;
}

void SortedRanges::InsertAt(size_t li, size_t slot, Range r) {
  std::vector<Range>& leaf = leaves_[li];
  leaf.insert(leaf.begin() + static_cast<ptrdiff_t>(slot), r);
  firsts_[li] = leaf.front().begin;
  ++size_;
  if (leaf.size() < 2 * kLeaf) return;
  // Split in halves: the index grows by one entry per kLeaf inserts.
  std::vector<Range> upper(leaf.begin() + kLeaf, leaf.end());
  leaf.resize(kLeaf);
  firsts_.insert(firsts_.begin() + static_cast<ptrdiff_t>(li) + 1, upper.front().begin);
  leaves_.insert(leaves_.begin() + static_cast<ptrdiff_t>(li) + 1, std::move(upper));
}

void SortedRanges::EraseAt(size_t li, size_t slot) {
  std::vector<Range>& leaf = leaves_[li];
  leaf.erase(leaf.begin() + static_cast<ptrdiff_t>(slot));
  --size_;
  if (!leaf.empty()) {
    firsts_[li] = leaf.front().begin;
  } else if (leaves_.size() > 1) {
    leaves_.erase(leaves_.begin() + static_cast<ptrdiff_t>(li));
    firsts_.erase(firsts_.begin() + static_cast<ptrdiff_t>(li));
  } else {
    firsts_[0] = 0;
  }
}

void SortedRanges::Insert(uint64_t a, uint64_t b) {
  const Pos p = Locate(a);
  InsertAt(p.leaf, p.found ? p.slot + 1 : 0, Range{a, b});
}

bool SortedRanges::InsertIfFree(uint64_t a, uint64_t b) {
  const Pos p = Locate(a);
  if (p.found && leaves_[p.leaf][p.slot].end > a) return false;
  const Range* next = NextAfter(p);
  if (next != nullptr && next->begin < b) return false;
  InsertAt(p.leaf, p.found ? p.slot + 1 : 0, Range{a, b});
  return true;
}

bool SortedRanges::Erase(uint64_t a) {
  const Pos p = Locate(a);
  if (!p.found || leaves_[p.leaf][p.slot].begin != a) return false;
  EraseAt(p.leaf, p.slot);
  return true;
}

uint64_t SortedRanges::AddMerged(uint64_t a, uint64_t b) {
  // The common cases touch at most the range before a: found once, changed
  // in place or inserted beside it.
  const Pos p = Locate(a);
  const Range* next = NextAfter(p);
  if (next == nullptr || next->begin > b) {
    if (p.found) {
      Range& r = leaves_[p.leaf][p.slot];
      if (r.end >= a) {
        const uint64_t added = b > r.end ? b - r.end : 0;
        r.end = std::max(r.end, b);
        return added;
      }
    }
    InsertAt(p.leaf, p.found ? p.slot + 1 : 0, Range{a, b});
    return b - a;
  }
  Find(a, b, true, &scratch_);
  uint64_t lo = a, hi = b, had = 0;
  for (const Range& r : scratch_) {
    lo = std::min(lo, r.begin);
    hi = std::max(hi, r.end);
    had += r.end - r.begin;
    Erase(r.begin);
  }
  Insert(lo, hi);
  return (hi - lo) - had;
}

uint64_t SortedRanges::Cut(uint64_t a, uint64_t b) {
  const Pos p = Locate(a);
  const Range* next = NextAfter(p);
  if (next == nullptr || next->begin >= b) {
    // Only the range before a can lose anything.
    if (!p.found) return 0;
    Range& r = leaves_[p.leaf][p.slot];
    if (r.end <= a) return 0;
    const uint64_t removed = std::min(r.end, b) - a;
    const uint64_t tail_end = r.end;
    if (r.begin < a) {
      r.end = a;
      if (tail_end > b) InsertAt(p.leaf, p.slot + 1, Range{b, tail_end});
    } else if (tail_end > b) {
      r.begin = b;  // still between its neighbours
      firsts_[p.leaf] = leaves_[p.leaf].front().begin;
    } else {
      EraseAt(p.leaf, p.slot);
    }
    return removed;
  }
  Find(a, b, false, &scratch_);
  uint64_t removed = 0;
  for (const Range& r : scratch_) {
    Erase(r.begin);
    removed += std::min(r.end, b) - std::max(r.begin, a);
    if (r.begin < a) Insert(r.begin, a);
    if (r.end > b) Insert(b, r.end);
  }
  return removed;
}

std::vector<SortedRanges::Range> SortedRanges::All() const {
  std::vector<Range> out;
  out.reserve(size_);
  for (const auto& l : leaves_) out.insert(out.end(), l.begin(), l.end());
  return out;
}

}  // namespace cvmstate

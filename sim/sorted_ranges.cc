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

SortedRanges::Pos SortedRanges::NextPos(Pos p) const {
  const size_t next = p.found ? p.slot + 1 : 0;
  if (next < leaves_[p.leaf].size()) return {p.leaf, next, true};
  // Leaves after the first are never empty.
  return {p.leaf + 1, 0, p.leaf + 1 < leaves_.size()};
}

const SortedRanges::Range* SortedRanges::NextAfter(Pos p) const {
  const Pos n = NextPos(p);
  return n.found ? &leaves_[n.leaf][n.slot] : nullptr;
}

void SortedRanges::EraseSpan(Pos p, size_t n) {
  size_t li = p.leaf, from = p.slot;
  while (n > 0 && li < leaves_.size()) {
    std::vector<Range>& leaf = leaves_[li];
    if (from >= leaf.size()) {
      ++li;
      from = 0;
      continue;
    }
    const size_t k = std::min(n, leaf.size() - from);
    leaf.erase(leaf.begin() + static_cast<ptrdiff_t>(from), leaf.begin() + static_cast<ptrdiff_t>(from + k));
    size_ -= k;
    n -= k;
    if (!leaf.empty()) {
      if (from == 0) firsts_[li] = leaf.front().begin;
    } else if (leaves_.size() > 1) {
      leaves_.erase(leaves_.begin() + static_cast<ptrdiff_t>(li));
      firsts_.erase(firsts_.begin() + static_cast<ptrdiff_t>(li));
    } else {
      firsts_[0] = 0;
    }
  }
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
  // One search: the range before a (if it reaches a) or the one after is
  // the first to join; the others that join follow it.
  const Pos p = Locate(a);
  Pos first = p;
  if (!p.found || At(p).end < a) first = NextPos(p);
  if (!first.found || At(first).begin > b) {
    InsertAt(p.leaf, p.found ? p.slot + 1 : 0, Range{a, b});
    return b - a;
  }
  Range& r = At(first);
  const uint64_t lo = std::min(a, r.begin);
  uint64_t hi = std::max(b, r.end), had = r.end - r.begin;
  size_t joined = 0;
  Pos q = NextPos(first);
  for (; q.found && At(q).begin <= b; q = NextPos(q), ++joined) {
    hi = std::max(hi, At(q).end);
    had += At(q).end - At(q).begin;
  }
  // Widening the first range keeps the order: what lies before it ends
  // before a, what it absorbs is erased.
  r = Range{lo, hi};
  if (first.slot == 0) firsts_[first.leaf] = lo;
  if (joined > 0) EraseSpan(NextPos(first), joined);
  return (hi - lo) - had;
}

uint64_t SortedRanges::Cut(uint64_t a, uint64_t b, CutCounts* counts) {
  CutCounts c;
  const Pos p = Locate(a);
  Pos q = p;
  if (!p.found || At(p).end <= a) q = NextPos(p);
  if (!q.found || At(q).begin >= b) return 0;
  uint64_t removed = 0;
  if (At(q).begin < a) {
    // The range before a keeps its head, and its tail if it reaches past b.
    Range& r = At(q);
    const uint64_t tail_end = r.end;
    r.end = a;
    ++c.cut;
    ++c.pieces;
    if (tail_end > b) {
      InsertAt(q.leaf, q.slot + 1, Range{b, tail_end});
      ++c.pieces;
      removed = b - a;
      q = {leaves_.size(), 0, false};  // nothing else can overlap
    } else {
      removed = tail_end - a;
      q = NextPos(q);
    }
  }
  // Ranges inside [a, b) go; the one crossing b (if any) keeps its tail.
  const Pos span = q;
  size_t inside = 0;
  for (; q.found && At(q).begin < b; q = NextPos(q)) {
    Range& r = At(q);
    if (r.end <= b) {
      removed += r.end - r.begin;
      ++inside;
      continue;
    }
    removed += b - r.begin;
    r.begin = b;  // still between its neighbours
    if (q.slot == 0) firsts_[q.leaf] = b;
    ++c.cut;
    ++c.pieces;
    break;
  }
  if (inside > 0) EraseSpan(span, inside);
  c.removed = inside;
  if (counts != nullptr) {
    counts->removed += c.removed;
    counts->cut += c.cut;
    counts->pieces += c.pieces;
  }
  return removed;
}

std::vector<SortedRanges::Range> SortedRanges::All() const {
  std::vector<Range> out;
  out.reserve(size_);
  for (const auto& l : leaves_) out.insert(out.end(), l.begin(), l.end());
  return out;
}

bool SortedRanges::Valid() const {
  if (leaves_.empty() || leaves_.size() != firsts_.size()) return false;
  size_t n = 0;
  const Range* prev = nullptr;
  for (size_t li = 0; li < leaves_.size(); ++li) {
    const std::vector<Range>& l = leaves_[li];
    if (l.empty()) {
      if (leaves_.size() != 1 || firsts_[0] != 0) return false;
      continue;
    }
    if (firsts_[li] != l.front().begin || l.size() >= 2 * kLeaf) return false;
    for (const Range& r : l) {
      if (r.begin >= r.end || (prev != nullptr && prev->end > r.begin)) return false;
      prev = &r;
    }
    n += l.size();
  }
  return n == size_;
}

}  // namespace cvmstate

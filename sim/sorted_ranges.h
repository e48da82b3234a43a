// SortedRanges: disjoint [begin, end) ranges sorted by begin, for the
// simulations' tables (VFIO mappings, KVM private ranges).
//
// A std::map costs a walk of a deep tree of scattered nodes per search,
// most of a conversion's time once the table holds tens of thousands of
// ranges. Here ranges sit in leaves of at most 2 * kLeaf entries under a
// sorted vector of the leaves' first begins: a search reads that small
// index and one leaf; an insert or erase moves at most one leaf (and the
// index when a leaf splits or empties). The merged operations (AddMerged,
// Cut) search once and then work from that position, however many ranges
// they join or remove. Not thread-safe.
#ifndef CVMSTATE_SIM_SORTED_RANGES_H_
#define CVMSTATE_SIM_SORTED_RANGES_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cvmstate {

class SortedRanges {
 public:
  static constexpr size_t kLeaf = 32;

  struct Range {
    uint64_t begin, end;
  };

  SortedRanges();

  size_t size() const { return size_; }

  // Appends to *out (cleared first) every range that overlaps [a, b), or
  // with touching = true also those that end at a or begin at b. Requires
  // a < b.
  void Find(uint64_t a, uint64_t b, bool touching, std::vector<Range>* out) const;
  // True if a range overlaps [a, b). Requires a < b.
  bool Overlaps(uint64_t a, uint64_t b) const;

  // Adds [a, b), which must overlap no range (not checked: callers find
  // first). Requires a < b.
  void Insert(uint64_t a, uint64_t b);
  // Adds [a, b) if it overlaps no range (one search); false, changing
  // nothing, if it does. Requires a < b.
  [[nodiscard]] bool InsertIfFree(uint64_t a, uint64_t b);
  // Removes the range that begins at a; false if there is none.
  bool Erase(uint64_t a);

  // Adds [a, b) merged with every range it overlaps or touches, so ranges
  // stay maximal; returns the bytes that were not in a range before.
  uint64_t AddMerged(uint64_t a, uint64_t b);
  // What a Cut did to the ranges it met.
  struct CutCounts {
    uint64_t removed = 0;  // ranges inside [a, b), gone
    uint64_t cut = 0;      // ranges crossing a or b, shortened or split
    uint64_t pieces = 0;   // what is left of the cut ones (one each, two for a split)
  };
  // Removes [a, b) from the ranges, cutting those that cross a or b;
  // returns the bytes removed and, if counts is not null, adds to *counts.
  uint64_t Cut(uint64_t a, uint64_t b, CutCounts* counts = nullptr);

  // Every range, ascending.
  std::vector<Range> All() const;

  // Whether the internal invariants hold (sorted, disjoint, each leaf's
  // index entry its first begin, only a lone first leaf empty, the size);
  // O(size), for tests.
  bool Valid() const;

 private:
  // Where the last range that begins at or before a is: leaves_[leaf][slot]
  // if found; else there is none and leaf is 0 (slot 0 is where a goes).
  struct Pos {
    size_t leaf, slot;
    bool found;
  };
  // Leaf holding the last range that begins at or before a (leaf 0 if none).
  size_t LeafFor(uint64_t a) const;
  Pos Locate(uint64_t a) const;
  // The range after p's (the first range if none was found), or null.
  const Range* NextAfter(Pos p) const;
  // Position of that range; leaf == leaves_.size() if there is none.
  Pos NextPos(Pos p) const;
  Range& At(Pos p) { return leaves_[p.leaf][p.slot]; }
  // Removes n consecutive ranges, the first at p (in place, leaf by leaf).
  void EraseSpan(Pos p, size_t n);
  void InsertAt(size_t leaf, size_t slot, Range r);
  void EraseAt(size_t leaf, size_t slot);
  std::vector<std::vector<Range>> leaves_;  // never empty; only leaf 0 may be
  std::vector<uint64_t> firsts_;            // firsts_[i]: leaves_[i][0].begin (0 for an empty leaf 0)
  size_t size_ = 0;
  mutable std::vector<Range> scratch_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_SIM_SORTED_RANGES_H_

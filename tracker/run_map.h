// RunMap: the state of every page of one RAM block, stored as runs.
//
// The page range [0, pages) is cut into chunks of 2^chunk_shift pages. A
// directory holds one entry per stretch of chunks: a *uniform* entry covers
// one or more whole chunks of one state and owns no heap memory; a *list*
// entry covers one chunk and holds its sorted run starts (2 bytes) and
// states (1 byte); a *dense* entry covers one chunk with two bits a page,
// used once a list would hold more than ListMaxRuns() runs. Memory is
// O(runs), never above about 2 bits a page plus a 16-byte entry per chunk,
// and a block of any size starts as one entry: O(1) to declare.
//
// The directory starts sparse (sorted by first chunk, in segments of at
// most kSegmentMax entries under a sorted index of their first chunks, so
// that a search reads the index and one segment and an insert moves at
// most one segment: O(log n) plus a segment per conversion, in any order)
// and turns flat (entry i is chunk i, found by index) once it would hold an
// eighth of the chunks anyway, for blocks of at most kMaxFlatChunks chunks.
//
// Chunking is invisible from outside: ForEachRun reports maximal runs.
// Not thread-safe; callers serialize access.
#ifndef CVMSTATE_RUN_MAP_H_
#define CVMSTATE_RUN_MAP_H_

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "tracker/page_range.h"
#include "tracker/page_state.h"

namespace cvmstate {

struct Run {
  uint64_t begin;  // first page
  uint64_t end;    // one past the last page
  PageState state;
};

// Pages per state (indexed by PageState value).
using StateCounts = std::array<uint64_t, kNumPageStates>;

class RunMap {
 public:
  static constexpr unsigned kDefaultChunkShift = 16;  // 65536 pages: 256 MiB at 4 KiB
  static constexpr unsigned kMinChunkShift = 6;
  static constexpr unsigned kMaxChunkShift = 16;      // run starts are 16-bit
  // A directory at most this many chunks long turns flat (one entry per
  // chunk, found by index) once it holds an eighth of them anyway.
  static constexpr uint64_t kMaxFlatChunks = uint64_t{1} << 22;

  // A map of `pages` pages (may be 0), all in state `initial`. chunk_shift
  // is clamped to [kMinChunkShift, kMaxChunkShift]; small values exist so
  // tests can reach every chunk form with few pages.
  RunMap(uint64_t pages, PageState initial, unsigned chunk_shift = kDefaultChunkShift);
  ~RunMap();
  RunMap(RunMap&& other) noexcept;
  RunMap& operator=(RunMap&& other) noexcept;
  RunMap(const RunMap&) = delete;
  RunMap& operator=(const RunMap&) = delete;

  uint64_t pages() const { return pages_; }
  unsigned chunk_shift() const { return shift_; }
  uint64_t num_chunks() const { return (pages_ + chunk_pages() - 1) >> shift_; }
  uint64_t chunk_pages() const { return uint64_t{1} << shift_; }

  // State of one page. Requires page < pages().
  PageState Get(uint64_t page) const;

  // Sets pages [begin, end) to `state`. Requires begin < end <= pages().
  // If `changed` is not null, adds to it the number of pages that had each
  // old state and now differ (changed[state] is left alone).
  void Assign(uint64_t begin, uint64_t end, PageState state, StateCounts* changed = nullptr) {
    // The hot path of fragmented maps, inline: one page of a dense chunk
    // that is not due for its recount (everything else, the recount
    // included, goes through AssignAny). Back-to-back conversions here are
    // bound by instruction count, not by memory, so each test is one load
    // and one comparison (flat_pages_, the tagged count, page_mask_): 3.0
    // against 3.28 ns a conversion on a dense `frag` 4 GiB (the bitmap 2.47).
    if (end == begin + 1 && begin < flat_pages_) {
      Entry& e = dir_[begin >> shift_];
      if (e.count > kDenseTag + 1) {
        uint64_t* w = static_cast<uint64_t*>(e.data);
        const uint64_t local = begin & page_mask_;
        const unsigned sv = static_cast<unsigned>(state);
        if (changed != nullptr) {
          const unsigned old = DenseGet(w, local);
          (*changed)[old] += old != sv;
        }
        DenseSet(w, local, sv);
        --e.count;
        return;
      }
    }
    AssignAny(begin, end, state, changed);
  }

  // Calls fn(const Run&) for each maximal run that intersects [begin, end),
  // clipped to it, in ascending order. fn returns false to stop early.
  template <typename Fn>
  void ForEachRun(uint64_t begin, uint64_t end, Fn&& fn) const;
  template <typename Fn>
  void ForEachRun(Fn&& fn) const { ForEachRun(0, pages_, static_cast<Fn&&>(fn)); }

  // Calls fn(begin, end) for each maximal run of state s that intersects
  // [begin, end), clipped to it, ascending. Faster than filtering
  // ForEachRun: it skips other states without materialising their runs.
  // fn returns void, or bool: false to stop.
  template <typename Fn>
  void ForEachRunOf(PageState s, uint64_t begin, uint64_t end, Fn&& fn) const;

  // The runs ForEachRunOf reports, handed over in batches: calls
  // fn(const PageRange* runs, size_t n), 1 <= n <= kRunBatch, ascending and
  // in the same order; the array is valid only during the call. fn returns
  // void, or bool: false to stop. Cheaper per run than ForEachRunOf where
  // lists hold several runs of s: with AVX-512 (VBMI2, detected at run
  // time) a list's runs of s are gathered 32 at a time without a branch
  // per run.
  static constexpr size_t kRunBatch = 256;
  template <typename Fn>
  void ForEachRunBatchOf(PageState s, uint64_t begin, uint64_t end, Fn&& fn) const;

  // Number of maximal runs (O(entries + runs)).
  uint64_t CountRuns() const;
  // Pages per state (O(entries + runs)).
  StateCounts CountStates() const;

  // Heap bytes this map holds: the directory's capacity plus every chunk's
  // allocation, counted exactly as requested from the allocator.
  size_t MemoryBytes() const;
  // Recounts every dense chunk now, turning those that fit a list (or hold
  // one state) back into one. Dense chunks otherwise recount only every
  // kDenseRecheck small conversions, so one thinned out page by page can
  // keep its 16 KiB for a while. Costs a scan of every dense chunk (each
  // stops early once it has counted enough runs to stay dense).
  void CompactDense();

  // Chunk forms in use, for tests and reports.
  struct Shape {
    uint64_t entries = 0, uniform = 0, list = 0, dense = 0;
  };
  Shape GetShape() const;

 private:
  // Where a directory entry is: flat, dir_[idx]; sparse,
  // segs_[seg].entries[idx].
  struct Pos {
    size_t seg = 0, idx = 0;
    bool operator==(const Pos&) const = default;
  };

 public:
  // A cursor over maximal runs of [begin, end); what ForEachRun uses.
  class Cursor {
   public:
    Cursor(const RunMap& map, uint64_t begin, uint64_t end);
    // Stores the next run in *out; false when there are no more.
    bool Next(Run* out);

   private:
    bool NextPiece(Run* out);  // next chunk-local piece, not merged
    const RunMap& map_;
    uint64_t end_;
    uint64_t pos_;          // first page not yet reported
    Pos entry_;             // directory entry holding pos_
    uint32_t list_index_;   // position within a list entry
    bool have_pending_ = false;
    Run pending_{};
  };

 private:
  enum Kind : uint8_t { kUniform = 0, kList = 1, kDense = 2 };
  // Bits of Entry::cap: a list's capacity, and so its count, stays below
  // 2^kCapBits.
  static constexpr unsigned kCapBits = 13;
  struct Entry {
    void* data;       // list: uint16_t starts[cap] then uint8_t states[cap]; dense: uint64_t[]
    uint32_t count;   // list: runs held; dense: kDenseTag + conversions left until RecheckDense
    uint16_t cap : kCapBits;  // list: capacity in runs
    // list: bit s set where the list may hold a run of state s. A superset,
    // set when a run of s is written and exact again only when the list is
    // rebuilt, so that a walk of one state passes lists without it unread.
    uint16_t holds : kNumPageStates;
    uint8_t kind;
    uint8_t state;    // uniform: its state; list: see Fragmenting()
  };
  static_assert(kCapBits + kNumPageStates <= 16, "cap and holds must share one uint16_t");
  static Entry UniformEntry(uint8_t state) {
    return Entry{
        .data = nullptr, .count = 0, .cap = 0, .holds = 0, .kind = kUniform, .state = state};
  }
  static bool MayHold(const Entry& e, unsigned s) { return ((e.holds >> s) & 1) != 0; }
  static const uint16_t* Starts(const Entry& e) { return static_cast<const uint16_t*>(e.data); }
  static const uint8_t* States(const Entry& e) {
    return static_cast<const uint8_t*>(e.data) + size_t{e.cap} * sizeof(uint16_t);
  }
  static size_t ListBytes(uint32_t cap) { return size_t{cap} * (sizeof(uint16_t) + 1); }

  // A sparse segment: entries and their first chunks, never empty.
  struct Segment {
    std::vector<Entry> entries;
    std::vector<uint64_t> keys;
  };
  // A segment splits in halves above this many entries, and one that falls
  // below a quarter of it merges with a neighbour when they fit together.
  static constexpr size_t kSegmentMax = 512;

  uint64_t ChunkBegin(uint64_t chunk) const { return chunk << shift_; }
  uint64_t ChunkLen(uint64_t chunk) const { return std::min(chunk_pages(), pages_ - ChunkBegin(chunk)); }
  Entry& At(Pos p) { return flat_ ? dir_[p.idx] : segs_[p.seg].entries[p.idx]; }
  const Entry& At(Pos p) const { return flat_ ? dir_[p.idx] : segs_[p.seg].entries[p.idx]; }
  uint64_t FirstChunk(Pos p) const { return flat_ ? p.idx : segs_[p.seg].keys[p.idx]; }
  Pos End() const { return flat_ ? Pos{0, dir_.size()} : Pos{segs_.size(), 0}; }
  bool IsEnd(Pos p) const { return flat_ ? p.idx >= dir_.size() : p.seg >= segs_.size(); }
  Pos Next(Pos p) const {
    if (flat_ || p.idx + 1 < segs_[p.seg].entries.size()) return Pos{p.seg, p.idx + 1};
    return Pos{p.seg + 1, 0};
  }
  // Requires p to be an entry other than the first.
  Pos Prev(Pos p) const {
    if (flat_ || p.idx > 0) return Pos{p.seg, p.idx - 1};
    return Pos{p.seg - 1, segs_[p.seg - 1].entries.size() - 1};
  }
  uint64_t EndChunk(Pos p) const {
    const Pos n = Next(p);
    return IsEnd(n) ? num_chunks() : FirstChunk(n);
  }
  size_t NumEntries() const { return flat_ ? dir_.size() : sparse_entries_; }
  // Above this many runs a list chunk turns dense: past the break-even with
  // the dense form, capped so that inserting into a list stays cheap.
  static constexpr uint32_t kListMaxRunsCap = 512;
  static_assert(kListMaxRunsCap * 2 < (1u << kCapBits), "a list's capacity must fit Entry::cap");
  uint32_t ListMaxRuns() const {
    uint64_t even = chunk_pages() / 12;
    return static_cast<uint32_t>(even < 2 ? 2 : (even > kListMaxRunsCap ? kListMaxRunsCap : even));
  }
  // A list's state byte counts (up to 255) the conversions that changed
  // it other than by cutting a single page out of a run inside the list.
  // Past kFragmentingRuns runs, a list that grew almost only by such cuts
  // (more than 16 runs for each other change) is fragmenting: random
  // single pages. It turns dense at once, sparing it the costlier three
  // quarters of its list inserts (it would turn dense anyway). A guest's
  // layout grows otherwise: its conversions extend, merge and replace runs
  // too, and where they cut runs in three they cut out ranges (buffers,
  // balloon extents), whose chunks end with far fewer runs than random
  // pages leave, and which a walk of one state crosses over ten times
  // faster as a list than as dense words (the 256 GiB CVM-like trace's
  // chunks of 129-151 runs: 47-66 against 720-820 ns, turned dense they
  // took a fifth of its scan).
  // A stream or a load writes a chunk's runs in order, changing the list's
  // last run each time. All of these stay lists up to ListMaxRuns(). A
  // fragmenting chunk turned dense holds at least 129 runs (128 bytes a
  // run at most; a migration destination over its memory budget turns
  // those of at most 256 runs back into lists, which then stay lists up
  // to ListMaxRuns()). At 64 (when any cut counted) the dense CVM-like
  // traces' memory doubled; at 128 it did not change. Only where
  // ListMaxRuns() is the cap (large chunks).
  static constexpr uint32_t kFragmentingRuns = 128;
  bool Fragmenting(const Entry& e, uint32_t runs) const {
    return runs > kFragmentingRuns && ListMaxRuns() == kListMaxRunsCap && uint32_t{e.state} * 16 < runs;
  }
  // Bit i set where p[i] == s, for i < 8: a byte equal to s leaves a 1 in
  // its low bit (states are below 4), gathered by one multiplication.
  static uint64_t MatchStates8(const uint8_t* p, unsigned s) {
    constexpr uint64_t kBytes = 0x0101010101010101ULL;
    uint64_t x;
    std::memcpy(&x, p, sizeof x);
    x ^= kBytes * s;
    const uint64_t m = ~(x | (x >> 1)) & kBytes;
    return (m * 0x0102040810204080ULL) >> 56;
  }
  // Bit i set where p[i] == s, for i < 64: compared 16 bytes at a time
  // (SSE2) or 8 (MatchStates8).
  static uint64_t MatchStates64(const uint8_t* p, unsigned s) {
    uint64_t mask = 0;
#if defined(__SSE2__)
    const __m128i want = _mm_set1_epi8(static_cast<char>(s));
    for (unsigned j = 0; j < 64; j += 16) {
      const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + j));
      mask |= uint64_t{static_cast<uint16_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(x, want)))} << j;
    }
#else
    for (unsigned j = 0; j < 64; j += 8) mask |= MatchStates8(p + j, s) << j;
#endif
    return mask;
  }
  size_t DenseWords(uint64_t len) const { return (len + 31) / 32; }
  // A dense chunk holds 2 bits a page, 32 pages a word.
  static unsigned DenseGet(const uint64_t* w, uint64_t p) {
    return static_cast<unsigned>((w[p >> 5] >> ((p & 31) * 2)) & 3);
  }
  static void DenseSet(uint64_t* w, uint64_t p, unsigned s) {
    const unsigned sh = static_cast<unsigned>(p & 31) * 2;
    w[p >> 5] = (w[p >> 5] & ~(uint64_t{3} << sh)) | (uint64_t{s} << sh);
  }
  // Dense chunks do not count their runs on every conversion (that would
  // triple the cost of a single-page one); they recount after this many
  // small conversions, or after any large one.
  static constexpr uint32_t kDenseRecheck = 1024;
  // A dense entry's count carries this bit, which no list's count (at most
  // its capacity) or uniform entry's (0) reaches, so that one comparison,
  // count > kDenseTag + 1, says "dense and not due for its recount".
  static constexpr uint32_t kDenseTag = uint32_t{1} << 31;
  static_assert(kDenseTag > (1u << kCapBits),
                "a list's count, at most its capacity, must stay below the tag");

  // The walk behind ForEachRunOf and ForEachRunBatchOf. one(a, b) reports
  // a run; many(st, mask, eb) reports, for each bit i of mask, the run of a
  // list chunk starting at eb + st[i] and ending at eb + st[i + 1] (never
  // its list's first or last run, so maximal as it is). Both return false
  // to stop.
  template <typename One, typename Many>
  void WalkRunsOf(PageState s, uint64_t begin, uint64_t end, One&& one, Many&& many) const;
  // Writes the runs many() reports to out, ascending; returns how many
  // (the bits set in mask, at most 64). It may also write past them, never
  // past out[63]: out must have room for 64 runs.
  using ExpandRunsFn = size_t (*)(const uint16_t* st, uint64_t mask, uint64_t eb, PageRange* out);
  // The ExpandRunsFn without SIMD, a run at a time.
  static size_t ExpandRunsOneByOne(const uint16_t* st, uint64_t mask, uint64_t eb, PageRange* out) {
    size_t n = 0;
    while (mask != 0) {
      const unsigned r = static_cast<unsigned>(std::countr_zero(mask));
      mask &= mask - 1;
      out[n++] = PageRange{eb + st[r], eb + st[r + 1]};
    }
    return n;
  }
  // The ExpandRunsFn for this CPU (AVX-512 where it has it, unless simd is
  // false), chosen once; a walk asks once, then calls it directly.
  static ExpandRunsFn ExpandRuns(bool simd = true);
  // The first word in [from, nw) of a dense chunk that holds a page whose
  // state is (want) or is not (!want) the one pat repeats (kLo * state);
  // nw if there is none. Where a walk of one state crosses the words between
  // runs, or a long run, in a dense chunk.
  using FindWordFn = uint64_t (*)(const uint64_t* w, uint64_t from, uint64_t nw, uint64_t pat,
                                  bool want);
  // The FindWordFn for this CPU (AVX-512, eight words a step, where it has
  // it, unless simd is false; four words a step without SIMD), chosen once.
  static FindWordFn FindWord(bool simd = true);
  // Words a dense walk reads itself before it calls find_word.
  static constexpr uint64_t kNearWords = 4;
  friend struct RunMapTestPeer;  // tests both ExpandRunsFn and both FindWordFn

  void AssignAny(uint64_t begin, uint64_t end, PageState s, StateCounts* changed);
  Pos FindEntry(uint64_t chunk) const;
  Pos SplitAt(uint64_t chunk);  // ensures an entry starts at chunk; returns where it is
  void AssignInChunk(uint64_t chunk, uint32_t a, uint32_t b, PageState s, StateCounts* changed);
  void AssignWholeChunks(uint64_t c0, uint64_t c1, PageState s, StateCounts* changed);
  void ListAssign(Entry& e, uint32_t len, uint32_t a, uint32_t b, PageState s, StateCounts* changed);
  void DenseAssign(Entry& e, uint32_t len, uint32_t a, uint32_t b, PageState s, StateCounts* changed);
  void ListToDense(Entry& e, uint32_t len);
  void DenseToList(Entry& e, uint32_t len, uint32_t runs);
  // Counts a dense chunk's runs and turns it into a list or uniform entry
  // when that is smaller.
  void RecheckDense(Entry& e, uint32_t len);
  void MakeUniform(Entry& e, PageState s);
  void ReserveList(Entry& e, uint32_t need);
  void FreeEntry(Entry& e);
  void AddEntryStates(const Entry& e, uint64_t len, StateCounts* counts) const;
  // Sparse only: inserts e before position at (at.idx may be one past its
  // segment's last entry) and returns where it went.
  Pos InsertEntry(Pos at, uint64_t first_chunk, const Entry& e);
  // Sparse only: removes the entries [from, to).
  void EraseEntries(Pos from, Pos to);
  void MergeSmallSegment(size_t seg);
  void MakeFlat();

  uint64_t pages_;
  unsigned shift_;
  std::vector<Entry> dir_;         // flat: entry i covers exactly chunk i; empty when sparse
  std::vector<Segment> segs_;      // sparse: the entries in order; empty when flat
  std::vector<uint64_t> seg_keys_;  // sparse: first chunk of each segment
  size_t sparse_entries_ = 0;
  bool flat_ = false;
  // For Assign's inline path, one load each: pages_ when flat, else 0; and
  // chunk_pages() - 1.
  uint64_t flat_pages_ = 0;
  uint64_t page_mask_;
  size_t chunk_bytes_ = 0;  // bytes held by list and dense chunks
};

template <typename Fn>
void RunMap::ForEachRun(uint64_t begin, uint64_t end, Fn&& fn) const {
  Cursor c(*this, begin, end);
  Run r;
  while (c.Next(&r)) {
    if (!fn(static_cast<const Run&>(r))) return;
  }
}

template <typename Fn>
void RunMap::ForEachRunOf(PageState s, uint64_t begin, uint64_t end, Fn&& fn) const {
  // A void fn never stops the walk, and its checks compile away.
  auto call = [&](uint64_t a, uint64_t b) -> bool {
    if constexpr (std::is_void_v<decltype(fn(a, b))>) {
      fn(a, b);
      return true;
    } else {
      return fn(a, b);
    }
  };
  WalkRunsOf(s, begin, end, call, [&](const uint16_t* st, uint64_t mask, uint64_t eb) -> bool {
    while (mask != 0) {
      const unsigned r = static_cast<unsigned>(std::countr_zero(mask));
      mask &= mask - 1;
      if (!call(eb + st[r], eb + st[r + 1])) return false;
    }
    return true;
  });
}

template <typename Fn>
void RunMap::ForEachRunBatchOf(PageState s, uint64_t begin, uint64_t end, Fn&& fn) const {
  PageRange runs[kRunBatch];
  size_t n = 0;
  bool stopped = false;
  auto flush = [&]() -> bool {
    if constexpr (std::is_void_v<decltype(fn(static_cast<const PageRange*>(runs), n))>) {
      fn(static_cast<const PageRange*>(runs), n);
    } else {
      stopped = !fn(static_cast<const PageRange*>(runs), n);
    }
    n = 0;
    return !stopped;
  };
  auto one = [&](uint64_t a, uint64_t b) -> bool {
    runs[n++] = PageRange{a, b};
    return n < kRunBatch || flush();
  };
  const ExpandRunsFn expand = ExpandRuns();
  WalkRunsOf(s, begin, end, one, [&](const uint16_t* st, uint64_t mask, uint64_t eb) -> bool {
    // A mask holds at most 64 runs.
    if (n > kRunBatch - 64 && !flush()) return false;
    // One or two runs: inline, cheaper than the call.
    const uint64_t beyond_one = mask & (mask - 1);
    n += (beyond_one & (beyond_one - 1)) == 0 ? ExpandRunsOneByOne(st, mask, eb, runs + n)
                                              : expand(st, mask, eb, runs + n);
    // Full: hand it over before one() writes again.
    return n < kRunBatch || flush();
  });
  if (n != 0 && !stopped) (void)flush();
}

template <typename One, typename Many>
void RunMap::WalkRunsOf(PageState s, uint64_t begin, uint64_t end, One&& call, Many&& many) const {
  if (end > pages_) end = pages_;
  if (begin >= end) return;
  const unsigned sv = static_cast<unsigned>(s);
  // A run of s that ends where its entry ends stays pending, since the
  // next entry may continue it; runs inside an entry are maximal already.
  bool open = false;
  uint64_t rb = 0, re = 0;
  auto emit = [&](uint64_t a, uint64_t b, bool at_entry_end) -> bool {
    if (open) {
      if (re == a) {
        a = rb;
      } else if (!call(rb, re)) {
        return false;
      }
      open = false;
    }
    if (at_entry_end) {
      open = true;
      rb = a;
      re = b;
      return true;
    }
    return call(a, b);
  };
  constexpr uint64_t kLo = 0x5555555555555555ULL;
  const FindWordFn find_word = FindWord();
  for (Pos i = FindEntry(begin >> shift_); !IsEnd(i); i = Next(i)) {
    const Entry& e = At(i);
    uint64_t eb = ChunkBegin(FirstChunk(i));
    if (eb >= end) break;
    uint64_t ee = std::min(ChunkBegin(EndChunk(i)), pages_);
    const bool clip = eb < begin || ee > end;
    if (e.kind == kUniform) {
      if (e.state == sv && !emit(std::max(eb, begin), std::min(ee, end), true)) return;
    } else if (e.kind == kList && !clip) {
      // A list without a run of s is passed unread; a pending run is
      // reported with the next run of s, since it cannot continue past it.
      if (!MayHold(e, sv)) continue;
      // Find the runs of s 64 at a time without a branch per run: compare
      // the state bytes into a mask, then report its set bits. Only the list's first run (which may
      // continue a pending run) and last run (which the next entry may
      // continue) go through emit; the runs between are maximal and go
      // straight to fn, so the scan costs the list's bytes plus the runs
      // it reports.
      const uint16_t* st = Starts(e);
      const uint8_t* ss = States(e);
      const uint32_t n = e.count;
      // Each list is an allocation of its own: fetch the next one while
      // this one is read.
      if (const Pos next = Next(i);
          !IsEnd(next) && At(next).kind == kList && MayHold(At(next), sv)) {
        __builtin_prefetch(States(At(next)));
        __builtin_prefetch(At(next).data);
      }
      // 64 states at a time. The last, partial, group is read as the 64
      // bytes that end at the list's last state, shifted down: the bytes
      // before the list's states are its run starts, in the allocation
      // once its capacity is 32 runs or more. This keeps the loop free of
      // a branch on the count, which mispredicted on most lists.
      const bool overlap_tail = e.cap >= 32;
      for (uint32_t k0 = 0; k0 < n; k0 += 64) {
        const uint32_t lim = std::min<uint32_t>(n - k0, 64);
        uint64_t mask;
        if (lim == 64) {
          mask = MatchStates64(ss + k0, sv);
        } else if (overlap_tail) {
          mask = MatchStates64(ss + k0 + lim - 64, sv) >> (64 - lim);
        } else {
          // Whole words up to the count rounded up to 8: a list's
          // capacity is a multiple of 8 and states past its count are
          // initialised (ReserveList); their bits are masked off.
          mask = 0;
          for (uint32_t j = 0; j < lim; j += 8) mask |= MatchStates8(ss + k0 + j, sv) << j;
          mask &= (uint64_t{1} << lim) - 1;
        }
        if (k0 == 0 && (mask & 1) != 0) {
          // The first run, through emit: a pending run may continue it.
          if (!emit(eb, n > 1 ? eb + st[1] : ee, n == 1)) return;
          mask &= mask - 1;
        } else if (k0 == 0 && open) {
          open = false;
          if (!call(rb, re)) return;
        }
        const bool last = k0 + lim == n && (mask >> (lim - 1)) != 0;
        if (last) mask &= ~(uint64_t{1} << (lim - 1));
        if (mask != 0 && !many(st + k0, mask, eb)) return;
        if (last) {
          // The last run stays pending: the next entry may continue it.
          open = true;
          rb = eb + st[n - 1];
          re = ee;
        }
      }
    } else {
      // Dense entries, and the clipped first and last list entries: walk
      // the runs of s with the cursor's piece rules.
      const uint64_t lb = std::max(eb, begin), le = std::min(ee, end);
      if (e.kind == kList) {
        const uint16_t* st = Starts(e);
        const uint8_t* ss = States(e);
        for (uint32_t k = 0; k < e.count; ++k) {
          uint64_t a = std::max(eb + st[k], lb), b = std::min(k + 1 < e.count ? eb + st[k + 1] : ee, le);
          if (ss[k] == sv && a < b && !emit(a, b, b == le)) return;
        }
        continue;
      }
      const uint64_t* w = static_cast<const uint64_t*>(e.data);
      const uint64_t pat = kLo * sv;
      const uint64_t len = le - eb, nw = (len + 31) >> 5;
      uint64_t p = lb - eb;
      while (p < len) {
        // Next page of state s, then the next page of another state. Most
        // gaps end within a few words (fragmented chunks), read here; past
        // those, find_word crosses the rest several words a step. (The two
        // searches as one lambda taking the sense made this walk 9% slower
        // on `frag` 4 GiB and, through the code around it, `steady`'s
        // walk of lists 13% slower.)
        uint64_t wi = p >> 5, t = w[wi] ^ pat;
        uint64_t hit = ~(t | (t >> 1)) & kLo & (~uint64_t{0} << (2 * (p & 31)));
        for (const uint64_t near = std::min(nw, wi + kNearWords); hit == 0 && ++wi < near;) {
          t = w[wi] ^ pat;
          hit = ~(t | (t >> 1)) & kLo;
        }
        if (hit == 0) {
          if (wi >= nw || (wi = find_word(w, wi, nw, pat, true)) == nw) break;
          t = w[wi] ^ pat;
          hit = ~(t | (t >> 1)) & kLo;
        }
        const uint64_t a = (wi << 5) + (static_cast<unsigned>(__builtin_ctzll(hit)) >> 1);
        if (a >= len) break;
        uint64_t miss = (t | (t >> 1)) & kLo & (~uint64_t{0} << (2 * (a & 31)));
        for (const uint64_t near = std::min(nw, wi + kNearWords); miss == 0 && ++wi < near;) {
          t = w[wi] ^ pat;
          miss = (t | (t >> 1)) & kLo;
        }
        if (miss == 0 && wi < nw && (wi = find_word(w, wi, nw, pat, false)) < nw) {
          t = w[wi] ^ pat;
          miss = (t | (t >> 1)) & kLo;
        }
        const uint64_t b = miss == 0 ? len : std::min(len, (wi << 5) + (static_cast<unsigned>(__builtin_ctzll(miss)) >> 1));
        if (!emit(eb + a, eb + b, b == len)) return;
        p = b;
      }
    }
  }
  if (open) (void)call(rb, re);
}

}  // namespace cvmstate

#endif  // CVMSTATE_RUN_MAP_H_

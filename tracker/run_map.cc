#include "tracker/run_map.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace cvmstate {
namespace {

// Dense chunks keep 32 pages a word, page p at bits 2*(p%32).
constexpr uint64_t kLo = 0x5555555555555555ULL;

inline uint64_t Pattern(unsigned s) { return kLo * s; }

// Set bits of x, which has them in even positions only (a bit a page).
// Without the POPCNT instruction (the baseline x86-64 target) std::popcount
// is a call into libgcc, where dense chunks' recounts spent about a tenth
// of a fragmenting map's conversion time. With the bits two apart, the
// bit-parallel count starts at its second step.
inline unsigned CountPageBits(uint64_t x) {
#if defined(__POPCNT__) || !(defined(__x86_64__) || defined(__i386__))
  return static_cast<unsigned>(std::popcount(x));
#else
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<unsigned>((x * 0x0101010101010101ULL) >> 56);
#endif
}

// Mask of the bits of groups [from, to) of a word, 0 <= from < to <= 32.
inline uint64_t GroupMask(unsigned from, unsigned to) {
  uint64_t hi = to >= 32 ? ~uint64_t{0} : ((uint64_t{1} << (2 * to)) - 1);
  uint64_t lo = (uint64_t{1} << (2 * from)) - 1;
  return hi & ~lo;
}

// Adds the pages of [a, b) by state into counts.
void DenseCountStates(const uint64_t* w, uint64_t a, uint64_t b, StateCounts* counts) {
  while (a < b) {
    uint64_t wi = a >> 5;
    unsigned from = a & 31;
    unsigned to = static_cast<unsigned>(std::min<uint64_t>(32, from + (b - a)));
    uint64_t m = GroupMask(from, to) & kLo;
    uint64_t x = w[wi];
    uint64_t lo = x & kLo, hi = (x >> 1) & kLo;
    (*counts)[0] += CountPageBits(m & ~lo & ~hi);
    (*counts)[1] += CountPageBits(m & lo & ~hi);
    (*counts)[2] += CountPageBits(m & hi & ~lo);
    a += to - from;
  }
}

// Counts positions p in [p0, p1), p0 >= 1, whose state differs from p-1's,
// stopping early once the count exceeds `limit`.
uint64_t DenseBoundaries(const uint64_t* w, uint64_t p0, uint64_t p1, uint64_t limit = UINT64_MAX) {
  uint64_t n = 0;
  while (p0 < p1 && n <= limit) {
    uint64_t wi = p0 >> 5;
    unsigned from = p0 & 31;
    if (from == 0 && p1 - p0 >= 32) {
      // Whole words, in a shorter loop: a fragmented dense chunk's
      // recount spends its time here.
      const uint64_t last = p1 >> 5;
      uint64_t before = wi > 0 ? w[wi - 1] >> 62 : 0;
      for (; wi < last && n <= limit; ++wi) {
        const uint64_t x = w[wi];
        const uint64_t t = x ^ ((x << 2) | before);
        before = x >> 62;
        n += CountPageBits((t | (t >> 1)) & kLo);
      }
      p0 = wi << 5;
      continue;
    }
    unsigned to = static_cast<unsigned>(std::min<uint64_t>(32, from + (p1 - p0)));
    uint64_t x = w[wi];
    uint64_t prev = (x << 2) | (wi > 0 ? (w[wi - 1] >> 62) : 0);
    uint64_t t = x ^ prev;
    n += CountPageBits((t | (t >> 1)) & kLo & GroupMask(from, to));
    p0 += to - from;
  }
  return n;
}

void DenseFill(uint64_t* w, uint64_t a, uint64_t b, unsigned s) {
  const uint64_t pat = Pattern(s);
  while (a < b) {
    uint64_t wi = a >> 5;
    unsigned from = a & 31;
    if (from == 0 && b - a >= 32) {
      uint64_t full = (b - a) >> 5;
      std::fill(w + wi, w + wi + full, pat);
      a += full << 5;
      continue;
    }
    unsigned to = static_cast<unsigned>(std::min<uint64_t>(32, from + (b - a)));
    uint64_t m = GroupMask(from, to);
    w[wi] = (w[wi] & ~m) | (pat & m);
    a += to - from;
  }
}

// First page in [p, len) whose state differs from s; len if none.
uint64_t DenseNextDiff(const uint64_t* w, uint64_t p, uint64_t len, unsigned s) {
  const uint64_t pat = Pattern(s);
  while (p < len) {
    uint64_t wi = p >> 5;
    unsigned from = p & 31;
    uint64_t t = w[wi] ^ pat;
    uint64_t nz = (t | (t >> 1)) & kLo & GroupMask(from, 32);
    if (nz) return std::min<uint64_t>(len, (wi << 5) + (std::countr_zero(nz) >> 1));
    p = (wi + 1) << 5;
  }
  return len;
}

// Index of the run containing local page p (starts[0] is 0). Branch-free
// halving: the lists are short and the probes unpredictable.
inline uint32_t ListFind(const uint16_t* starts, uint32_t n, uint32_t p) {
  const uint16_t* base = starts;
  while (n > 1) {
    const uint32_t half = n / 2;
    base = base[half] <= p ? base + half : base;
    n -= half;
  }
  return static_cast<uint32_t>(base - starts);
}

// RunMap::FindWord without SIMD, four words a step.
uint64_t FindWordScalar(const uint64_t* w, uint64_t from, uint64_t nw, uint64_t pat, bool want) {
  // Pages of pat's state leave 00 in x ^ pat; flip makes the test one of
  // "any bit set" either way.
  const uint64_t flip = want ? kLo : 0;
  auto found = [&](uint64_t x) { return (((x ^ pat) | ((x ^ pat) >> 1)) & kLo) ^ flip; };
  for (; from + 4 <= nw; from += 4) {
    if ((found(w[from]) | found(w[from + 1]) | found(w[from + 2]) | found(w[from + 3])) != 0) break;
  }
  for (; from < nw; ++from) {
    if (found(w[from]) != 0) return from;
  }
  return nw;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CVMSTATE_EXPAND_AVX512 1
#define CVMSTATE_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi2")))

// Writes the eight runs whose chunk-local begins and ends are the eight
// 16-bit lanes of b16 and e16, offset by base, as begin/end pairs to
// out[0, 8), also where fewer of them are runs (the caller counts those):
// whole stores. Stores of part of a vector (masked) made the scan of a
// 2 TiB state 16% slower on a Zen 5 (160 against 138 us), where the
// caller reads the runs right after; masked with all lanes set, they were
// not.
CVMSTATE_AVX512_TARGET inline void StoreEightRuns(__m128i b16, __m128i e16, __m512i base,
                                                  PageRange* out) {
  const __m512i lo_pairs = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
  const __m512i hi_pairs = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
  // The zero-masking form: GCC 12's plain one warns of an uninitialised
  // value inside its own header.
  const __m512i b = _mm512_add_epi64(_mm512_maskz_cvtepu16_epi64(0xff, b16), base);
  const __m512i e = _mm512_add_epi64(_mm512_maskz_cvtepu16_epi64(0xff, e16), base);
  // Four runs a vector.
  _mm512_storeu_si512(static_cast<void*>(out), _mm512_permutex2var_epi64(b, lo_pairs, e));
  _mm512_storeu_si512(static_cast<void*>(out + 4), _mm512_permutex2var_epi64(b, hi_pairs, e));
}

// ExpandRuns, 32 runs at a time: the starts of the runs in mask and the
// starts after them are loaded (only the lanes in mask, all inside the
// list) and compressed alike, then widened 8 at a time, offset and
// interleaved into begin/end pairs: no branch a run, where the scalar
// loop's exit mispredicted about once a list.
CVMSTATE_AVX512_TARGET size_t ExpandRunsAvx512(const uint16_t* st, uint64_t mask, uint64_t eb, PageRange* out) {
  const __m512i base = _mm512_set1_epi64(static_cast<long long>(eb));
  size_t n = 0;
  for (unsigned half = 0; half < 64; half += 32) {
    const __mmask32 m = static_cast<__mmask32>(mask >> half);
    if (m == 0) continue;
    const __m512i begins = _mm512_maskz_compress_epi16(m, _mm512_maskz_loadu_epi16(m, st + half));
    const __m512i ends = _mm512_maskz_compress_epi16(m, _mm512_maskz_loadu_epi16(m, st + half + 1));
    const unsigned count = static_cast<unsigned>(__builtin_popcount(m));
    // Lanes are taken out by constant index: a store of the vectors and
    // 16-byte reloads stalled on store forwarding.
    StoreEightRuns(_mm512_maskz_extracti32x4_epi32(0xf, begins, 0),
                   _mm512_maskz_extracti32x4_epi32(0xf, ends, 0), base, out + n);
    if (count > 8) {
      StoreEightRuns(_mm512_maskz_extracti32x4_epi32(0xf, begins, 1),
                     _mm512_maskz_extracti32x4_epi32(0xf, ends, 1), base, out + n + 8);
    }
    if (count > 16) {
      StoreEightRuns(_mm512_maskz_extracti32x4_epi32(0xf, begins, 2),
                     _mm512_maskz_extracti32x4_epi32(0xf, ends, 2), base, out + n + 16);
    }
    if (count > 24) {
      StoreEightRuns(_mm512_maskz_extracti32x4_epi32(0xf, begins, 3),
                     _mm512_maskz_extracti32x4_epi32(0xf, ends, 3), base, out + n + 24);
    }
    n += count;
  }
  return n;
}

// FindWord, eight words a step: a masked load for the last words, so
// nothing past nw is read.
CVMSTATE_AVX512_TARGET uint64_t FindWordAvx512(const uint64_t* w, uint64_t from, uint64_t nw,
                                               uint64_t pat, bool want) {
  const __m512i lo = _mm512_set1_epi64(static_cast<long long>(0x5555555555555555ULL));
  const __m512i p = _mm512_set1_epi64(static_cast<long long>(pat));
  for (; from < nw; from += 8) {
    const uint64_t left = nw - from;
    const __mmask8 lanes = left >= 8 ? __mmask8{0xff} : static_cast<__mmask8>((1u << left) - 1);
    const __m512i t = _mm512_xor_si512(_mm512_maskz_loadu_epi64(lanes, w + from), p);
    // Bit pairs of t: 00 where a page is in pat's state.
    const __m512i other =
        _mm512_and_si512(_mm512_or_si512(t, _mm512_maskz_srli_epi64(0xff, t, 1)), lo);
    const __mmask8 found = want ? _mm512_mask_cmpneq_epi64_mask(lanes, other, lo)
                                : _mm512_mask_test_epi64_mask(lanes, other, other);
    if (found != 0) return from + static_cast<unsigned>(__builtin_ctz(found));
  }
  return nw;
}

// Whether the AVX-512 forms are to run: the CPU has what they use (asked
// once) and the caller did not ask for the plain ones.
bool UseAvx512(bool simd) {
  static const bool have =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi2");
  return simd && have;
}
#endif

}  // namespace

RunMap::ExpandRunsFn RunMap::ExpandRuns(bool simd) {
#if defined(CVMSTATE_EXPAND_AVX512)
  if (UseAvx512(simd)) return &ExpandRunsAvx512;
#endif
  (void)simd;
  return &ExpandRunsOneByOne;
}

RunMap::FindWordFn RunMap::FindWord(bool simd) {
#if defined(CVMSTATE_EXPAND_AVX512)
  if (UseAvx512(simd)) return &FindWordAvx512;
#endif
  (void)simd;
  return &FindWordScalar;
}

RunMap::RunMap(uint64_t pages, PageState initial, unsigned chunk_shift)
    : pages_(pages),
      shift_(std::clamp(chunk_shift, kMinChunkShift, kMaxChunkShift)),
      page_mask_(chunk_pages() - 1) {
  segs_.push_back(Segment{{UniformEntry(static_cast<uint8_t>(initial))}, {0}});
  seg_keys_.push_back(0);
  sparse_entries_ = 1;
}

RunMap::~RunMap() {
  for (Pos p{}; !IsEnd(p); p = Next(p)) FreeEntry(At(p));
}

RunMap::RunMap(RunMap&& o) noexcept
    : pages_(o.pages_),
      shift_(o.shift_),
      dir_(std::move(o.dir_)),
      segs_(std::move(o.segs_)),
      seg_keys_(std::move(o.seg_keys_)),
      sparse_entries_(o.sparse_entries_),
      flat_(o.flat_),
      flat_pages_(o.flat_pages_),
      page_mask_(o.page_mask_),
      chunk_bytes_(o.chunk_bytes_) {
  o.dir_.clear();
  o.segs_.clear();
  o.seg_keys_.clear();
  o.sparse_entries_ = 0;
  o.flat_ = false;
  o.flat_pages_ = 0;
  o.chunk_bytes_ = 0;
}

RunMap& RunMap::operator=(RunMap&& o) noexcept {
  if (this != &o) {
    for (Pos p{}; !IsEnd(p); p = Next(p)) FreeEntry(At(p));
    pages_ = o.pages_;
    shift_ = o.shift_;
    dir_ = std::move(o.dir_);
    segs_ = std::move(o.segs_);
    seg_keys_ = std::move(o.seg_keys_);
    sparse_entries_ = o.sparse_entries_;
    flat_ = o.flat_;
    flat_pages_ = o.flat_pages_;
    page_mask_ = o.page_mask_;
    chunk_bytes_ = o.chunk_bytes_;
    o.dir_.clear();
    o.segs_.clear();
    o.seg_keys_.clear();
    o.sparse_entries_ = 0;
    o.flat_ = false;
    o.flat_pages_ = 0;
    o.chunk_bytes_ = 0;
  }
  return *this;
}

namespace {

// Index of the last key at or before k in sorted keys[0, n), n >= 1 and
// keys[0] <= k.
inline size_t LastAtOrBefore(const uint64_t* keys, size_t n, uint64_t k) {
  return static_cast<size_t>(std::upper_bound(keys, keys + n, k) - keys) - 1;
}

}  // namespace

RunMap::Pos RunMap::FindEntry(uint64_t chunk) const {
  if (flat_) return Pos{0, static_cast<size_t>(chunk)};
  const size_t seg = LastAtOrBefore(seg_keys_.data(), seg_keys_.size(), chunk);
  const std::vector<uint64_t>& keys = segs_[seg].keys;
  return Pos{seg, LastAtOrBefore(keys.data(), keys.size(), chunk)};
}

void RunMap::FreeEntry(Entry& e) {
  if (e.kind == kList) {
    chunk_bytes_ -= ListBytes(e.cap);
    std::free(e.data);
  } else if (e.kind == kDense) {
    // Dense entries always hold a full chunk's words (the last chunk too).
    chunk_bytes_ -= DenseWords(chunk_pages()) * sizeof(uint64_t);
    std::free(e.data);
  }
  e.data = nullptr;
  e.count = 0;
  e.cap = 0;
  e.holds = 0;
}

void RunMap::MakeUniform(Entry& e, PageState s) {
  FreeEntry(e);
  e.kind = kUniform;
  e.state = static_cast<uint8_t>(s);
}

RunMap::Pos RunMap::InsertEntry(Pos at, uint64_t first_chunk, const Entry& e) {
  Segment& sg = segs_[at.seg];
  sg.entries.insert(sg.entries.begin() + static_cast<ptrdiff_t>(at.idx), e);
  sg.keys.insert(sg.keys.begin() + static_cast<ptrdiff_t>(at.idx), first_chunk);
  seg_keys_[at.seg] = sg.keys.front();
  ++sparse_entries_;
  if (sg.entries.size() <= kSegmentMax) return at;
  // Split in halves: the index grows by one per kSegmentMax / 2 inserts.
  const size_t half = sg.entries.size() / 2;
  Segment upper{std::vector<Entry>(sg.entries.begin() + static_cast<ptrdiff_t>(half), sg.entries.end()),
                std::vector<uint64_t>(sg.keys.begin() + static_cast<ptrdiff_t>(half), sg.keys.end())};
  sg.entries.resize(half);
  sg.keys.resize(half);
  sg.entries.shrink_to_fit();
  sg.keys.shrink_to_fit();
  const uint64_t upper_key = upper.keys.front();
  segs_.insert(segs_.begin() + static_cast<ptrdiff_t>(at.seg) + 1, std::move(upper));
  seg_keys_.insert(seg_keys_.begin() + static_cast<ptrdiff_t>(at.seg) + 1, upper_key);
  return at.idx < half ? at : Pos{at.seg + 1, at.idx - half};
}

void RunMap::EraseEntries(Pos from, Pos to) {
  const size_t first_seg = from.seg;
  size_t seg = from.seg;
  while (from != to) {
    Segment& sg = segs_[seg];
    const size_t stop = to.seg == seg ? to.idx : sg.entries.size();
    sg.entries.erase(sg.entries.begin() + static_cast<ptrdiff_t>(from.idx),
                     sg.entries.begin() + static_cast<ptrdiff_t>(stop));
    sg.keys.erase(sg.keys.begin() + static_cast<ptrdiff_t>(from.idx), sg.keys.begin() + static_cast<ptrdiff_t>(stop));
    sparse_entries_ -= stop - from.idx;
    if (to.seg == seg) break;
    ++seg;
    from = Pos{seg, 0};
  }
  // Drop the segments left empty, then refresh the index.
  size_t out = first_seg;
  const size_t last = std::min(seg, segs_.size() - 1);
  for (size_t k = out; k <= last; ++k) {
    if (!segs_[k].entries.empty()) {
      if (out != k) segs_[out] = std::move(segs_[k]);
      seg_keys_[out] = segs_[out].keys.front();
      ++out;
    }
  }
  if (out != last + 1) {
    segs_.erase(segs_.begin() + static_cast<ptrdiff_t>(out), segs_.begin() + static_cast<ptrdiff_t>(last) + 1);
    seg_keys_.erase(seg_keys_.begin() + static_cast<ptrdiff_t>(out),
                    seg_keys_.begin() + static_cast<ptrdiff_t>(last) + 1);
  }
  MergeSmallSegment(first_seg);
  // Give back what a large erase left unused.
  if (segs_.size() * 4 < segs_.capacity()) {
    segs_.shrink_to_fit();
    seg_keys_.shrink_to_fit();
  }
  for (size_t k = first_seg; k < segs_.size() && k <= first_seg + 1; ++k) {
    Segment& sg = segs_[k];
    if (sg.entries.capacity() > 16 && sg.entries.size() * 4 < sg.entries.capacity()) {
      sg.entries.shrink_to_fit();
      sg.keys.shrink_to_fit();
    }
  }
}

void RunMap::MergeSmallSegment(size_t seg) {
  // Keeps segments from thinning into many tiny ones (index and per
  // segment overhead stay O(entries / kSegmentMax) in steady use).
  for (size_t k : {seg, seg + 1}) {
    if (k == 0 || k >= segs_.size()) continue;
    Segment& a = segs_[k - 1];
    Segment& b = segs_[k];
    if (std::min(a.entries.size(), b.entries.size()) * 4 >= kSegmentMax ||
        a.entries.size() + b.entries.size() > kSegmentMax) {
      continue;
    }
    a.entries.insert(a.entries.end(), b.entries.begin(), b.entries.end());
    a.keys.insert(a.keys.end(), b.keys.begin(), b.keys.end());
    segs_.erase(segs_.begin() + static_cast<ptrdiff_t>(k));
    seg_keys_.erase(seg_keys_.begin() + static_cast<ptrdiff_t>(k));
    return;
  }
}

void RunMap::MakeFlat() {
  const uint64_t nc = num_chunks();
  std::vector<Entry> flat;
  flat.reserve(nc);
  for (Pos p{}; !IsEnd(p); p = Next(p)) {
    const uint64_t end = EndChunk(p);
    for (uint64_t c = FirstChunk(p); c < end; ++c) flat.push_back(At(p));
  }
  dir_ = std::move(flat);
  segs_.clear();
  segs_.shrink_to_fit();
  seg_keys_.clear();
  seg_keys_.shrink_to_fit();
  sparse_entries_ = 0;
  flat_ = true;
  flat_pages_ = pages_;
}

RunMap::Pos RunMap::SplitAt(uint64_t chunk) {
  const Pos i = FindEntry(chunk);
  if (flat_ || FirstChunk(i) == chunk) return i;
  // Only a uniform entry spans several chunks, so only one can be split.
  const Pos at = InsertEntry(Pos{i.seg, i.idx + 1}, chunk, UniformEntry(At(i).state));
  // Once the directory is a sizeable part of a flat one, go flat: lookups
  // become an index and splits stop moving the directory.
  const uint64_t nc = num_chunks();
  if (nc <= kMaxFlatChunks && NumEntries() * 8 > nc) {
    MakeFlat();
    return Pos{0, static_cast<size_t>(chunk)};
  }
  return at;
}

PageState RunMap::Get(uint64_t page) const {
  const uint64_t chunk = page >> shift_;
  const Entry& e = At(FindEntry(chunk));
  const uint64_t local = page - ChunkBegin(chunk);
  switch (e.kind) {
    case kUniform:
      return static_cast<PageState>(e.state);
    case kList:
      return static_cast<PageState>(States(e)[ListFind(Starts(e), e.count, static_cast<uint32_t>(local))]);
    default:
      return static_cast<PageState>(DenseGet(static_cast<const uint64_t*>(e.data), local));
  }
}

void RunMap::AssignAny(uint64_t begin, uint64_t end, PageState s, StateCounts* changed) {
  if (begin >= end || end > pages_) return;
  const uint64_t c0 = begin >> shift_, c1 = (end - 1) >> shift_;
  const uint32_t a = static_cast<uint32_t>(begin - ChunkBegin(c0));
  if (c0 == c1) {
    const uint32_t b = static_cast<uint32_t>(end - ChunkBegin(c0));
    if (a == 0 && b == ChunkLen(c0)) {
      AssignWholeChunks(c0, c0 + 1, s, changed);
    } else {
      AssignInChunk(c0, a, b, s, changed);
    }
    return;
  }
  uint64_t whole0 = c0, whole1 = c1 + 1;
  if (a != 0) {
    AssignInChunk(c0, a, static_cast<uint32_t>(ChunkLen(c0)), s, changed);
    whole0 = c0 + 1;
  }
  const uint32_t b = static_cast<uint32_t>(end - ChunkBegin(c1));
  if (b != ChunkLen(c1)) {
    AssignInChunk(c1, 0, b, s, changed);
    whole1 = c1;
  }
  if (whole0 < whole1) AssignWholeChunks(whole0, whole1, s, changed);
}

void RunMap::AddEntryStates(const Entry& e, uint64_t len, StateCounts* counts) const {
  switch (e.kind) {
    case kUniform:
      (*counts)[e.state] += len;
      break;
    case kList: {
      const uint16_t* st = Starts(e);
      const uint8_t* ss = States(e);
      for (uint32_t k = 0; k < e.count; ++k) {
        const uint64_t rend = k + 1 < e.count ? st[k + 1] : len;
        (*counts)[ss[k]] += rend - st[k];
      }
      break;
    }
    default:
      DenseCountStates(static_cast<const uint64_t*>(e.data), 0, len, counts);
  }
}

void RunMap::AssignWholeChunks(uint64_t c0, uint64_t c1, PageState s, StateCounts* changed) {
  const uint8_t sv = static_cast<uint8_t>(s);
  SplitAt(c0);
  if (c1 < num_chunks()) SplitAt(c1);
  const Pos i0 = FindEntry(c0);  // a split may have made the directory flat, or moved entries
  const Pos i1 = c1 < num_chunks() ? FindEntry(c1) : End();
  if (changed) {
    StateCounts before{};
    for (Pos i = i0; i != i1; i = Next(i)) {
      const uint64_t len = std::min(ChunkBegin(EndChunk(i)), pages_) - ChunkBegin(FirstChunk(i));
      AddEntryStates(At(i), len, &before);
    }
    for (int k = 0; k < kNumPageStates; ++k)
      if (k != sv) (*changed)[k] += before[k];
  }
  if (flat_) {
    for (Pos i = i0; i != i1; i = Next(i)) MakeUniform(At(i), s);
    return;
  }
  for (Pos i = i0; i != i1; i = Next(i)) FreeEntry(At(i));
  At(i0) = UniformEntry(sv);
  Pos erase_from = Next(i0), erase_to = i1;
  // Merge with uniform neighbours of the same state to keep entries O(runs).
  if (!IsEnd(erase_to) && At(erase_to).kind == kUniform && At(erase_to).state == sv) erase_to = Next(erase_to);
  if (i0 != Pos{} && At(Prev(i0)).kind == kUniform && At(Prev(i0)).state == sv) erase_from = i0;
  EraseEntries(erase_from, erase_to);
}

void RunMap::AssignInChunk(uint64_t chunk, uint32_t a, uint32_t b, PageState s, StateCounts* changed) {
  Pos i{0, static_cast<size_t>(chunk)};  // a flat directory needs no splitting
  if (!flat_) {
    i = SplitAt(chunk);
    if (chunk + 1 < num_chunks()) {
      SplitAt(chunk + 1);
      i = FindEntry(chunk);
    }
  }
  Entry& e = At(i);
  const uint32_t len = static_cast<uint32_t>(ChunkLen(chunk));
  const unsigned sv = static_cast<unsigned>(s);
  switch (e.kind) {
    case kUniform: {
      if (e.state == sv) return;
      if (changed) (*changed)[e.state] += b - a;
      const uint8_t old = e.state;
      uint16_t starts[3];
      uint8_t states[3];
      uint32_t n = 0;
      if (a > 0) starts[n] = 0, states[n++] = old;
      starts[n] = static_cast<uint16_t>(a), states[n++] = static_cast<uint8_t>(sv);
      if (b < len) starts[n] = static_cast<uint16_t>(b), states[n++] = old;
      e.kind = kList;
      e.state = 0;  // Fragmenting()'s count
      e.holds = static_cast<uint16_t>((1u << old) | (1u << sv));
      ReserveList(e, n);
      std::memcpy(e.data, starts, n * sizeof(uint16_t));
      std::memcpy(const_cast<uint8_t*>(States(e)), states, n);
      e.count = n;
      return;
    }
    case kList:
      ListAssign(e, len, a, b, s, changed);
      return;
    default:
      DenseAssign(e, len, a, b, s, changed);
      return;
  }
}

void RunMap::ReserveList(Entry& e, uint32_t need) {
  const uint32_t cap = e.cap;
  // Grow by a quarter in steps of 8 runs; give memory back once three
  // quarters are free.
  if (need <= cap && (cap <= 16 || need * 4 > cap)) return;
  uint32_t want = need > cap ? need + need / 4 : need;
  want = (want + 7) & ~7u;
  void* p = std::malloc(ListBytes(want));
  if (p == nullptr) throw std::bad_alloc();
  const uint32_t n = std::min(e.count, want);
  if (e.data != nullptr) {
    std::memcpy(p, e.data, n * sizeof(uint16_t));
    std::memcpy(static_cast<uint8_t*>(p) + size_t{want} * sizeof(uint16_t), States(e), n);
    std::free(e.data);
  }
  // ForEachRunOf reads states in whole words up to the capacity, and the
  // run starts just before the states: all of it initialised.
  std::memset(static_cast<uint16_t*>(p) + n, 0, (want - n) * sizeof(uint16_t));
  std::memset(static_cast<uint8_t*>(p) + size_t{want} * sizeof(uint16_t) + n, 0, want - n);
  chunk_bytes_ += ListBytes(want);
  chunk_bytes_ -= ListBytes(cap);
  e.data = p;
  e.cap = static_cast<uint16_t>(want);
}

void RunMap::ListAssign(Entry& e, uint32_t len, uint32_t a, uint32_t b, PageState s, StateCounts* changed) {
  const uint16_t* st = Starts(e);
  const uint8_t* ss = States(e);
  const uint32_t n = e.count;
  const uint8_t sv = static_cast<uint8_t>(s);
  const uint32_t i = ListFind(st, n, a);
  // Most conversions end inside the run they start in (a single page
  // always does): then the second search is not needed.
  const uint32_t end_i = i + 1 < n ? st[i + 1] : len;
  const uint32_t j = b <= end_i ? i : i + 1 + ListFind(st + i + 1, n - i - 1, b - 1);
  if (i == j && ss[i] == sv) return;
  const uint32_t end_j = j + 1 < n ? st[j + 1] : len;

  // The runs that replace runs i..j: a kept head of run i, the new run, a
  // kept tail of run j; each dropped if it continues its predecessor.
  uint16_t os[3];
  uint8_t ostate[3];
  uint32_t k = 0;
  unsigned prev = i > 0 ? ss[i - 1] : 3;
  if (st[i] < a) {
    os[k] = st[i], ostate[k++] = ss[i];
    prev = ss[i];
  }
  if (sv != prev) {
    os[k] = static_cast<uint16_t>(a), ostate[k++] = sv;
    prev = sv;
  }
  if (b < end_j && ss[j] != prev) {
    os[k] = static_cast<uint16_t>(b), ostate[k++] = ss[j];
    prev = ss[j];
  }
  const uint32_t lo = i;
  uint32_t hi = j + 1;
  if (b == end_j && hi < n && ss[hi] == prev) ++hi;
  const uint32_t new_n = n - (hi - lo) + k;
  // Fragmenting() counts what is not a single page cut out of an inner run.
  const bool single_page_cut = k == 3 && i == j && j + 1 < n && b == a + 1;
  if (!single_page_cut && e.state < 255) ++e.state;
  if (new_n > ListMaxRuns() || Fragmenting(e, new_n)) {
    ListToDense(e, len);
    DenseAssign(e, len, a, b, s, changed);
    return;
  }
  if (changed) {
    for (uint32_t r = i; r <= j; ++r) {
      if (ss[r] == sv) continue;
      const uint32_t rs = std::max<uint32_t>(st[r], a);
      const uint32_t re = std::min(r + 1 < n ? uint32_t{st[r + 1]} : len, b);
      (*changed)[ss[r]] += re - rs;
    }
  }
  if (new_n == 1) {
    MakeUniform(e, static_cast<PageState>(k > 0 ? ostate[0] : ss[0]));
    return;
  }
  if (new_n > e.cap) ReserveList(e, new_n);
  uint16_t* dst = static_cast<uint16_t*>(e.data);
  uint8_t* dss = const_cast<uint8_t*>(States(e));
  std::memmove(dst + lo + k, dst + hi, (n - hi) * sizeof(uint16_t));
  std::memmove(dss + lo + k, dss + hi, n - hi);
  std::memcpy(dst + lo, os, k * sizeof(uint16_t));
  std::memcpy(dss + lo, ostate, k);
  e.holds |= 1u << sv;  // the other runs written kept their states
  e.count = new_n;
  if (new_n < n) ReserveList(e, new_n);  // shrinks when mostly empty
}

void RunMap::DenseAssign(Entry& e, uint32_t len, uint32_t a, uint32_t b, PageState s, StateCounts* changed) {
  uint64_t* w = static_cast<uint64_t*>(e.data);
  if (changed) {
    StateCounts c{};
    DenseCountStates(w, a, b, &c);
    for (int k = 0; k < kNumPageStates; ++k)
      if (k != static_cast<int>(s)) (*changed)[k] += c[k];
  }
  DenseFill(w, a, b, static_cast<unsigned>(s));
  // A large range may have simplified the chunk a lot: recount at once.
  if (uint64_t{b - a} * 16 >= len || --e.count == kDenseTag) RecheckDense(e, len);
}

void RunMap::RecheckDense(Entry& e, uint32_t len) {
  const uint64_t* w = static_cast<const uint64_t*>(e.data);
  // Only whether the chunk fits a list matters, so a fragmented chunk stops
  // counting after a few words.
  const uint64_t runs = 1 + DenseBoundaries(w, 1, len, ListMaxRuns() / 2);
  if (runs == 1) {
    MakeUniform(e, static_cast<PageState>(DenseGet(w, 0)));
  } else if (runs <= ListMaxRuns() / 2) {
    DenseToList(e, len, static_cast<uint32_t>(runs));
  } else {
    e.count = kDenseTag + kDenseRecheck;
  }
}

void RunMap::ListToDense(Entry& e, uint32_t len) {
  const size_t words = DenseWords(chunk_pages());
  uint64_t* w = static_cast<uint64_t*>(std::calloc(words, sizeof(uint64_t)));
  if (w == nullptr) throw std::bad_alloc();
  const uint16_t* st = Starts(e);
  const uint8_t* ss = States(e);
  for (uint32_t k = 0; k < e.count; ++k) {
    DenseFill(w, st[k], k + 1 < e.count ? st[k + 1] : len, ss[k]);
  }
  FreeEntry(e);
  e.kind = kDense;
  e.data = w;
  e.count = kDenseTag + kDenseRecheck;
  chunk_bytes_ += words * sizeof(uint64_t);
}

void RunMap::DenseToList(Entry& e, uint32_t len, uint32_t runs) {
  const uint64_t* w = static_cast<const uint64_t*>(e.data);
  // Thinned out over many conversions: not a fragmenting list.
  Entry list{.data = nullptr, .count = 0, .cap = 0, .holds = 0, .kind = kList, .state = 255};
  ReserveList(list, runs);
  uint16_t* st = static_cast<uint16_t*>(list.data);
  uint8_t* ss = const_cast<uint8_t*>(States(list));
  uint32_t n = 0;
  for (uint64_t p = 0; p < len && n < runs;) {
    const unsigned s = DenseGet(w, p);
    st[n] = static_cast<uint16_t>(p);
    ss[n++] = static_cast<uint8_t>(s);
    list.holds |= 1u << s;
    p = DenseNextDiff(w, p, len, s);
  }
  list.count = n;
  FreeEntry(e);
  e = list;
}

uint64_t RunMap::CountRuns() const {
  uint64_t n = 0;
  ForEachRun([&n](const Run&) {
    ++n;
    return true;
  });
  return n;
}

StateCounts RunMap::CountStates() const {
  StateCounts c{};
  ForEachRun([&c](const Run& r) {
    c[static_cast<int>(r.state)] += r.end - r.begin;
    return true;
  });
  return c;
}

size_t RunMap::MemoryBytes() const {
  size_t n = dir_.capacity() * sizeof(Entry) + segs_.capacity() * sizeof(Segment) +
             seg_keys_.capacity() * sizeof(uint64_t) + chunk_bytes_;
  for (const Segment& sg : segs_) n += sg.entries.capacity() * sizeof(Entry) + sg.keys.capacity() * sizeof(uint64_t);
  return n;
}

void RunMap::CompactDense() {
  for (Pos i{}; !IsEnd(i); i = Next(i)) {
    Entry& e = At(i);
    if (e.kind == kDense) RecheckDense(e, static_cast<uint32_t>(ChunkLen(FirstChunk(i))));
  }
}

RunMap::Shape RunMap::GetShape() const {
  Shape s;
  s.entries = NumEntries();
  for (Pos i{}; !IsEnd(i); i = Next(i)) {
    const Entry& e = At(i);
    if (e.kind == kUniform) ++s.uniform;
    if (e.kind == kList) ++s.list;
    if (e.kind == kDense) ++s.dense;
  }
  return s;
}

RunMap::Cursor::Cursor(const RunMap& map, uint64_t begin, uint64_t end)
    : map_(map), end_(std::min(end, map.pages_)), pos_(begin), entry_{}, list_index_(UINT32_MAX) {
  if (pos_ < end_) entry_ = map_.FindEntry(pos_ >> map_.shift_);
}

bool RunMap::Cursor::NextPiece(Run* out) {
  if (pos_ >= end_) return false;
  const Entry& e = map_.At(entry_);
  const uint64_t ebegin = map_.ChunkBegin(map_.FirstChunk(entry_));
  uint64_t eend = std::min(map_.ChunkBegin(map_.EndChunk(entry_)), map_.pages_);
  uint64_t pend;
  unsigned st;
  switch (e.kind) {
    case kUniform: {
      // A stretch of uniform entries in one state is one piece: walking a
      // mostly uniform terabyte costs its runs, not its chunks.
      st = e.state;
      Pos last = entry_;
      for (Pos n = map_.Next(last); !map_.IsEnd(n); n = map_.Next(n)) {
        const Entry& ne = map_.At(n);
        if (ne.kind != kUniform || ne.state != st || map_.ChunkBegin(map_.FirstChunk(n)) >= end_) break;
        last = n;
      }
      if (last != entry_) {
        entry_ = last;
        eend = std::min(map_.ChunkBegin(map_.EndChunk(last)), map_.pages_);
      }
      pend = eend;
      break;
    }
    case kList: {
      const uint16_t* starts = Starts(e);
      if (list_index_ == UINT32_MAX) {
        list_index_ = ListFind(starts, e.count, static_cast<uint32_t>(pos_ - ebegin));
      }
      st = States(e)[list_index_];
      pend = list_index_ + 1 < e.count ? ebegin + starts[list_index_ + 1] : eend;
      ++list_index_;
      break;
    }
    default: {
      const uint64_t* w = static_cast<const uint64_t*>(e.data);
      const uint64_t local = pos_ - ebegin;
      st = DenseGet(w, local);
      pend = ebegin + DenseNextDiff(w, local + 1, eend - ebegin, st);
      break;
    }
  }
  out->begin = pos_;
  out->end = std::min(pend, end_);
  out->state = static_cast<PageState>(st);
  pos_ = out->end;
  if (pos_ == eend) {
    entry_ = map_.Next(entry_);
    list_index_ = UINT32_MAX;
  }
  return true;
}

bool RunMap::Cursor::Next(Run* out) {
  Run piece;
  while (NextPiece(&piece)) {
    if (!have_pending_) {
      pending_ = piece;
      have_pending_ = true;
    } else if (piece.state == pending_.state) {
      pending_.end = piece.end;
    } else {
      *out = pending_;
      pending_ = piece;
      return true;
    }
  }
  if (!have_pending_) return false;
  *out = pending_;
  have_pending_ = false;
  return true;
}

}  // namespace cvmstate

// RunMap against a naive one-byte-per-page model, after every operation.
#include "tracker/run_map.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <vector>

namespace cvmstate {

// Reaches the two ways a batch walk expands a list's runs, and the two
// ways a walk finds the next word of a dense chunk.
struct RunMapTestPeer {
  static RunMap::ExpandRunsFn Expand(bool simd) { return RunMap::ExpandRuns(simd); }
  static RunMap::FindWordFn FindWord(bool simd) { return RunMap::FindWord(simd); }
};

namespace {

using Model = std::vector<uint8_t>;

std::vector<Run> ModelRuns(const Model& m, uint64_t begin, uint64_t end) {
  std::vector<Run> runs;
  for (uint64_t p = begin; p < end; ++p) {
    if (!runs.empty() && static_cast<uint8_t>(runs.back().state) == m[p]) {
      runs.back().end = p + 1;
    } else {
      runs.push_back({p, p + 1, static_cast<PageState>(m[p])});
    }
  }
  return runs;
}

std::vector<Run> MapRuns(const RunMap& map, uint64_t begin, uint64_t end) {
  std::vector<Run> runs;
  map.ForEachRun(begin, end, [&](const Run& r) {
    runs.push_back(r);
    return true;
  });
  return runs;
}

// The runs of s in [begin, end) through ForEachRunBatchOf, checking that
// every batch holds 1 to kRunBatch runs, and that none comes after fn said
// stop (once it holds stop_after runs).
std::vector<Run> BatchRunsOf(const RunMap& map, PageState s, uint64_t begin, uint64_t end, size_t stop_after = SIZE_MAX) {
  std::vector<Run> runs;
  bool stopped = false;
  map.ForEachRunBatchOf(s, begin, end, [&](const PageRange* r, size_t n) {
    EXPECT_FALSE(stopped) << "a batch after fn returned false";
    EXPECT_GE(n, 1u);
    EXPECT_LE(n, RunMap::kRunBatch);
    for (size_t i = 0; i < n; ++i) runs.push_back({r[i].begin, r[i].end, s});
    stopped = runs.size() >= stop_after;
    return !stopped;
  });
  return runs;
}

::testing::AssertionResult SameRuns(const std::vector<Run>& a, const std::vector<Run>& b) {
  if (a.size() != b.size()) {
    return ::testing::AssertionFailure() << "run count " << a.size() << " vs model " << b.size();
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].begin != b[i].begin || a[i].end != b[i].end || a[i].state != b[i].state) {
      return ::testing::AssertionFailure() << "run " << i << ": [" << a[i].begin << "," << a[i].end << ") "
                                           << int(a[i].state) << " vs model [" << b[i].begin << "," << b[i].end
                                           << ") " << int(b[i].state);
    }
  }
  return ::testing::AssertionSuccess();
}

struct Shapes {
  bool list = false, dense = false, uniform_multi = false;
};

// Picks a range the way the interesting cases need: single pages, small
// ranges, ranges that straddle chunk boundaries, whole chunks, everything.
std::pair<uint64_t, uint64_t> PickRange(std::mt19937_64& rng, uint64_t pages, uint64_t chunk) {
  auto below = [&](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  uint64_t a, len;
  switch (rng() % 6) {
    case 0:  // one page
      a = below(pages);
      len = 1;
      break;
    case 1:  // small
      a = below(pages);
      len = 1 + below(8);
      break;
    case 2: {  // straddles a chunk boundary
      uint64_t c = 1 + below(std::max<uint64_t>(pages / chunk, 1));
      uint64_t edge = std::min(c * chunk, pages);
      a = edge - std::min(edge, 1 + below(chunk));
      len = 1 + below(2 * chunk);
      break;
    }
    case 3:  // whole chunks
      a = below(std::max<uint64_t>(pages / chunk, 1)) * chunk;
      len = chunk * (1 + below(3));
      break;
    case 4:  // everything
      a = 0;
      len = pages;
      break;
    default:  // anything
      a = below(pages);
      len = 1 + below(pages);
  }
  a = std::min(a, pages - 1);
  len = std::min(len, pages - a);
  return {a, a + len};
}

void RunSequence(uint64_t seed, unsigned shift, uint64_t pages, int steps, Shapes* seen) {
  std::mt19937_64 rng(seed);
  const PageState initial = static_cast<PageState>(rng() % 3);
  RunMap map(pages, initial, shift);
  Model model(pages, static_cast<uint8_t>(initial));
  const uint64_t chunk = map.chunk_pages();
  for (int step = 0; step < steps; ++step) {
    auto [a, b] = PickRange(rng, pages, chunk);
    // Bias towards fragmenting states so lists grow into dense chunks.
    PageState s = static_cast<PageState>(rng() % 3);
    StateCounts changed{};
    StateCounts want{};
    for (uint64_t p = a; p < b; ++p) {
      if (model[p] != static_cast<uint8_t>(s)) ++want[model[p]];
      model[p] = static_cast<uint8_t>(s);
    }
    map.Assign(a, b, s, &changed);
    ASSERT_EQ(changed, want) << "seed " << seed << " step " << step;
    ASSERT_TRUE(SameRuns(MapRuns(map, 0, pages), ModelRuns(model, 0, pages)))
        << "seed " << seed << " step " << step << " assign [" << a << "," << b << ") " << int(s);
    // A random section, through the cursor and through ForEachRunOf.
    auto [sa, sb] = PickRange(rng, pages, chunk);
    ASSERT_TRUE(SameRuns(MapRuns(map, sa, sb), ModelRuns(model, sa, sb))) << "seed " << seed;
    PageState want_state = static_cast<PageState>(rng() % 3);
    std::vector<cvmstate::Run> of, model_of;
    map.ForEachRunOf(want_state, sa, sb, [&](uint64_t x, uint64_t y) { of.push_back({x, y, want_state}); });
    for (const Run& r : ModelRuns(model, sa, sb))
      if (r.state == want_state) model_of.push_back(r);
    ASSERT_TRUE(SameRuns(of, model_of)) << "seed " << seed << " ForEachRunOf";
    // A fn returning false stops the walk there, from any kind of entry.
    const size_t stop_at = 1 + rng() % (model_of.size() + 1);
    std::vector<cvmstate::Run> head;
    map.ForEachRunOf(want_state, sa, sb, [&](uint64_t x, uint64_t y) {
      head.push_back({x, y, want_state});
      return head.size() < stop_at;
    });
    ASSERT_TRUE(SameRuns(BatchRunsOf(map, want_state, sa, sb), model_of)) << "seed " << seed << " batches";
    // A batch fn returning false stops the walk: no batch after it.
    const std::vector<Run> batched_head = BatchRunsOf(map, want_state, sa, sb, stop_at);
    ASSERT_LE(batched_head.size(), model_of.size());
    ASSERT_TRUE(SameRuns(batched_head, std::vector<Run>(model_of.begin(), model_of.begin() + batched_head.size())));
    if (batched_head.size() < model_of.size()) {
      ASSERT_GE(batched_head.size(), stop_at) << "seed " << seed;
    }
    model_of.resize(std::min(stop_at, model_of.size()));
    ASSERT_TRUE(SameRuns(head, model_of)) << "seed " << seed << " ForEachRunOf stopping after " << stop_at;
    uint64_t p = rng() % pages;
    ASSERT_EQ(static_cast<uint8_t>(map.Get(p)), model[p]);
    RunMap::Shape shape = map.GetShape();
    seen->list |= shape.list > 0;
    seen->dense |= shape.dense > 0;
    // Never above 2 bits a page plus a 16-byte entry (and a key) a chunk
    // plus list slack, whatever the sequence.
    const uint64_t chunks = map.num_chunks();
    ASSERT_LE(map.MemoryBytes(), pages / 4 + chunks * (16 + 8) * 2 + 64 * chunks + 256)
        << "seed " << seed;
  }
  StateCounts counts{};
  for (uint8_t v : model) ++counts[v];
  EXPECT_EQ(map.CountStates(), counts);
  EXPECT_EQ(map.CountRuns(), ModelRuns(model, 0, pages).size());
}

TEST(RunMapTest, PropertyAgainstModelSmallChunks) {
  Shapes seen;
  for (uint64_t seed = 1; seed <= 1500; ++seed) {
    std::mt19937_64 rng(seed * 7919);
    unsigned shift = 6 + static_cast<unsigned>(rng() % 3);  // 64..256-page chunks
    uint64_t chunk = uint64_t{1} << shift;
    uint64_t pages = chunk * (1 + rng() % 6) + rng() % chunk;  // often not a chunk multiple
    RunSequence(seed, shift, pages, 60, &seen);
    if (HasFatalFailure()) return;
  }
  EXPECT_TRUE(seen.list);
  EXPECT_TRUE(seen.dense);
}

TEST(RunMapTest, PropertyAgainstModelDefaultChunks) {
  Shapes seen;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    RunSequence(100000 + seed, RunMap::kDefaultChunkShift, (uint64_t{1} << 16) * 2 + 777, 120, &seen);
    if (HasFatalFailure()) return;
  }
  EXPECT_TRUE(seen.list);
}

// Long lists: runs come and go anywhere in lists of hundreds of runs, and
// ForEachRunOf finds the runs of a state eight at a time among them.
TEST(RunMapTest, LongListsKeepEveryStateAgainstModel) {
  for (uint64_t seed = 1; seed <= 4; ++seed) {
    std::mt19937_64 rng(seed);
    const uint64_t pages = uint64_t{1} << 16;  // one chunk
    RunMap map(pages, PageState::kPrivate, RunMap::kDefaultChunkShift);
    Model model(pages, static_cast<uint8_t>(PageState::kPrivate));
    // Runs in the first 3000 pages only, so the list stays below the
    // point where it turns dense for most of the sequence.
    for (int step = 0; step < 2500; ++step) {
      const uint64_t a = rng() % 3000, b = a + 1 + (step % 5 == 0 ? rng() % 40 : 0);
      const PageState s = static_cast<PageState>(rng() % 3);
      for (uint64_t p = a; p < b; ++p) model[p] = static_cast<uint8_t>(s);
      map.Assign(a, b, s);
      for (int k = 0; k < 4; ++k) {
        const uint64_t p = rng() % 3100;
        ASSERT_EQ(static_cast<uint8_t>(map.Get(p)), model[p]) << "seed " << seed << " step " << step;
      }
      if (step % 25 == 0) {
        ASSERT_TRUE(SameRuns(MapRuns(map, 0, pages), ModelRuns(model, 0, pages))) << "seed " << seed << " step " << step;
        std::vector<cvmstate::Run> of, want;
        map.ForEachRunOf(s, 0, pages, [&](uint64_t x, uint64_t y) { of.push_back({x, y, s}); });
        for (const cvmstate::Run& r : ModelRuns(model, 0, pages))
          if (r.state == s) want.push_back(r);
        ASSERT_TRUE(SameRuns(of, want)) << "seed " << seed << " step " << step;
        ASSERT_TRUE(SameRuns(BatchRunsOf(map, s, 0, pages), want)) << "seed " << seed << " step " << step;
      }
    }
    EXPECT_GE(map.GetShape().list + map.GetShape().dense, 1u);
  }
}

// Both ways of expanding a list's runs of a state (AVX-512 where this CPU
// has it, and one at a time) write exactly the runs a mask names, first,
// and nothing past the 64 runs of room the caller gives (the one at a time
// nothing past the runs at all), for every count from 1 to 64 and lists
// ending right after the last run read.
TEST(RunMapTest, ExpandRunsWritesExactlyTheMaskedRuns) {
  std::mt19937_64 rng(77);
  if (RunMapTestPeer::Expand(true) == RunMapTestPeer::Expand(false)) {
    std::printf("this CPU has no AVX-512 VBMI2: only the one-at-a-time expansion is tested here\n");
  }
  for (bool simd : {true, false}) {
    const auto expand = RunMapTestPeer::Expand(simd);
    for (int iter = 0; iter < 3000; ++iter) {
      // A list of n runs; the mask covers runs [0, 64) of it, and never the
      // last one (whose end is the chunk's), as in a walk. The first 640
      // masks hold 1, 2, ... 64 runs in turn.
      const unsigned want_bits = iter < 640 ? 1 + iter % 64 : 0;
      // At least two runs: the last is never in a mask.
      const uint32_t n = std::max<uint32_t>(2, want_bits + 1) + static_cast<uint32_t>(rng() % (65 - want_bits));
      std::vector<uint16_t> st(n);  // exactly n, for ASan to see a read past them
      uint16_t at = 0;
      for (uint32_t i = 0; i < n; ++i) st[i] = at, at = static_cast<uint16_t>(at + 1 + rng() % 900);
      const uint64_t allowed = n - 1 >= 64 ? ~uint64_t{0} : (uint64_t{1} << (n - 1)) - 1;
      uint64_t mask = 0;
      if (want_bits != 0) {
        while (static_cast<unsigned>(std::popcount(mask)) < want_bits) mask |= (uint64_t{1} << (rng() % 64)) & allowed;
      } else {
        mask = (iter % 7 == 0 ? ~uint64_t{0} : rng() & rng()) & allowed;
        if (mask == 0) mask = 1;
      }
      const uint64_t eb = (rng() % (uint64_t{1} << 40)) << 16;
      std::vector<PageRange> want;
      for (uint32_t r = 0; r < 64; ++r)
        if ((mask >> r) & 1) want.push_back({eb + st[r], eb + st[r + 1]});
      std::vector<PageRange> out(80, PageRange{~uint64_t{0}, ~uint64_t{0}});
      const size_t got = expand(st.data(), mask, eb, out.data());
      ASSERT_EQ(got, want.size()) << "simd " << simd << " iter " << iter;
      for (size_t i = 0; i < got; ++i) {
        ASSERT_EQ(out[i].begin, want[i].begin) << "simd " << simd << " iter " << iter << " run " << i;
        ASSERT_EQ(out[i].end, want[i].end) << "simd " << simd << " iter " << iter << " run " << i;
      }
      for (size_t i = simd ? 64 : got; i < out.size(); ++i) {
        ASSERT_EQ(out[i].begin, ~uint64_t{0})
            << "simd " << simd << " wrote past " << (simd ? "its room" : "the runs");
      }
    }
  }
}

// Both ways of finding the next word of a dense chunk with (or without) a
// page of a state agree with a word-by-word search, on words that hold
// long stretches of one state, from random starts, for short and long arrays
// (the SIMD form's masked last step included).
TEST(RunMapTest, FindWordFindsTheFirstWordWithOrWithoutAState) {
  constexpr uint64_t kLo = 0x5555555555555555ULL;
  std::mt19937_64 rng(5);
  for (bool simd : {true, false}) {
    const auto find = RunMapTestPeer::FindWord(simd);
    for (int iter = 0; iter < 4000; ++iter) {
      const size_t nw = rng() % 70;
      const unsigned base = static_cast<unsigned>(rng() % 3);
      std::vector<uint64_t> w(nw, kLo * base);
      // A few words with other pages, some all of another state.
      for (int k = static_cast<int>(rng() % 4); k > 0 && nw > 0; --k) {
        uint64_t& x = w[rng() % nw];
        if (rng() % 2) {
          x = kLo * (rng() % 3);
        } else {
          const unsigned page = static_cast<unsigned>(rng() % 32);
          x = (x & ~(uint64_t{3} << (2 * page))) | (uint64_t{rng() % 3} << (2 * page));
        }
      }
      const unsigned s = static_cast<unsigned>(rng() % 3);
      const bool want = rng() % 2 != 0;
      const uint64_t from = rng() % (nw + 1);
      uint64_t expect = nw;
      for (uint64_t i = from; i < nw && expect == nw; ++i) {
        for (unsigned p = 0; p < 32; ++p) {
          if ((((w[i] >> (2 * p)) & 3) == s) == want) {
            expect = i;
            break;
          }
        }
      }
      ASSERT_EQ(find(w.data(), from, nw, kLo * s, want), expect)
          << "simd " << simd << " iter " << iter << " nw " << nw << " from " << from << " state "
          << s << " want " << want;
    }
  }
}

// A dense chunk whose runs of a state are far apart and long (tens of
// words): its walks cross the words between them several at a time, and
// still report exactly the model's runs, whole and in random sections.
TEST(RunMapTest, DenseChunkWithLongGapsAndRunsAgainstModel) {
  const uint64_t pages = (uint64_t{1} << 16) + 5000;
  RunMap map(pages, PageState::kPrivate, RunMap::kDefaultChunkShift);
  Model model(pages, static_cast<uint8_t>(PageState::kPrivate));
  auto assign = [&](uint64_t a, uint64_t b, PageState s) {
    map.Assign(a, b, s);
    for (uint64_t p = a; p < b; ++p) model[p] = static_cast<uint8_t>(s);
  };
  // Fragment the start of the chunk page by page: it turns dense.
  for (uint64_t p = 0; p < 600; p += 2)
    assign(p, p + 1, p % 6 == 0 ? PageState::kShared : PageState::kDiscarded);
  ASSERT_EQ(map.GetShape().dense, 1u);
  std::mt19937_64 rng(11);
  for (int step = 0; step < 300; ++step) {
    const uint64_t a = rng() % pages;
    const uint64_t len = step % 3 == 0 ? 1 + rng() % 8 : 1 + rng() % 6000;
    assign(a, std::min(pages, a + len), static_cast<PageState>(rng() % 3));
    for (int k = 0; k < 3; ++k) {
      const PageState s = static_cast<PageState>(k);
      uint64_t sa = 0, sb = pages;
      if (step % 2 == 1) {
        sa = rng() % pages;
        sb = sa + 1 + rng() % (pages - sa);
      }
      std::vector<cvmstate::Run> want, of;
      for (const cvmstate::Run& r : ModelRuns(model, sa, sb))
        if (r.state == s) want.push_back(r);
      map.ForEachRunOf(s, sa, sb, [&](uint64_t x, uint64_t y) { of.push_back({x, y, s}); });
      ASSERT_TRUE(SameRuns(of, want)) << "step " << step << " state " << k;
      ASSERT_TRUE(SameRuns(BatchRunsOf(map, s, sa, sb), want))
          << "step " << step << " state " << k << " batches";
    }
  }
  EXPECT_EQ(map.GetShape().dense, 1u)
      << "the chunk should have stayed dense for this test to mean anything";
}

TEST(RunMapTest, FragmentedChunkTurnsDenseAndBack) {
  RunMap map(1 << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
  for (uint64_t p = 0; p < 4000; p += 2) map.Assign(p, p + 1, PageState::kShared);
  EXPECT_EQ(map.GetShape().dense, 1u);
  EXPECT_EQ(map.CountRuns(), 4000u);
  EXPECT_LE(map.MemoryBytes(), (1u << 16) / 4 + 128);  // the chunk plus a one-segment directory
  // Undo it page by page: the chunk must get simple again (list, then uniform).
  for (uint64_t p = 0; p < 4000; p += 2) map.Assign(p, p + 1, PageState::kPrivate);
  EXPECT_EQ(map.CountRuns(), 1u);
  // Small conversions recount a dense chunk lazily; a large one at once.
  map.Assign(0, 8192, PageState::kDiscarded);
  EXPECT_EQ(map.GetShape().dense, 0u);
  EXPECT_EQ(map.CountRuns(), 2u);
  EXPECT_LE(map.MemoryBytes(), 256u);
  // And a dense chunk left alone by small conversions is still recounted
  // within kDenseRecheck of them.
  for (uint64_t p = 0; p < 4000; p += 2) map.Assign(20000 + p, 20000 + p + 1, PageState::kShared);
  ASSERT_EQ(map.GetShape().dense, 1u);
  for (uint64_t p = 0; p < 4000; p += 2) map.Assign(20000 + p, 20000 + p + 1, PageState::kPrivate);
  for (int i = 0; i < 1100; ++i) map.Assign(30000, 30001, PageState::kPrivate);
  EXPECT_EQ(map.GetShape().dense, 0u);
  // The same where every chunk has an entry of its own (a flat directory,
  // where single pages of dense chunks take the inline path): the recount
  // still comes within kDenseRecheck single-page conversions.
  RunMap wide(16 << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
  for (uint64_t c = 0; c < 16; ++c) wide.Assign((c << 16) + 5, (c << 16) + 6, PageState::kShared);
  ASSERT_EQ(wide.GetShape().entries, 16u);
  for (uint64_t p = 0; p < 4000; p += 2) wide.Assign(p, p + 1, PageState::kShared);
  ASSERT_EQ(wide.GetShape().dense, 1u);
  for (uint64_t p = 0; p < 4000; p += 2) wide.Assign(p, p + 1, PageState::kPrivate);
  for (int i = 0; i < 1100; ++i) wide.Assign(30000, 30001, PageState::kPrivate);
  EXPECT_EQ(wide.GetShape().dense, 0u);
  EXPECT_EQ(wide.CountRuns(), 33u);  // page 5 of each chunk shared
}

// A list turns dense past 128 runs only if it grew by cutting single pages
// out of its runs (random single pages); a chunk written in order (a
// stream, a load), one that also grows otherwise, or one whose runs are
// cut by ranges stays a list up to 512 runs.
TEST(RunMapTest, OnlyAFragmentingListTurnsDenseBeforeItsCap) {
  std::mt19937_64 rng(12);
  {
    RunMap frag(1 << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
    while (frag.GetShape().dense == 0) {
      const uint64_t p = rng() % (1 << 16);
      frag.Assign(p, p + 1, static_cast<PageState>(rng() % 3));
      ASSERT_LE(frag.CountRuns(), 170u);
    }
    EXPECT_GT(frag.CountRuns(), 128u);
  }
  {
    // Every other run in the copy's initial state: each run written after
    // one of those cuts the uniform tail in three, yet always the last run.
    RunMap copy(1 << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
    uint64_t at = 0;
    for (int k = 0; k < 500; ++k) {
      const uint64_t len = 1 + rng() % 120;
      copy.Assign(at, at + len, k % 2 == 0 ? PageState::kPrivate : rng() % 2 ? PageState::kShared : PageState::kDiscarded);
      at += len;
    }
    const uint64_t runs = copy.CountRuns();
    EXPECT_GT(runs, 300u);
    EXPECT_EQ(copy.GetShape().dense, 0u) << runs << " runs";
    EXPECT_EQ(copy.GetShape().list, 1u);
  }
  {
    // Cuts, each followed by a change that extends the new run: half the
    // changes are not cuts.
    RunMap grown(1 << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
    while (grown.CountRuns() < 450) {
      const uint64_t p = 2 * (rng() % (1 << 14));
      if (grown.Get(p) != PageState::kPrivate || grown.Get(p + 1) != PageState::kPrivate) continue;
      grown.Assign(p, p + 1, PageState::kShared);
      grown.Assign(p + 1, p + 2, PageState::kShared);
    }
    EXPECT_EQ(grown.GetShape().dense, 0u);
    EXPECT_EQ(grown.GetShape().list, 1u);
  }
  {
    // Ranges of 2 to 64 pages cut out of private runs (a guest's shared
    // buffers): every change a cut in three, as with single pages.
    RunMap cut(1 << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
    while (cut.CountRuns() < 450) {
      const uint64_t p = rng() % ((1 << 16) - 64), len = 2 + rng() % 63;
      // [p - 1, p + len] all private: the range and a page either side.
      bool inner = p > 0;
      for (uint64_t q = p - 1; inner && q <= p + len; ++q)
        inner = cut.Get(q) == PageState::kPrivate;
      if (!inner) continue;
      cut.Assign(p, p + len, rng() % 2 ? PageState::kShared : PageState::kDiscarded);
    }
    EXPECT_EQ(cut.GetShape().dense, 0u);
    EXPECT_EQ(cut.GetShape().list, 1u);
  }
}

TEST(RunMapTest, CompactDenseGivesBackWhatThinnedChunksHold) {
  RunMap map(uint64_t{4} << 16, PageState::kPrivate, RunMap::kDefaultChunkShift);
  // Four dense chunks; three thinned page by page (fewer than kDenseRecheck
  // conversions, so they stay dense), one left fragmented.
  for (uint64_t c = 0; c < 4; ++c) {
    for (uint64_t p = 0; p < 1200; p += 2) map.Assign((c << 16) + p, (c << 16) + p + 1, PageState::kShared);
  }
  for (uint64_t c = 0; c < 3; ++c) {
    for (uint64_t p = 2; p < 1200; p += 2) map.Assign((c << 16) + p, (c << 16) + p + 1, PageState::kPrivate);
  }
  ASSERT_EQ(map.GetShape().dense, 4u);
  const size_t before = map.MemoryBytes();
  std::vector<cvmstate::Run> runs_before;
  map.ForEachRun([&](const cvmstate::Run& r) {
    runs_before.push_back(r);
    return true;
  });
  map.CompactDense();
  EXPECT_EQ(map.GetShape().dense, 1u);
  EXPECT_LE(map.MemoryBytes(), before - 3 * ((1u << 16) / 4) + 256);  // three small lists instead
  std::vector<cvmstate::Run> runs_after;
  map.ForEachRun([&](const cvmstate::Run& r) {
    runs_after.push_back(r);
    return true;
  });
  ASSERT_EQ(runs_after.size(), runs_before.size());
  for (size_t i = 0; i < runs_after.size(); ++i) {
    EXPECT_EQ(runs_after[i].begin, runs_before[i].begin);
    EXPECT_EQ(runs_after[i].end, runs_before[i].end);
    EXPECT_EQ(runs_after[i].state, runs_before[i].state);
  }
}

TEST(RunMapTest, HugeBlockIsConstantToDeclare) {
  // 12 TiB of 4 KiB pages, and the largest block the trace format allows.
  for (uint64_t pages : {uint64_t{3} << 30, (uint64_t{1} << 52) - 1}) {
    RunMap map(pages, PageState::kDiscarded);
    EXPECT_LE(map.MemoryBytes(), 128u);  // one entry in one directory segment
    EXPECT_EQ(map.CountRuns(), 1u);
    map.Assign(pages / 3, pages / 3 + 1, PageState::kShared);
    map.Assign(5, pages - 5, PageState::kPrivate);
    map.Assign(pages - 2, pages, PageState::kShared);
    std::vector<cvmstate::Run> runs = MapRuns(map, 0, pages);
    ASSERT_EQ(runs.size(), 4u);
    EXPECT_EQ(runs[0].end, 5u);
    EXPECT_EQ(runs[1].state, PageState::kPrivate);
    EXPECT_EQ(runs[2].begin, pages - 5);
    EXPECT_EQ(runs[2].state, PageState::kDiscarded);
    EXPECT_EQ(runs[3].state, PageState::kShared);
    EXPECT_EQ(map.Get(pages / 3), PageState::kPrivate);
    EXPECT_LE(map.MemoryBytes(), 4096u);
  }
}

// A block too large to ever turn flat, against a model of breakpoints:
// thousands of scattered conversions (ascending, descending, random) split
// the sparse directory into many segments, and large ones erase across
// segments and merge them again.
TEST(RunMapTest, SparseDirectoryOfManySegmentsAgainstModel) {
  const uint64_t pages = uint64_t{1} << 46;  // 2^40 chunks of 64 pages
  for (unsigned order = 0; order < 3; ++order) {
    std::mt19937_64 rng(4242 + order);
    RunMap map(pages, PageState::kDiscarded, RunMap::kMinChunkShift);
    std::map<uint64_t, PageState> model{{0, PageState::kDiscarded}};  // page -> state from there on
    auto assign = [&](uint64_t a, uint64_t b, PageState s) {
      auto at = std::prev(model.upper_bound(b));
      const PageState after = at->second;
      model.erase(model.lower_bound(a), model.upper_bound(b));
      model[a] = s;
      if (b < pages) model[b] = after;
      map.Assign(a, b, s);
    };
    for (int step = 0; step < 6000; ++step) {
      uint64_t a;
      if (order == 0) {
        a = (uint64_t{1} << 40) + uint64_t(step) * 131;  // ascending, a few chunks apart
      } else if (order == 1) {
        a = (uint64_t{1} << 45) - uint64_t(step) * 131;  // descending
      } else {
        a = rng() % (pages - 4096);
      }
      uint64_t len = 1 + rng() % 3;
      if (step % 500 == 499) {  // now and then a large one anywhere
        len = 1 + rng() % (uint64_t{1} << 22);
        a = rng() % (pages - len);
      }
      assign(a, a + len, static_cast<PageState>(rng() % 3));
    }
    // Maximal runs of the model.
    std::vector<cvmstate::Run> want;
    for (auto it = model.begin(); it != model.end(); ++it) {
      const uint64_t e = std::next(it) == model.end() ? pages : std::next(it)->first;
      if (it->first == e) continue;
      if (!want.empty() && want.back().state == it->second) {
        want.back().end = e;
      } else {
        want.push_back({it->first, e, it->second});
      }
    }
    ASSERT_TRUE(SameRuns(MapRuns(map, 0, pages), want)) << "order " << order;
    EXPECT_GT(map.GetShape().entries, 1000u);
    for (int k = 0; k < 2000; ++k) {
      const uint64_t p = rng() % pages;
      ASSERT_EQ(map.Get(p), std::prev(model.upper_bound(p))->second) << "order " << order << " page " << p;
    }
    // Runs of one state through ForEachRunOf.
    std::vector<cvmstate::Run> of, want_of;
    map.ForEachRunOf(PageState::kShared, 0, pages, [&](uint64_t x, uint64_t y) { of.push_back({x, y, PageState::kShared}); });
    for (const cvmstate::Run& r : want)
      if (r.state == PageState::kShared) want_of.push_back(r);
    ASSERT_TRUE(SameRuns(of, want_of)) << "order " << order;
    ASSERT_TRUE(SameRuns(BatchRunsOf(map, PageState::kShared, 0, pages), want_of)) << "order " << order;
    // Stopping after 300 of them ends the walk within that batch.
    ASSERT_GT(want_of.size(), 300 + RunMap::kRunBatch);
    const std::vector<cvmstate::Run> head = BatchRunsOf(map, PageState::kShared, 0, pages, 300);
    ASSERT_GE(head.size(), 300u);
    ASSERT_LT(head.size(), 300 + RunMap::kRunBatch) << "batches went on after fn said stop";
    ASSERT_TRUE(SameRuns(head, std::vector<cvmstate::Run>(want_of.begin(), want_of.begin() + head.size())));
    // One conversion over everything folds it back to one entry.
    map.Assign(0, pages, PageState::kPrivate);
    EXPECT_EQ(map.GetShape().entries, 1u);
    EXPECT_EQ(map.CountRuns(), 1u);
    EXPECT_LE(map.MemoryBytes(), 4096u);
  }
}

TEST(RunMapTest, EmptyAndMoved) {
  RunMap empty(0, PageState::kShared);
  EXPECT_EQ(empty.CountRuns(), 0u);
  RunMap a(1000, PageState::kPrivate, 6);
  a.Assign(3, 700, PageState::kShared);
  RunMap b(std::move(a));
  EXPECT_EQ(b.CountRuns(), 3u);
  RunMap c(5, PageState::kShared);
  c = std::move(b);
  EXPECT_EQ(c.Get(3), PageState::kShared);
  EXPECT_EQ(c.Get(700), PageState::kPrivate);
}

// A flat map of dense chunks, moved (constructed, then assigned), keeps
// converting single pages right: the inline path's copies of the
// directory's form and the chunk size move with it.
TEST(RunMapTest, MovedDenseMapConvertsSinglePagesAgainstModel) {
  std::mt19937_64 rng(31);
  constexpr uint64_t kPages = 64 * 64;
  Model model(kPages, static_cast<uint8_t>(PageState::kPrivate));
  auto convert = [&](RunMap& m, int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t p = rng() % kPages;
      const auto s = static_cast<PageState>(rng() % 3);
      m.Assign(p, p + 1, s);
      model[p] = static_cast<uint8_t>(s);
    }
  };
  RunMap a(kPages, PageState::kPrivate, 6);
  convert(a, 3000);
  ASSERT_GT(a.GetShape().dense, 32u);
  ASSERT_EQ(a.GetShape().entries, 64u);  // flat: an entry a chunk
  RunMap b(std::move(a));
  convert(b, 3000);
  EXPECT_TRUE(SameRuns(MapRuns(b, 0, kPages), ModelRuns(model, 0, kPages)));
  RunMap c(5, PageState::kShared);
  c = std::move(b);
  convert(c, 3000);
  EXPECT_TRUE(SameRuns(MapRuns(c, 0, kPages), ModelRuns(model, 0, kPages)));
  EXPECT_GT(c.GetShape().dense, 32u);
}

}  // namespace
}  // namespace cvmstate

// ChunkSummary kept up to date from the chunks conversions touched, against
// the block read whole after every step: digest sum, run count, stretches.
#include "codec/chunk_summary.h"

#include <gtest/gtest.h>

#include <random>
#include <utility>
#include <vector>

#include "codec/chunk_walk.h"
#include "codec/state_digest.h"

namespace cvmstate {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << kDigestChunkShift;

using Stretches = std::vector<std::pair<uint64_t, uint8_t>>;

Stretches StretchesOf(const ChunkSummary& s) {
  Stretches v;
  s.ForEachStretch([&v](uint64_t n, uint8_t k) { v.push_back({n, k}); });
  return v;
}

// The stretches as the manifest's reader expects them, from the block.
Stretches WalkStretches(const BlockTracker& b) {
  Stretches v;
  auto add = [&v](uint64_t n, uint8_t k) {
    if (!v.empty() && v.back().second == k) {
      v.back().first += n;
    } else {
      v.push_back({n, k});
    }
  };
  ForEachChunk(
      b, kDigestChunkShift, 0, ChunkCount(BlockPages(b), kDigestChunkShift),
      [&](uint64_t a, uint64_t z, PageState s) { add(z - a, static_cast<uint8_t>(s)); },
      [&](uint64_t, const std::vector<ChunkRun>&) { add(1, ChunkSummary::kDetailed); });
  return v;
}

::testing::AssertionResult Matches(const ChunkSummary& s, const BlockTracker& b) {
  if (s.digest_sum() != BlockDigestSum(b))
    return ::testing::AssertionFailure() << "digest sum differs";
  if (s.runs() != b.CountRuns()) {
    return ::testing::AssertionFailure()
           << "runs " << s.runs() << ", the block has " << b.CountRuns();
  }
  const Stretches walked = WalkStretches(b);
  if (StretchesOf(s) != walked) return ::testing::AssertionFailure() << "stretches differ";
  // The encoding the manifest holds, from the segments' codes.
  std::string raw, expect;
  uint32_t count = 0;
  s.EncodeStretches(&raw, &count);
  for (const auto& [n, k] : walked) {
    PutVarint(&expect, n);
    expect.push_back(static_cast<char>(k));
  }
  if (raw != expect || count != walked.size()) {
    return ::testing::AssertionFailure()
           << "encoded stretches differ (" << count << " vs " << walked.size() << ")";
  }
  return ::testing::AssertionSuccess();
}

// Random conversions of every shape; after each batch the summary reads
// only the chunks the batch touched.
void RunRandom(uint64_t pages, uint64_t seed, int steps, int batch) {
  std::mt19937_64 rng(seed);
  auto b = BlockTracker::Create("ram", pages * 4096, 4096, PageState::kPrivate).value();
  ChunkSummary s;
  s.Rebuild(*b);
  ASSERT_TRUE(Matches(s, *b));
  std::vector<std::pair<uint64_t, uint64_t>> touched;
  Stretches stretches = StretchesOf(s);
  uint64_t version = s.stretch_version();
  int kept = 0;
  for (int i = 0; i < steps; ++i) {
    uint64_t a, len;
    switch (rng() % 5) {
      case 0:  // one page
        a = rng() % pages, len = 1;
        break;
      case 1:  // a whole chunk or more, from a chunk start
        a = (rng() % ChunkCount(pages, kDigestChunkShift)) * kChunk, len = kChunk * (1 + rng() % 3);
        break;
      case 2:  // across a chunk edge
        a = ((rng() % ChunkCount(pages, kDigestChunkShift)) * kChunk) + kChunk - 1 - rng() % 8,
        len = 2 + rng() % 16;
        break;
      case 3:  // rarely, almost everything
        a = rng() % 4, len = rng() % 20 == 0 ? pages : 64;
        break;
      default:
        a = rng() % pages, len = 1 + rng() % 4096;
    }
    a = std::min(a, pages - 1);
    len = std::min(len, pages - a);
    ASSERT_TRUE(b->Convert(a * 4096, len * 4096, static_cast<PageState>(rng() % 3)).ok());
    touched.push_back({a >> kDigestChunkShift, ((a + len - 1) >> kDigestChunkShift) + 1});
    if (static_cast<int>(touched.size()) == batch || i + 1 == steps) {
      for (const auto& [c0, c1] : touched) s.Update(*b, c0, c1);
      touched.clear();
      ASSERT_TRUE(Matches(s, *b)) << "seed " << seed << " step " << i;
      // A writer that keeps the stretches encoded while the version stays
      // must never miss a change.
      if (StretchesOf(s) != stretches) {
        ASSERT_NE(s.stretch_version(), version) << "seed " << seed << " step " << i;
      }
      kept += s.stretch_version() == version;
      stretches = StretchesOf(s);
      version = s.stretch_version();
    }
  }
  ::testing::Test::RecordProperty("batches_with_stretches_kept", kept);
  // A superset of what changed is fine; the summary keeps its size.
  const size_t pieces = s.pieces();
  s.Update(*b, 0, ChunkCount(pages, kDigestChunkShift));
  EXPECT_TRUE(Matches(s, *b));
  EXPECT_EQ(s.pieces(), pieces);
}

TEST(ChunkSummaryTest, FollowsRandomConversionsChunkByChunk) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    RunRandom(9 * kChunk + 12345, seed, 600, 1 + static_cast<int>(seed % 3) * 7);
  }
}

TEST(ChunkSummaryTest, ConversionsInsideDetailedChunksKeepTheStretches) {
  const uint64_t pages = 4 * kChunk;
  auto b = BlockTracker::Create("ram", pages * 4096, 4096, PageState::kPrivate).value();
  // Chunks 1 and 2 detailed.
  ASSERT_TRUE(b->Convert((kChunk + 5) * 4096, 4096, PageState::kShared).ok());
  ASSERT_TRUE(b->Convert((2 * kChunk + 5) * 4096, 4096, PageState::kShared).ok());
  ChunkSummary s;
  s.Rebuild(*b);
  const uint64_t version = s.stretch_version();
  for (uint64_t k = 0; k < 100; ++k) {
    const uint64_t page = kChunk + 100 + k * 1000;  // all in chunk 1
    ASSERT_TRUE(b->Convert(page * 4096, 4096, PageState::kDiscarded).ok());
    s.Update(*b, page >> kDigestChunkShift, (page >> kDigestChunkShift) + 1);
    ASSERT_TRUE(Matches(s, *b));
  }
  EXPECT_EQ(s.stretch_version(), version);
  // Chunk 2 back to uniform: the stretches change, and so does the version.
  ASSERT_TRUE(b->Convert((2 * kChunk + 5) * 4096, 4096, PageState::kPrivate).ok());
  s.Update(*b, 2, 3);
  ASSERT_TRUE(Matches(s, *b));
  EXPECT_NE(s.stretch_version(), version);
}

TEST(ChunkSummaryTest, ManySegmentsOfCachedStretches) {
  // 5,000 chunks: the stretch list's codes are kept per 1,024 chunks, and
  // conversions anywhere must drop exactly the codes they change.
  for (uint64_t seed = 1; seed <= 3; ++seed) RunRandom(5000 * kChunk + 77, seed, 800, 4);
}

TEST(ChunkSummaryTest, SmallBlocksOfOneShortChunk) {
  for (uint64_t seed = 1; seed <= 3; ++seed) RunRandom(1000, seed, 300, 3);
  RunRandom(kChunk, 9, 300, 1);
}

TEST(ChunkSummaryTest, AHugeSparseBlockCostsItsChangedChunks) {
  // 2^40 pages, 2^23 chunks: pages 512 MiB apart, descending, then some
  // taken back; the summary holds pieces for the chunks that differ.
  const uint64_t pages = uint64_t{1} << 40;
  auto b = BlockTracker::Create("ram", pages * 4096, 4096, PageState::kDiscarded).value();
  ChunkSummary s;
  s.Rebuild(*b);
  EXPECT_EQ(s.pieces(), 1u);
  for (uint64_t k = 2000; k-- > 0;) {
    const uint64_t page = k * (kChunk + 1) * 3;
    ASSERT_TRUE(b->Convert(page * 4096, 4096, PageState::kShared).ok());
    s.Update(*b, page >> kDigestChunkShift, (page >> kDigestChunkShift) + 1);
  }
  ASSERT_TRUE(Matches(s, *b));
  EXPECT_LE(s.pieces(), 2u * 2000 + 1);
  for (uint64_t k = 0; k < 2000; k += 2) {
    const uint64_t page = k * (kChunk + 1) * 3;
    ASSERT_TRUE(b->Convert(page * 4096, 4096, PageState::kDiscarded).ok());
    s.Update(*b, page >> kDigestChunkShift, (page >> kDigestChunkShift) + 1);
  }
  ASSERT_TRUE(Matches(s, *b));
  // One conversion over everything folds it back to one stretch.
  ASSERT_TRUE(b->Convert(0, pages * 4096, PageState::kPrivate).ok());
  s.Update(*b, 0, ChunkCount(pages, kDigestChunkShift));
  ASSERT_TRUE(Matches(s, *b));
  EXPECT_EQ(s.pieces(), 1u);
  EXPECT_EQ(s.runs(), 1u);
}

}  // namespace
}  // namespace cvmstate

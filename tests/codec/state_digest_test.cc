// The state digest against its definition, computed from a page-by-page
// model: per chunk of 2^17 pages the hash of its runs cut at the chunk's
// edges, times R^chunk, summed modulo 2^61 - 1.
#include "codec/state_digest.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "codec/chunk_walk.h"

namespace cvmstate {
namespace {

constexpr uint64_t kChunk = uint64_t{1} << kDigestChunkShift;

std::unique_ptr<BlockTracker> NewBlock(uint64_t pages, PageState initial = PageState::kShared) {
  auto b = BlockTracker::Create("ram", pages * 4096, 4096, initial);
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  return std::move(b).value();
}

// The definition, chunk by chunk, from one byte a page.
uint64_t ModelSum(const std::vector<uint8_t>& model) {
  uint64_t sum = 0;
  for (uint64_t c = 0; c * kChunk < model.size(); ++c) {
    std::vector<ChunkRun> runs;
    const uint64_t end = std::min<uint64_t>(model.size(), (c + 1) * kChunk);
    for (uint64_t p = c * kChunk; p < end; ++p) {
      if (!runs.empty() && static_cast<uint8_t>(runs.back().state) == model[p]) {
        ++runs.back().pages;
      } else {
        runs.push_back({1, static_cast<PageState>(model[p])});
      }
    }
    sum = digest_math::AddMod(sum, ChunkTerm(c, ChunkRunsHash(runs)));
  }
  return sum;
}

TEST(StateDigestTest, UniformStretchesInClosedFormEqualTheirChunksOneByOne) {
  // 7 chunks and a short one of 1000 pages.
  const uint64_t pages = 7 * kChunk + 1000;
  const uint64_t chunks = ChunkCount(pages, kDigestChunkShift);
  for (int s = 0; s < kNumPageStates; ++s) {
    const PageState state = static_cast<PageState>(s);
    for (uint64_t a = 0; a < chunks; ++a) {
      for (uint64_t z = a; z <= chunks; ++z) {
        uint64_t expect = 0;
        for (uint64_t c = a; c < z; ++c) {
          expect = digest_math::AddMod(
              expect,
              ChunkTerm(c, ChunkRunsHash({{ChunkPagesAt(pages, kDigestChunkShift, c), state}})));
        }
        ASSERT_EQ(UniformTerms(pages, a, z, state), expect)
            << "state " << s << " chunks [" << a << ", " << z << ")";
      }
    }
  }
}

TEST(StateDigestTest, BlockSumFollowsTheDefinitionOnRandomStates) {
  const uint64_t pages = 5 * kChunk + 777;
  for (int seed = 1; seed <= 4; ++seed) {
    std::mt19937_64 rng(seed);
    auto b = NewBlock(pages, PageState::kDiscarded);
    std::vector<uint8_t> model(pages, static_cast<uint8_t>(PageState::kDiscarded));
    for (int i = 0; i < 300; ++i) {
      // Small ranges anywhere, sometimes ranges over whole chunks.
      const uint64_t a = rng() % pages;
      const uint64_t len = 1 + (i % 10 == 0 ? rng() % (3 * kChunk) : rng() % 64);
      const uint64_t z = std::min(pages, a + len);
      const PageState s = static_cast<PageState>(rng() % 3);
      ASSERT_TRUE(b->Convert(a * 4096, (z - a) * 4096, s).ok());
      std::fill(model.begin() + a, model.begin() + z, static_cast<uint8_t>(s));
      if (i % 50 == 49) {
        ASSERT_EQ(BlockDigestSum(*b), ModelSum(model)) << "seed " << seed << " step " << i;
      }
    }
  }
}

TEST(StateDigestTest, EveryPageAndEveryBlockFieldCounts) {
  // A block of 2^40 pages (4 PiB): the digest of one run is O(1) whatever
  // the size, and one page anywhere changes it.
  const uint64_t pages = uint64_t{1} << 40;
  VmState vm;
  ASSERT_TRUE(vm.AddBlock(NewBlock(pages, PageState::kPrivate)).ok());
  const uint64_t d0 = ComputeStateDigest(vm);
  std::vector<uint64_t> seen{d0};
  for (uint64_t page :
       {uint64_t{0}, kChunk - 1, kChunk, uint64_t{123456789}, pages / 2, pages - 1}) {
    for (PageState s : {PageState::kShared, PageState::kDiscarded}) {
      ASSERT_TRUE(vm.block(0).Convert(page * 4096, 4096, s).ok());
      const uint64_t d = ComputeStateDigest(vm);
      for (uint64_t other : seen) EXPECT_NE(d, other) << "page " << page;
      seen.push_back(d);
      ASSERT_TRUE(vm.block(0).Convert(page * 4096, 4096, PageState::kPrivate).ok());
      EXPECT_EQ(ComputeStateDigest(vm), d0) << "page " << page;
    }
  }
  // The same pages in another block, or under another name or page size.
  VmState other_name, other_page, two;
  ASSERT_TRUE(
      other_name
          .AddBlock(BlockTracker::Create("rom", pages * 4096, 4096, PageState::kPrivate).value())
          .ok());
  ASSERT_TRUE(
      other_page
          .AddBlock(BlockTracker::Create("ram", pages * 4096, 8192, PageState::kPrivate).value())
          .ok());
  ASSERT_TRUE(two.AddBlock(NewBlock(pages, PageState::kPrivate)).ok());
  ASSERT_TRUE(
      two.AddBlock(BlockTracker::Create("rom", 4096, 4096, PageState::kPrivate).value()).ok());
  EXPECT_NE(ComputeStateDigest(other_name), d0);
  EXPECT_NE(ComputeStateDigest(other_page), d0);
  EXPECT_NE(ComputeStateDigest(two), d0);
}

TEST(StateDigestTest, ChunksTradingStatesChangeTheDigest) {
  // What a linear sum of chunk terms would not see: chunks 0 and 3 shared,
  // 1 and 2 private, against the opposite.
  const uint64_t pages = 4 * kChunk;
  VmState a, b;
  ASSERT_TRUE(a.AddBlock(NewBlock(pages, PageState::kPrivate)).ok());
  ASSERT_TRUE(b.AddBlock(NewBlock(pages, PageState::kShared)).ok());
  for (uint64_t c : {0, 3})
    ASSERT_TRUE(a.block(0).Convert(c * kChunk * 4096, kChunk * 4096, PageState::kShared).ok());
  for (uint64_t c : {0, 3})
    ASSERT_TRUE(b.block(0).Convert(c * kChunk * 4096, kChunk * 4096, PageState::kPrivate).ok());
  EXPECT_NE(ComputeStateDigest(a), ComputeStateDigest(b));
  // And the run-list digest of stores of format 1 is another function.
  EXPECT_NE(ComputeRunListDigest(a), ComputeStateDigest(a));
}

}  // namespace
}  // namespace cvmstate

#include "tracker/block_tracker.h"

#include <gtest/gtest.h>

#include <random>

#include "text/listing.h"
#include "tracker/vm_state.h"

namespace cvmstate {
namespace {

std::unique_ptr<BlockTracker> Make(uint64_t size, uint64_t page = 4096, PageState init = PageState::kPrivate) {
  auto r = BlockTracker::Create("b", size, page, init);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return std::move(r).value();
}

std::string Listing(const BlockTracker& b) {
  std::string s;
  AppendRunListing(b, &s);
  return s;
}

TEST(BlockTrackerTest, CreateValidates) {
  EXPECT_FALSE(BlockTracker::Create("a", 0, 4096, PageState::kShared).ok());
  EXPECT_FALSE(BlockTracker::Create("a", 6144, 4096, PageState::kShared).ok());
  EXPECT_FALSE(BlockTracker::Create("a", 12288 * 4, 12288, PageState::kShared).ok());
  EXPECT_FALSE(BlockTracker::Create("a", 1 << 20, 2048, PageState::kShared).ok());
  EXPECT_FALSE(BlockTracker::Create("a", uint64_t{4} << 30, uint64_t{2} << 30, PageState::kShared).ok());
  EXPECT_FALSE(BlockTracker::Create("bad@name", 1 << 20, 4096, PageState::kShared).ok());
  EXPECT_FALSE(BlockTracker::Create(std::string(65, 'a'), 1 << 20, 4096, PageState::kShared).ok());
  EXPECT_TRUE(BlockTracker::Create(std::string(64, 'a'), 1 << 20, 4096, PageState::kShared).ok());
  EXPECT_TRUE(BlockTracker::Create("/objects/mem0:x_y-z.1", uint64_t{1} << 30, uint64_t{1} << 30,
                                   PageState::kShared).ok());
  auto r = BlockTracker::Create("a", 6144, 4096, PageState::kShared);
  EXPECT_NE(r.status().message().find("not a multiple"), std::string::npos) << r.status().message();
}

TEST(BlockTrackerTest, InvalidConversionsChangeNothing) {
  auto b = Make(1 << 20);
  ASSERT_TRUE(b->Convert(0x1000, 0x2000, PageState::kShared).ok());
  const std::string before = Listing(*b);
  struct Case {
    uint64_t off, size;
    const char* what;
  } cases[] = {
      {0x800, 0x1000, "offset"},
      {0x1000, 0x800, "size"},
      {0x0, 0x0, "empty"},
      {0xff000, 0x2000, "past the end"},
      {0xfffffffffffff000, 0x2000, "overflows"},
      {0x100000, 0x1000, "past the end"},
  };
  for (const Case& c : cases) {
    Status s = b->Convert(c.off, c.size, PageState::kDiscarded);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find(c.what), std::string::npos) << s.message();
    EXPECT_EQ(Listing(*b), before);
  }
  EXPECT_EQ(b->BytesIn(PageState::kShared), 0x2000u);
}

TEST(BlockTrackerTest, HugePagesAndByteCounts) {
  auto b = Make(64 << 20, 2 << 20, PageState::kShared);
  EXPECT_FALSE(b->Convert(0x100000, 0x200000, PageState::kPrivate).ok());
  ASSERT_TRUE(b->Convert(0x200000, 0x400000, PageState::kPrivate).ok());
  EXPECT_EQ(Listing(*b), "b 0x0 0x200000 shared\nb 0x200000 0x400000 private\nb 0x600000 0x3a00000 shared\n");
  std::mt19937_64 rng(5);
  for (int i = 0; i < 2000; ++i) {
    uint64_t page = rng() % 32, n = 1 + rng() % (32 - page);
    ASSERT_TRUE(b->Convert(page << 21, n << 21, static_cast<PageState>(rng() % 3)).ok());
    StateCounts counted{};
    b->ForEachRun([&](const ByteRun& r) {
      counted[static_cast<int>(r.state)] += r.length;
      return true;
    });
    for (int s = 0; s < 3; ++s) ASSERT_EQ(b->BytesIn(static_cast<PageState>(s)), counted[s]);
  }
}

TEST(BlockTrackerTest, SectionRunsAreClipped) {
  auto b = Make(1 << 20);
  ASSERT_TRUE(b->Convert(0x10000, 0x10000, PageState::kShared).ok());
  std::vector<ByteRun> runs;
  b->ForEachRun(0x18000, 0x10000, [&](const ByteRun& r) {
    runs.push_back(r);
    return true;
  });
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].offset, 0x18000u);
  EXPECT_EQ(runs[0].length, 0x8000u);
  EXPECT_EQ(runs[0].state, PageState::kShared);
  EXPECT_EQ(runs[1].offset, 0x20000u);
  EXPECT_EQ(runs[1].length, 0x8000u);
  EXPECT_EQ(b->StateAt(0x1ffff), PageState::kShared);
  EXPECT_EQ(b->StateAt(0x20000), PageState::kPrivate);
}

TEST(VmStateTest, BlocksInDeclarationOrder) {
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("z", 1 << 20, 4096, PageState::kShared).ok());
  ASSERT_TRUE(vm.AddBlock("a", 2 << 20, 4096, PageState::kDiscarded).ok());
  Status dup = vm.AddBlock("z", 1 << 20, 4096, PageState::kShared);
  EXPECT_FALSE(dup.ok());
  EXPECT_NE(dup.message().find("already declared"), std::string::npos);
  EXPECT_EQ(vm.num_blocks(), 2u);
  EXPECT_EQ(vm.block(0).name(), "z");
  EXPECT_EQ(vm.IndexOf("a"), 1);
  EXPECT_EQ(vm.IndexOf("nope"), -1);
  EXPECT_EQ(vm.Find("nope"), nullptr);
  std::string s;
  AppendRunListing(vm, &s);
  EXPECT_EQ(s, "z 0x0 0x100000 shared\na 0x0 0x200000 discarded\n");
}

}  // namespace
}  // namespace cvmstate

// The simulated VFIO container enforces the kernel's rules.
#include "sim/vfio_sim.h"

#include <gtest/gtest.h>

#include <random>

#include "tracker/block_tracker.h"

namespace cvmstate {
namespace {

constexpr uint64_t kPage = 4096;

TEST(VfioSimTest, KernelRules) {
  for (auto mode : {VfioContainer::Mode::kGranule, VfioContainer::Mode::kExtent}) {
    VfioContainer c(mode, 0);
    auto l = c.MakeListener("b", kPage);
    ASSERT_TRUE(l->NotifyPopulate(0, 4 * kPage).ok());
    // Overlapping a live mapping is refused, and counted as an attempt.
    Status s = l->NotifyPopulate(2 * kPage, 4 * kPage);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("overlaps"), std::string::npos);
    EXPECT_EQ(c.stats().violations, 1u);
    const bool granule = mode == VfioContainer::Mode::kGranule;
    EXPECT_EQ(c.stats().mappings, granule ? 4u : 1u);
    // Discarding the middle: granule unmaps pages, extent cuts.
    l->NotifyDiscard(kPage, 2 * kPage);
    auto live = c.LiveMappings();
    ASSERT_EQ(live.size(), 2u);
    EXPECT_EQ(live[0].offset, 0u);
    EXPECT_EQ(live[0].length, kPage);
    EXPECT_EQ(live[1].offset, 3 * kPage);
    EXPECT_EQ(c.stats().cuts, granule ? 0u : 1u);
    EXPECT_EQ(c.stats().maps - c.stats().unmaps, c.stats().mappings);
    // Discarding nothing mapped is harmless (double discard).
    l->NotifyDiscard(10 * kPage, 5 * kPage);
    EXPECT_EQ(c.stats().mappings, 2u);
    EXPECT_EQ(c.stats().violations, 1u);
  }
}

TEST(VfioSimTest, LimitRefusesWholeConversion) {
  // A 1 GiB SWIOTLB pool needs 262,144 granule mappings: over type1's 65,535.
  auto b = BlockTracker::Create("pc.ram", uint64_t{4} << 30, kPage, PageState::kPrivate).value();
  VfioContainer granule(VfioContainer::Mode::kGranule, 65535);
  auto gl = granule.MakeListener("pc.ram", kPage);
  ASSERT_TRUE(b->RegisterListener(gl.get(), 0, b->size()).ok());
  Status s = b->Convert(uint64_t{1} << 30, uint64_t{1} << 30, PageState::kShared);
  EXPECT_EQ(s.code(), Status::Code::kRefused);
  EXPECT_NE(s.message().find("limit 65535"), std::string::npos) << s.message();
  EXPECT_EQ(b->BytesIn(PageState::kShared), 0u);
  EXPECT_EQ(granule.stats().mappings, 0u);
  ASSERT_TRUE(b->UnregisterListener(gl.get()).ok());
  VfioContainer extent(VfioContainer::Mode::kExtent, 65535);
  auto el = extent.MakeListener("pc.ram", kPage);
  ASSERT_TRUE(b->RegisterListener(el.get(), 0, b->size()).ok());
  ASSERT_TRUE(b->Convert(uint64_t{1} << 30, uint64_t{1} << 30, PageState::kShared).ok());
  EXPECT_EQ(extent.stats().mappings, 1u);
}

TEST(VfioSimTest, MappingsFollowSharedPagesExactly) {
  for (auto mode : {VfioContainer::Mode::kGranule, VfioContainer::Mode::kExtent}) {
    std::mt19937_64 rng(42);
    const uint64_t pages = 5000;
    auto b = BlockTracker::Create("b", pages * kPage, kPage, PageState::kPrivate, 6).value();
    VfioContainer c(mode, 0);
    auto l = c.MakeListener("b", kPage);
    ASSERT_TRUE(b->RegisterListener(l.get(), 0, b->size()).ok());
    for (int i = 0; i < 3000; ++i) {
      uint64_t a = rng() % pages, n = 1 + rng() % std::min<uint64_t>(64, pages - a);
      ASSERT_TRUE(b->Convert(a * kPage, n * kPage, static_cast<PageState>(rng() % 3)).ok());
    }
    std::vector<uint8_t> mapped(pages, 0);
    for (const auto& m : c.LiveMappings()) {
      for (uint64_t p = m.offset / kPage; p < (m.offset + m.length) / kPage; ++p) {
        ASSERT_EQ(mapped[p], 0) << "overlapping live mappings";
        mapped[p] = 1;
      }
    }
    for (uint64_t p = 0; p < pages; ++p) ASSERT_EQ(mapped[p], b->StateAt(p * kPage) == PageState::kShared);
    EXPECT_EQ(c.stats().violations, 0u);
    EXPECT_EQ(c.stats().maps - c.stats().unmaps, c.stats().mappings);
    EXPECT_GE(c.stats().peak, c.stats().mappings);
  }
}

}  // namespace
}  // namespace cvmstate

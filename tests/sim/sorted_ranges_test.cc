// SortedRanges against a model with one flag per unit: after every random
// operation the ranges are exactly the model's maximal runs (for the merged
// operations) and every answer matches it.
#include "sim/sorted_ranges.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "sim/kvm_attr_sim.h"

namespace cvmstate {
namespace {

// The maximal runs of set units of `model`.
std::vector<SortedRanges::Range> Runs(const std::vector<bool>& model) {
  std::vector<SortedRanges::Range> v;
  for (uint64_t i = 0; i < model.size(); ++i) {
    if (!model[i]) continue;
    if (!v.empty() && v.back().end == i) {
      ++v.back().end;
    } else {
      v.push_back({i, i + 1});
    }
  }
  return v;
}

bool Same(const std::vector<SortedRanges::Range>& a, const std::vector<SortedRanges::Range>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].begin != b[i].begin || a[i].end != b[i].end) return false;
  }
  return true;
}

TEST(SortedRangesTest, MergedAddAndCutKeepExactlyTheModelsRuns) {
  // Enough ranges for many leaves to split and empty again.
  constexpr uint64_t kUnits = 20000;
  for (unsigned seed = 1; seed <= 6; ++seed) {
    std::mt19937_64 rng(seed);
    SortedRanges r;
    std::vector<bool> model(kUnits, false);
    uint64_t set = 0;
    for (int step = 0; step < 6000; ++step) {
      const uint64_t len = 1 + rng() % (step % 7 == 0 ? 2000 : 8);
      const uint64_t a = rng() % (kUnits - len), b = a + len;
      uint64_t before = 0;
      for (uint64_t i = a; i < b; ++i) before += model[i];
      if (rng() % 2) {
        ASSERT_EQ(r.AddMerged(a, b), len - before) << "seed " << seed << " step " << step;
        for (uint64_t i = a; i < b; ++i) model[i] = true;
        set += len - before;
      } else {
        ASSERT_EQ(r.Cut(a, b), before) << "seed " << seed << " step " << step;
        for (uint64_t i = a; i < b; ++i) model[i] = false;
        set -= before;
      }
      ASSERT_TRUE(r.Valid()) << "seed " << seed << " step " << step;
      // Overlaps on another random interval.
      const uint64_t c = rng() % (kUnits - 16), d = c + 1 + rng() % 16;
      bool any = false;
      for (uint64_t i = c; i < d; ++i) any = any || model[i];
      ASSERT_EQ(r.Overlaps(c, d), any) << "seed " << seed << " step " << step;
      if (step % 97 == 0 || step > 5990) {
        const auto runs = Runs(model);
        ASSERT_TRUE(Same(r.All(), runs)) << "seed " << seed << " step " << step;
        ASSERT_EQ(r.size(), runs.size());
      }
    }
    EXPECT_GT(set, 0u);
  }
}

TEST(SortedRangesTest, UnmergedInsertFindAndErase) {
  // Touching ranges stay apart; Find with and without touching.
  SortedRanges r;
  for (uint64_t i = 0; i < 500; ++i) ASSERT_TRUE(r.InsertIfFree(10 * i, 10 * i + 10));
  EXPECT_FALSE(r.InsertIfFree(15, 16));
  EXPECT_FALSE(r.InsertIfFree(4995, 5005));
  EXPECT_TRUE(r.InsertIfFree(5000, 5001));
  EXPECT_EQ(r.size(), 501u);
  std::vector<SortedRanges::Range> found;
  r.Find(20, 30, false, &found);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].begin, 20u);
  r.Find(20, 30, true, &found);
  ASSERT_EQ(found.size(), 3u);  // [10,20) and [30,40) touch it
  EXPECT_EQ(found[0].begin, 10u);
  EXPECT_EQ(found[2].begin, 30u);
  r.Find(95, 2005, false, &found);
  EXPECT_EQ(found.size(), 192u);  // [90,100) .. [2000,2010)
  for (uint64_t i = 0; i < 500; i += 2) ASSERT_TRUE(r.Erase(10 * i));
  EXPECT_FALSE(r.Erase(0));
  EXPECT_FALSE(r.Erase(11));
  EXPECT_EQ(r.size(), 251u);
  const auto all = r.All();
  ASSERT_EQ(all.size(), 251u);
  for (size_t i = 1; i < all.size(); ++i) ASSERT_LT(all[i - 1].begin, all[i].begin);
  // Erase everything: the table works again from empty.
  for (const auto& x : all) ASSERT_TRUE(r.Erase(x.begin));
  EXPECT_EQ(r.size(), 0u);
  EXPECT_FALSE(r.Overlaps(0, ~uint64_t{0}));
  ASSERT_TRUE(r.InsertIfFree(7, 8));
  EXPECT_TRUE(r.Overlaps(0, 100));
}

TEST(SortedRangesTest, CutOfUnmergedRangesAgainstAList) {
  // Ranges that touch stay apart (VFIO mappings); Cut removes those
  // inside, shortens or splits those crossing an edge, and counts each,
  // against a plain list cut the obvious way.
  for (unsigned seed = 1; seed <= 4; ++seed) {
    std::mt19937_64 rng(seed);
    SortedRanges r;
    std::vector<SortedRanges::Range> model;
    for (int step = 0; step < 4000; ++step) {
      const uint64_t len = 1 + rng() % (step % 5 == 0 ? 300 : 6);
      const uint64_t a = rng() % (20000 - len), b = a + len;
      if (rng() % 3 != 0) {
        bool free = true;
        for (const auto& m : model) free = free && (m.end <= a || m.begin >= b);
        ASSERT_EQ(r.InsertIfFree(a, b), free);
        if (free) {
          model.push_back({a, b});
          std::sort(model.begin(), model.end(), [](auto& x, auto& y) { return x.begin < y.begin; });
        }
        continue;
      }
      SortedRanges::CutCounts want, got;
      uint64_t bytes = 0;
      std::vector<SortedRanges::Range> next;
      for (const auto& m : model) {
        if (m.end <= a || m.begin >= b) {
          next.push_back(m);
          continue;
        }
        bytes += std::min(m.end, b) - std::max(m.begin, a);
        if (m.begin >= a && m.end <= b) {
          ++want.removed;
          continue;
        }
        ++want.cut;
        if (m.begin < a) {
          next.push_back({m.begin, a});
          ++want.pieces;
        }
        if (m.end > b) {
          next.push_back({b, m.end});
          ++want.pieces;
        }
      }
      model = next;
      ASSERT_EQ(r.Cut(a, b, &got), bytes) << "seed " << seed << " step " << step;
      ASSERT_EQ(got.removed, want.removed);
      ASSERT_EQ(got.cut, want.cut);
      ASSERT_EQ(got.pieces, want.pieces);
      ASSERT_TRUE(r.Valid()) << "seed " << seed << " step " << step;
      if (step % 50 == 0) {
        ASSERT_TRUE(Same(r.All(), model)) << "seed " << seed << " step " << step;
      }
    }
    ASSERT_TRUE(Same(r.All(), model));
    EXPECT_GT(model.size(), 100u);
    // One cut over everything empties the table, which works again after.
    ASSERT_GT(r.Cut(0, 20000), 0u);
    EXPECT_EQ(r.size(), 0u);
    EXPECT_TRUE(r.All().empty());
    ASSERT_TRUE(r.InsertIfFree(5, 6));
    EXPECT_EQ(r.size(), 1u);
  }
}

TEST(KvmAttributeSimTest, PrivateBytesAndRangesFollowTheCalls) {
  KvmAttributeSim k;
  ASSERT_TRUE(k.SetPrivate(0, 4096).ok());
  ASSERT_TRUE(k.SetPrivate(8192, 4096).ok());
  EXPECT_EQ(k.range_count(), 2u);
  ASSERT_TRUE(k.SetPrivate(4096, 4096).ok());  // fills the gap: one range
  EXPECT_EQ(k.range_count(), 1u);
  EXPECT_EQ(k.private_bytes(), 3u * 4096);
  k.ClearPrivate(4096, 4096);
  ASSERT_EQ(k.range_count(), 2u);
  EXPECT_EQ(k.ranges()[1].begin, 8192u);
  EXPECT_EQ(k.private_bytes(), 2u * 4096);
  k.ClearPrivate(0, 1 << 20);
  EXPECT_EQ(k.range_count(), 0u);
  EXPECT_EQ(k.private_bytes(), 0u);
  EXPECT_EQ(k.calls(), 5u);
}

}  // namespace
}  // namespace cvmstate

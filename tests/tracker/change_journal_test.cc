#include "tracker/change_journal.h"

#include <gtest/gtest.h>

#include <random>

#include "tracker/journal_reader.h"
#include "tracker/vm_state.h"

namespace cvmstate {
namespace {

TEST(ChangeJournalTest, NothingLostAcrossEpochsAndCompaction) {
  std::mt19937_64 rng(9);
  const uint64_t pages = 100000;
  ChangeJournal j;
  // last_epoch[p]: the newest epoch in which page p changed.
  std::vector<uint64_t> last_epoch(pages, UINT64_MAX);
  for (int round = 0; round < 30; ++round) {
    for (int i = 0; i < 3000; ++i) {  // 90,000 records: batches sorted and merged several times over
      uint64_t a = rng() % pages, n = 1 + rng() % 64;
      n = std::min(n, pages - a);
      j.Record(a, a + n);
      for (uint64_t p = a; p < a + n; ++p) last_epoch[p] = j.current_epoch();
    }
    const uint64_t since = rng() % (j.current_epoch() + 1);
    std::vector<uint8_t> covered(pages, 0);
    uint64_t prev_end = 0;
    for (const PageRange& r : j.ChangedSince(since)) {
      ASSERT_LT(r.begin, r.end);
      ASSERT_TRUE(r.begin > prev_end || prev_end == 0) << "ranges must be sorted and merged";
      prev_end = r.end;
      for (uint64_t p = r.begin; p < r.end; ++p) covered[p] = 1;
    }
    for (uint64_t p = 0; p < pages; ++p) {
      if (last_epoch[p] != UINT64_MAX && last_epoch[p] >= since) {
        ASSERT_TRUE(covered[p]) << "lost page " << p;
      }
    }
    j.OpenEpoch();
  }
  // Reading since the newest epoch costs only what changed since.
  EXPECT_TRUE(j.ChangedSince(j.current_epoch()).empty());
  j.Record(5, 6);
  ASSERT_EQ(j.ChangedSince(j.current_epoch()).size(), 1u);
  j.Trim(j.current_epoch());
  EXPECT_EQ(j.ChangedSince(0).size(), 1u);
  EXPECT_LT(j.MemoryBytes(), 4u << 20);
}

TEST(ChangeJournalTest, RepeatedChangesKeepMemoryToWhatIsDistinct) {
  // A guest toggling the same 2,000 ranges two million times, never read:
  // the batches and the sorted runs merge what repeats, so memory stays at
  // the distinct ranges (plus one batch), not at the records (48 MB).
  ChangeJournal j;
  j.OpenEpoch();
  std::mt19937_64 rng(5);
  for (int i = 0; i < 2000000; ++i) {
    const uint64_t a = (rng() % 2000) * 10;
    j.Record(a, a + 3);
  }
  EXPECT_LT(j.MemoryBytes(), 2u << 20);
  const auto all = j.ChangedSince(0);
  EXPECT_EQ(all.size(), 2000u);
  // Read and trimmed at every epoch, a journal reuses what it has.
  size_t most = 0;
  for (int epoch = 0; epoch < 50; ++epoch) {
    const uint64_t e = j.OpenEpoch();
    for (int i = 0; i < 20000; ++i) {
      const uint64_t a = rng() % (uint64_t{1} << 30);
      j.Record(a, a + 1);
    }
    EXPECT_GE(j.ChangedSince(e).size(), 19000u);
    j.Trim(e + 1);
    EXPECT_TRUE(j.ChangedSince(0).empty());
    if (epoch == 5) most = j.MemoryBytes();
    if (epoch > 5) {
      ASSERT_LE(j.MemoryBytes(), 2 * most) << "epoch " << epoch;
    }
  }
}

TEST(ChangeJournalTest, VmJournalsOnlyAfterFirstEpoch) {
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("a", 1 << 30, 4096, PageState::kPrivate).ok());
  BlockTracker* a = vm.Find("a");
  ASSERT_TRUE(a->Convert(0, 4096, PageState::kShared).ok());
  EXPECT_TRUE(a->journal().ChangedSince(0).empty());
  const uint64_t e1 = vm.OpenEpoch();
  ASSERT_TRUE(a->Convert(8192, 8192, PageState::kShared).ok());
  ASSERT_TRUE(a->Convert(8192, 4096, PageState::kShared).ok());  // no-op: not recorded again
  ASSERT_TRUE(vm.AddBlock("b", 1 << 20, 4096, PageState::kPrivate).ok());
  BlockTracker* b = vm.Find("b");
  EXPECT_EQ(b->journal().current_epoch(), e1);
  const uint64_t e2 = vm.OpenEpoch();
  ASSERT_TRUE(b->Convert(0, 4096, PageState::kDiscarded).ok());
  auto since1 = a->journal().ChangedSince(e1);
  ASSERT_EQ(since1.size(), 1u);
  EXPECT_EQ(since1[0].begin, 2u);
  EXPECT_EQ(since1[0].end, 4u);
  EXPECT_TRUE(a->journal().ChangedSince(e2).empty());
  EXPECT_EQ(b->journal().ChangedSince(e2).size(), 1u);
}

TEST(JournalReaderTest, TheJournalKeepsWhatTheSlowestReaderHasNotRead) {
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("ram", 1 << 30, 4096, PageState::kPrivate).ok());
  BlockTracker& b = vm.block(0);
  JournalReader fast, slow;
  fast.Attach(&vm);
  slow.Attach(&vm);
  ASSERT_TRUE(b.Convert(0, 4096, PageState::kShared).ok());
  fast.Advance();
  ASSERT_TRUE(b.Convert(1 << 20, 4096, PageState::kShared).ok());
  // The fast reader sees only the second change; the slow one both.
  ASSERT_EQ(fast.Changed(b).size(), 1u);
  EXPECT_EQ(fast.Changed(b)[0].begin, 256u);
  EXPECT_EQ(slow.Changed(b).size(), 2u);
  slow.Advance();
  fast.Advance();
  EXPECT_TRUE(slow.Changed(b).empty());
  EXPECT_TRUE(b.journal().ChangedSince(0).empty());  // nobody needs the past
  // A reader goes with its VmState when it moves, and detaches when the
  // VmState goes away.
  ASSERT_TRUE(b.Convert(0, 4096, PageState::kDiscarded).ok());
  VmState moved = std::move(vm);
  EXPECT_EQ(fast.vm(), &moved);
  EXPECT_EQ(fast.Changed(moved.block(0)).size(), 1u);
  {
    VmState gone = std::move(moved);
  }
  EXPECT_FALSE(fast.attached());
  EXPECT_FALSE(slow.attached());
}

}  // namespace
}  // namespace cvmstate

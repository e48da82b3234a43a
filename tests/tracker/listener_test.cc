// The listener transaction rules, checked against per-listener models.
#include <gtest/gtest.h>

#include <random>

#include "tracker/block_tracker.h"
#include "tracker/listener.h"

namespace cvmstate {
namespace {

constexpr uint64_t kPage = 4096;

// Follows notifications into a per-page model of what the listener
// believes, and refuses refusable ones when told to.
class ModelListener : public StateListener {
 public:
  ModelListener(uint64_t pages, uint64_t granularity = 0) : view_(pages, kNone), granularity_(granularity) {}
  static constexpr uint8_t kNone = 0xff;  // never told about this page

  std::string name() const override { return "model"; }
  uint64_t granularity() const override { return granularity_; }
  Status OnChange(uint64_t offset, uint64_t size, PageState from, PageState to) override {
    ++calls;
    if (refuse_after >= 0 && MayRefuse(from, to) && refuse_after-- == 0) return Status::Refused("model says no");
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) view_[p] = static_cast<uint8_t>(to);
    return Status::OK();
  }
  std::vector<uint8_t> view_;
  uint64_t granularity_;
  int refuse_after = -1;  // refuse the (n+1)-th refusable call from now
  int calls = 0;
};

// A DMA listener whose model is the set of populated pages; it checks that
// it is never told to populate what is populated (the kernel would refuse)
// and counts calls.
class DmaModel : public DmaMappingListener {
 public:
  explicit DmaModel(uint64_t pages, bool double_discard = false) : mapped(pages, 0), dd(double_discard) {}
  Status NotifyPopulate(uint64_t offset, uint64_t size) override {
    ++populates;
    if (refuse_after >= 0 && refuse_after-- == 0) return Status::Refused("dma says no");
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) {
      if (mapped[p]) ++violations;
      mapped[p] = 1;
    }
    last_calls.push_back({offset, size, true});
    return Status::OK();
  }
  void NotifyDiscard(uint64_t offset, uint64_t size) override {
    ++discards;
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) {
      if (!mapped[p] && !dd) ++violations;
      mapped[p] = 0;
    }
    last_calls.push_back({offset, size, false});
  }
  bool accepts_double_discard() const override { return dd; }
  uint64_t granularity() const override { return granularity_; }
  struct Call {
    uint64_t offset, size;
    bool populate;
  };
  std::vector<uint8_t> mapped;
  bool dd;
  uint64_t granularity_ = 0;
  int refuse_after = -1;
  int populates = 0, discards = 0, violations = 0;
  std::vector<Call> last_calls;
};

class AttrModel : public MemoryAttributeListener {
 public:
  explicit AttrModel(uint64_t pages) : priv(pages, 0) {}
  Status SetPrivate(uint64_t offset, uint64_t size) override {
    if (refuse_after >= 0 && refuse_after-- == 0) return Status::Refused("kvm says no");
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) priv[p] = 1;
    return Status::OK();
  }
  void ClearPrivate(uint64_t offset, uint64_t size) override {
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) priv[p] = 0;
  }
  std::vector<uint8_t> priv;
  int refuse_after = -1;
};

// "Never told" and "told discarded" mean the same to a listener.
std::vector<uint8_t> Norm(std::vector<uint8_t> v) {
  for (uint8_t& x : v) x = x == ModelListener::kNone ? static_cast<uint8_t>(PageState::kDiscarded) : x;
  return v;
}

std::vector<uint8_t> States(const BlockTracker& b) {
  std::vector<uint8_t> v(b.size() / kPage);
  b.ForEachRun([&](const ByteRun& r) {
    for (uint64_t p = r.offset / kPage; p < (r.offset + r.length) / kPage; ++p) v[p] = static_cast<uint8_t>(r.state);
    return true;
  });
  return v;
}

// A discard listener whose model is the set of pages with backing: never
// told to back a backed page or to free an unbacked one.
class DiscardModel : public DiscardListener {
 public:
  explicit DiscardModel(uint64_t pages) : backed(pages, 0) {}
  Status NotifyPopulate(uint64_t offset, uint64_t size) override {
    if (refuse_after >= 0 && refuse_after-- == 0) return Status::Refused("no memory");
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) {
      if (backed[p]) ++violations;
      backed[p] = 1;
    }
    return Status::OK();
  }
  void NotifyDiscard(uint64_t offset, uint64_t size) override {
    for (uint64_t p = offset / kPage; p < (offset + size) / kPage; ++p) {
      if (!backed[p]) ++violations;
      backed[p] = 0;
    }
  }
  std::vector<uint8_t> backed;
  int refuse_after = -1;
  int violations = 0;
};

TEST(ListenerTest, TransactionsAgainstModels) {
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    std::mt19937_64 rng(seed);
    const uint64_t pages = 64 + rng() % 2000;
    auto made = BlockTracker::Create("b", pages * kPage, kPage, static_cast<PageState>(rng() % 3), 6);
    ASSERT_TRUE(made.ok());
    BlockTracker& b = *made.value();
    // Sections: the general listener sees a random part, the others all.
    const uint64_t s0 = rng() % (pages / 2), s1 = s0 + 1 + rng() % (pages - s0 - 1);
    ModelListener general(pages);
    DmaModel dma(pages, rng() % 2);
    AttrModel attr(pages);
    DiscardModel backing(pages);
    ASSERT_TRUE(b.RegisterListener(&dma, 0, pages * kPage).ok());
    ASSERT_TRUE(b.RegisterListener(&backing, 0, pages * kPage).ok());
    ASSERT_TRUE(b.RegisterListener(&general, s0 * kPage, (s1 - s0) * kPage).ok());
    ASSERT_TRUE(b.RegisterListener(&attr, 0, pages * kPage).ok());
    ASSERT_FALSE(b.RegisterListener(&attr, 0, pages * kPage).ok());  // twice
    for (int step = 0; step < 80; ++step) {
      const uint64_t a = rng() % pages, n = 1 + rng() % std::min<uint64_t>(pages - a, rng() % 2 ? 8 : pages);
      const PageState to = static_cast<PageState>(rng() % 3);
      // One listener refuses now and then.
      const int who = static_cast<int>(rng() % 8);
      if (who == 0) general.refuse_after = static_cast<int>(rng() % 3);
      if (who == 1) dma.refuse_after = static_cast<int>(rng() % 3);
      if (who == 2) attr.refuse_after = static_cast<int>(rng() % 3);
      if (who == 3) backing.refuse_after = static_cast<int>(rng() % 3);
      const std::vector<uint8_t> before = States(b);
      const auto g0 = general.view_;
      const auto d0 = dma.mapped;
      const auto a0 = attr.priv;
      const auto b0 = backing.backed;
      dma.last_calls.clear();
      Status s = b.Convert(a * kPage, n * kPage, to);
      general.refuse_after = dma.refuse_after = attr.refuse_after = backing.refuse_after = -1;
      if (!s.ok()) {
        ASSERT_EQ(s.code(), Status::Code::kRefused) << s.message();
        ASSERT_EQ(States(b), before) << "seed " << seed << " step " << step;
        ASSERT_EQ(Norm(general.view_), Norm(g0));
        ASSERT_EQ(dma.mapped, d0);
        ASSERT_EQ(attr.priv, a0);
        ASSERT_EQ(backing.backed, b0);
        continue;
      }
      const std::vector<uint8_t> now = States(b);
      for (uint64_t p = 0; p < pages; ++p) {
        ASSERT_EQ(dma.mapped[p], now[p] == 0) << "seed " << seed << " step " << step << " page " << p;
        ASSERT_EQ(attr.priv[p], now[p] == 1) << "seed " << seed << " page " << p;
        ASSERT_EQ(backing.backed[p], now[p] != 2) << "seed " << seed << " page " << p;
        if (p >= s0 && p < s1) {
          ASSERT_EQ(Norm(general.view_)[p], now[p]) << "seed " << seed << " page " << p;
        }
      }
      ASSERT_EQ(dma.violations, 0);
      ASSERT_EQ(backing.violations, 0);
      // Per maximal run: no two calls of one kind touch or overlap.
      for (size_t i = 1; i < dma.last_calls.size(); ++i) {
        const auto& p = dma.last_calls[i - 1];
        const auto& c = dma.last_calls[i];
        ASSERT_TRUE(p.populate != c.populate || p.offset + p.size < c.offset || c.offset + c.size < p.offset)
            << "notifications not maximal, seed " << seed;
      }
    }
    // Unregistering withdraws everything.
    ASSERT_TRUE(b.UnregisterListener(&dma).ok());
    ASSERT_TRUE(b.UnregisterListener(&attr).ok());
    ASSERT_TRUE(b.UnregisterListener(&backing).ok());
    EXPECT_EQ(std::count(backing.backed.begin(), backing.backed.end(), 1), 0);
    EXPECT_EQ(backing.violations, 0);
    EXPECT_EQ(std::count(dma.mapped.begin(), dma.mapped.end(), 1), 0);
    EXPECT_EQ(std::count(attr.priv.begin(), attr.priv.end(), 1), 0);
    EXPECT_EQ(b.UnregisterListener(&dma).code(), Status::Code::kNotFound);
    ASSERT_TRUE(b.UnregisterListener(&general).ok());
    EXPECT_EQ(b.num_listeners(), 0u);
  }
}

TEST(ListenerTest, RegistrationReplaysAndRollsBack) {
  auto b = BlockTracker::Create("b", 64 * kPage, kPage, PageState::kPrivate).value();
  for (uint64_t p : {2, 10, 11, 30, 50}) ASSERT_TRUE(b->Convert(p * kPage, kPage, PageState::kShared).ok());
  DmaModel dma(64);
  dma.refuse_after = 2;  // the third shared run is refused
  Status s = b->RegisterListener(&dma, 0, 64 * kPage);
  EXPECT_EQ(s.code(), Status::Code::kRefused);
  EXPECT_NE(s.message().find("dma says no"), std::string::npos);
  EXPECT_EQ(b->num_listeners(), 0u);
  EXPECT_EQ(std::count(dma.mapped.begin(), dma.mapped.end(), 1), 0) << "left mapped after a failed registration";
  DmaModel ok(64);
  ASSERT_TRUE(b->RegisterListener(&ok, 0, 64 * kPage).ok());
  EXPECT_EQ(ok.populates, 4);  // runs 2, 10-11, 30, 50
  EXPECT_EQ(std::count(ok.mapped.begin(), ok.mapped.end(), 1), 5);
  // Without double discard: one discard per run; with: one for the section.
  ASSERT_TRUE(b->UnregisterListener(&ok).ok());
  EXPECT_EQ(ok.discards, 4);
  DmaModel dd(64, true);
  ASSERT_TRUE(b->RegisterListener(&dd, 0, 64 * kPage).ok());
  ASSERT_TRUE(b->UnregisterListener(&dd).ok());
  EXPECT_EQ(dd.discards, 1);
  EXPECT_EQ(dd.last_calls.back().size, 64 * kPage);
}

TEST(ListenerTest, MixedRangeNotifiesPerRun) {
  auto b = BlockTracker::Create("b", 64 * kPage, kPage, PageState::kPrivate).value();
  ASSERT_TRUE(b->Convert(8 * kPage, 8 * kPage, PageState::kDiscarded).ok());
  ASSERT_TRUE(b->Convert(20 * kPage, 4 * kPage, PageState::kShared).ok());
  DmaModel dma(64);
  ModelListener general(64);
  ASSERT_TRUE(b->RegisterListener(&dma, 0, 64 * kPage).ok());
  ASSERT_TRUE(b->RegisterListener(&general, 0, 64 * kPage).ok());
  dma.last_calls.clear();
  general.calls = 0;
  // [0, 32): private 0-8, discarded 8-16, private 16-20, shared 20-24, private 24-32.
  ASSERT_TRUE(b->Convert(0, 32 * kPage, PageState::kShared).ok());
  ASSERT_EQ(dma.last_calls.size(), 2u);  // [0,20) and [24,32): merged across private/discarded
  EXPECT_EQ(dma.last_calls[0].offset, 0u);
  EXPECT_EQ(dma.last_calls[0].size, 20 * kPage);
  EXPECT_EQ(general.calls, 4);  // the general form tells private from discarded
}

TEST(ListenerTest, GranularityIsCheckedUpFront) {
  const uint64_t g = 2 << 20;
  auto b = BlockTracker::Create("b", 64 << 20, kPage, PageState::kPrivate).value();
  ModelListener coarse(16384, g);
  EXPECT_FALSE(b->RegisterListener(&coarse, kPage, g).ok());
  ASSERT_TRUE(b->RegisterListener(&coarse, g, 4 * g).ok());
  Status s = b->Convert(g + kPage, kPage, PageState::kShared);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("granularity"), std::string::npos);
  EXPECT_EQ(b->BytesIn(PageState::kShared), 0u);
  EXPECT_TRUE(b->Convert(0, kPage, PageState::kShared).ok());  // outside the section
  EXPECT_TRUE(b->Convert(2 * g, g, PageState::kShared).ok());
  EXPECT_EQ(b->BytesIn(PageState::kShared), g + kPage);
  ModelListener odd(16384, 3 * kPage);
  EXPECT_FALSE(b->RegisterListener(&odd, 0, 12 * kPage).ok());
}

TEST(ListenerTest, RegistrationRefusesAStateFinerThanTheGranularity) {
  const uint64_t g = 2 << 20;
  auto b = BlockTracker::Create("b", 8 * g, kPage, PageState::kPrivate).value();
  ASSERT_TRUE(b->Convert(g + 5 * kPage, kPage, PageState::kShared).ok());
  DmaModel dma(8 * g / kPage);
  dma.granularity_ = g;
  Status s = b->RegisterListener(&dma, 0, 4 * g);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument) << s.message();
  EXPECT_NE(s.message().find("block 'b'"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[0x205000, 0x206000)"), std::string::npos) << s.message();
  EXPECT_EQ(dma.populates, 0) << "a 4 KiB populate was replayed to a 2 MiB listener";
  EXPECT_EQ(b->num_listeners(), 0u);
  // A section that does not hold the odd page, or a state made coarse
  // again, registers.
  ASSERT_TRUE(b->RegisterListener(&dma, 2 * g, 2 * g).ok());
  ASSERT_TRUE(b->UnregisterListener(&dma).ok());
  ASSERT_TRUE(b->Convert(g, g, PageState::kShared).ok());
  ASSERT_TRUE(b->RegisterListener(&dma, 0, 4 * g).ok());
  EXPECT_EQ(dma.populates, 1);
  EXPECT_EQ(dma.last_calls.back().offset, g);
  EXPECT_EQ(dma.last_calls.back().size, g);
}

TEST(ListenerTest, GranularityIsCheckedOnThePartInsideTheSection) {
  const uint64_t g = 2 << 20;
  auto b = BlockTracker::Create("b", 8 * g, kPage, PageState::kPrivate).value();
  DmaModel dma(8 * g / kPage);
  dma.granularity_ = g;
  ASSERT_TRUE(b->RegisterListener(&dma, 2 * g, 2 * g).ok());
  // [g + 4K, 3g): unaligned as a whole, but [2g, 3g) inside the section is.
  Status s = b->Convert(g + kPage, 2 * g - kPage, PageState::kShared);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(dma.populates, 1);
  EXPECT_EQ(dma.last_calls.back().offset, 2 * g);
  EXPECT_EQ(dma.last_calls.back().size, g);
  // [3g + 4K, 5g): the part inside, [3g + 4K, 4g), is not aligned.
  s = b->Convert(3 * g + kPage, 2 * g - kPage, PageState::kShared);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("[0x601000, 0x800000)"), std::string::npos) << s.message();
  EXPECT_EQ(b->BytesIn(PageState::kShared), 2 * g - kPage);
}

}  // namespace
}  // namespace cvmstate

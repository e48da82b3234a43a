// The migration sequences end to end in one process, over a socketpair and
// real RocksDB stores: verify -> commit -> replay -> acknowledge, and every
// failure taken back on both sides.
#include "session/incoming.h"
#include "session/outgoing.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "codec/state_digest.h"
#include "migration/byte_stream.h"
#include "process.h"
#include "sim/kvm_attr_sim.h"
#include "sim/vfio_sim.h"
#include "string_stream.h"

namespace cvmstate {
namespace {

// A guest with two blocks in mixed states.
VmState Guest(uint64_t seed) {
  VmState vm;
  EXPECT_TRUE(vm.AddBlock("pc.ram", uint64_t{1} << 32, 4096, PageState::kPrivate).ok());
  EXPECT_TRUE(vm.AddBlock("mem1", uint64_t{1} << 30, 2 << 20, PageState::kDiscarded).ok());
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 500; ++i) {
    BlockTracker& b = vm.block(i % 2);
    const uint64_t pages = b.size() / b.page_size();
    const uint64_t at = rng() % pages, n = 1 + rng() % std::min<uint64_t>(64, pages - at);
    EXPECT_TRUE(b.Convert(at * b.page_size(), n * b.page_size(), static_cast<PageState>(rng() % 3)).ok());
  }
  return vm;
}

uint64_t SharedRuns(const VmState& vm) {
  uint64_t n = 0;
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    b.map().ForEachRunOf(PageState::kShared, 0, b.size() >> b.page_shift(), [&](uint64_t, uint64_t) { ++n; });
  }
  return n;
}

// A DMA listener that refuses every populate: a destination whose IOMMU
// cannot map the guest.
class RefusingDma : public DmaMappingListener {
 public:
  Status NotifyPopulate(uint64_t, uint64_t) override { return Status::Refused("no IOMMU space left"); }
  void NotifyDiscard(uint64_t, uint64_t) override {}
};

struct Pair {
  Pair() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fd), 0); }
  ~Pair() {
    close(fd[0]);
    close(fd[1]);
  }
  int fd[2];
};

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir();
    auto s = CheckpointStore::Open(dir_ + "/src");
    auto d = CheckpointStore::Open(dir_ + "/dst");
    ASSERT_TRUE(s.ok() && d.ok());
    src_store_ = std::move(s).value();
    dst_store_ = std::move(d).value();
  }

  // Runs both sides; the source converts `live` pages between rounds.
  void Migrate(VmState* vm, const DestinationListeners& listeners, Status* src_status, Result<VmState>* dst_result,
               IncomingReport* dst_report) {
    Pair p;
    std::thread dst([&] {
      FdSource in(p.fd[1], 10);
      FdSink back(p.fd[1], 30);
      IncomingOptions o;
      o.reply = &back;
      o.drain = [&] {
        shutdown(p.fd[1], SHUT_WR);
        FdSource drain(p.fd[1], 1);
        char c;
        while (drain.Read(&c, 1).ok()) {
        }
      };
      IncomingMigration in_mig(dst_store_.get(), std::move(o));
      *dst_result = in_mig.Run(&in, listeners);
      *dst_report = in_mig.report();
    });
    FdSink sink(p.fd[0], 30);
    FdSource replies(p.fd[0], 10), refusal(p.fd[0], 2);
    OutgoingOptions o;
    o.rounds = 3;
    o.replies = &replies;
    o.refusal = &refusal;
    o.commit_to = src_store_.get();
    o.commit_id = "g";
    o.commit_sequence = 5;
    std::mt19937_64 rng(9);
    OutgoingReport report;
    *src_status = RunOutgoingMigration(
        vm, "g", &sink, o,
        [&](int, bool) {
          BlockTracker& b = vm->block(0);
          for (int i = 0; i < 50; ++i) {
            Status s = b.Convert((rng() % 1000) * 4096, 4096, static_cast<PageState>(rng() % 3));
            if (!s.ok()) return s;
          }
          return Status::OK();
        },
        &report);
    if (src_status->ok()) {
      EXPECT_EQ(report.rounds.size(), 4u);
    }
    dst.join();
  }

  std::string dir_;
  std::unique_ptr<CheckpointStore> src_store_, dst_store_;
};

TEST_F(SessionTest, VerifyCommitReplayAcknowledgeThenTheSourceCommits) {
  VmState vm = Guest(1);
  VfioContainer vfio(VfioContainer::Mode::kExtent, 0);
  std::vector<std::unique_ptr<DmaMappingListener>> dma;
  std::vector<std::unique_ptr<KvmAttributeSim>> kvm;
  auto listeners = [&](const BlockTracker& b) -> std::vector<StateListener*> {
    dma.push_back(vfio.MakeListener(b.name(), b.page_size()));
    kvm.push_back(std::make_unique<KvmAttributeSim>());
    return {dma.back().get(), kvm.back().get()};
  };
  Status src;
  Result<VmState> dst{Status::IOError("not run")};
  IncomingReport report;
  Migrate(&vm, listeners, &src, &dst, &report);
  ASSERT_TRUE(src.ok()) << src.message();
  ASSERT_TRUE(dst.ok()) << dst.status().message();
  EXPECT_EQ(ComputeStateDigest(dst.value()), ComputeStateDigest(vm));
  // Replayed before the acknowledgement: one mapping per shared run, and
  // the private bytes marked.
  EXPECT_EQ(vfio.stats().mappings, SharedRuns(vm));
  uint64_t private_bytes = 0, marked = 0;
  for (size_t i = 0; i < vm.num_blocks(); ++i) private_bytes += vm.block(i).BytesIn(PageState::kPrivate);
  for (const auto& k : kvm) marked += k->private_bytes();
  EXPECT_EQ(marked, private_bytes);
  EXPECT_EQ(report.dma_listeners, 2u);
  EXPECT_EQ(report.attribute_listeners, 2u);
  EXPECT_GT(report.commit_bytes, 0u);
  // Both stores hold the final state; the source's at the given sequence.
  auto d = dst_store_->Load("g");
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(ComputeStateDigest(d.value()), ComputeStateDigest(vm));
  CheckpointInfo info;
  auto s = src_store_->Load("g", &info);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(ComputeStateDigest(s.value()), ComputeStateDigest(vm));
  EXPECT_EQ(info.sequence, 5u);
  for (size_t i = 0; i < dst->num_blocks(); ++i) {
    EXPECT_TRUE(dst->block(i).UnregisterListener(dma[i].get()).ok());
    EXPECT_TRUE(dst->block(i).UnregisterListener(kvm[i].get()).ok());
  }
}

TEST_F(SessionTest, ARefusedReplayIsTakenBackOnBothSides) {
  VmState vm = Guest(2);
  RefusingDma refusing;
  KvmAttributeSim kvm;  // registered first on block 0, then rolled back
  int calls = 0;
  auto listeners = [&](const BlockTracker&) -> std::vector<StateListener*> {
    if (calls++ == 0) return {&kvm};
    return {&refusing};
  };
  Status src;
  Result<VmState> dst{Status::IOError("not run")};
  IncomingReport report;
  Migrate(&vm, listeners, &src, &dst, &report);
  ASSERT_FALSE(dst.ok());
  EXPECT_EQ(dst.status().code(), Status::Code::kRefused) << dst.status().message();
  // The source learns why, and commits nothing.
  EXPECT_EQ(src.code(), Status::Code::kRefused) << src.message();
  EXPECT_NE(src.message().find("no IOMMU space left"), std::string::npos) << src.message();
  EXPECT_FALSE(src_store_->HasVm("g").value());
  // The destination's commit is gone, and the listener that had accepted
  // its replay was withdrawn.
  EXPECT_FALSE(dst_store_->HasVm("g").value());
  EXPECT_EQ(kvm.private_bytes(), 0u);
}

TEST_F(SessionTest, AnExistingVmIsNeverOverwritten) {
  VmState old = Guest(3);
  ASSERT_TRUE(dst_store_->CommitFull("g", old, 1).ok());
  VmState vm = Guest(4);
  Status src;
  Result<VmState> dst{Status::IOError("not run")};
  IncomingReport report;
  Migrate(&vm, [](const BlockTracker&) { return std::vector<StateListener*>{}; }, &src, &dst, &report);
  EXPECT_EQ(dst.status().code(), Status::Code::kAlreadyExists) << dst.status().message();
  EXPECT_EQ(src.code(), Status::Code::kRefused) << src.message();
  EXPECT_NE(src.message().find("already exists"), std::string::npos) << src.message();
  auto kept = dst_store_->Load("g");
  ASSERT_TRUE(kept.ok()) << kept.status().message();
  EXPECT_EQ(ComputeStateDigest(kept.value()), ComputeStateDigest(old));
}

using testing::StringSink;
using testing::StringSource;

TEST_F(SessionTest, RecordedStreamsCommitWholeAndRefuseTrailingBytes) {
  VmState vm = Guest(5);
  StringSink file;
  OutgoingReport out;
  ASSERT_TRUE(RunOutgoingMigration(&vm, "g", &file, OutgoingOptions{}, nullptr, &out).ok());
  EXPECT_EQ(out.total_bytes, file.data.size());
  {
    const std::string trailing = file.data + "x";
    StringSource in(trailing);
    IncomingMigration m(dst_store_.get(), IncomingOptions{});
    auto r = m.Run(&in, [](const BlockTracker&) { return std::vector<StateListener*>{}; });
    EXPECT_EQ(r.status().code(), Status::Code::kCorruption) << r.status().message();
    EXPECT_FALSE(dst_store_->HasVm("g").value());
  }
  StringSource in(file.data);
  IncomingOptions o;
  o.commit_as = "copy";
  IncomingMigration m(dst_store_.get(), std::move(o));
  auto r = m.Run(&in, [](const BlockTracker&) { return std::vector<StateListener*>{}; });
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(m.report().committed_as, "copy");
  auto copy = dst_store_->Load("copy");
  ASSERT_TRUE(copy.ok());
  EXPECT_EQ(ComputeStateDigest(copy.value()), ComputeStateDigest(vm));
}

// A DMA listener that keeps the pages it has mapped, page by page, and
// refuses every populate after its first `accept` (if set).
class RecordingDma : public DmaMappingListener {
 public:
  explicit RecordingDma(uint64_t page_size, uint64_t accept = ~uint64_t{0}) : page_(page_size), accept_(accept) {}
  Status NotifyPopulate(uint64_t offset, uint64_t size) override {
    if (populates_ == accept_) return Status::Refused("mapping refused after " + std::to_string(accept_));
    ++populates_;
    for (uint64_t p = offset / page_; p < (offset + size) / page_; ++p) EXPECT_TRUE(mapped_.insert(p).second);
    return Status::OK();
  }
  void NotifyDiscard(uint64_t offset, uint64_t size) override {
    ++discards_;
    for (uint64_t p = offset / page_; p < (offset + size) / page_; ++p) EXPECT_EQ(mapped_.erase(p), 1u);
  }
  const std::set<uint64_t>& mapped() const { return mapped_; }
  uint64_t populates() const { return populates_; }
  uint64_t discards() const { return discards_; }

 private:
  uint64_t page_, accept_, populates_ = 0, discards_ = 0;
  std::set<uint64_t> mapped_;
};

// A recording DMA listener and a KVM attribute table per block.
struct RecordingHost {
  std::vector<std::unique_ptr<RecordingDma>> dma;
  std::vector<std::unique_ptr<KvmAttributeSim>> kvm;
  DestinationListeners Listeners() {
    return [this](const BlockTracker& b) -> std::vector<StateListener*> {
      dma.push_back(std::make_unique<RecordingDma>(b.page_size()));
      kvm.push_back(std::make_unique<KvmAttributeSim>());
      return {dma.back().get(), kvm.back().get()};
    };
  }
};

std::set<uint64_t> SharedPages(const BlockTracker& b) {
  std::set<uint64_t> pages;
  b.map().ForEachRunOf(PageState::kShared, 0, b.size() >> b.page_shift(), [&](uint64_t a, uint64_t e) {
    for (uint64_t p = a; p < e; ++p) pages.insert(p);
  });
  return pages;
}

// A recorded stream of 4 rounds; the guest converts 50 of the first 200
// pages of block 0 before each round after the first (pages that change
// more than once).
std::string RecordedLiveStream(VmState* vm) {
  StringSink file;
  OutgoingOptions o;
  o.rounds = 3;
  std::mt19937_64 rng(17);
  OutgoingReport out;
  EXPECT_TRUE(RunOutgoingMigration(vm, "g", &file, o,
                                   [&](int, bool) {
                                     for (int i = 0; i < 50; ++i) {
                                       Status s = vm->block(0).Convert((rng() % 200) * 4096, 4096,
                                                                       static_cast<PageState>(rng() % 3));
                                       if (!s.ok()) return s;
                                     }
                                     return Status::OK();
                                   },
                                   &out)
                  .ok());
  EXPECT_EQ(out.rounds.size(), 4u);
  return file.data;
}

TEST_F(SessionTest, ListenersFollowTheRoundsFromTheFirstRoundsEnd) {
  VmState vm = Guest(6);
  const std::string stream = RecordedLiveStream(&vm);
  RecordingHost host;
  auto& dma = host.dma;
  auto& kvm = host.kvm;
  const DestinationListeners listeners = host.Listeners();
  StringSource in(stream);
  IncomingMigration m(dst_store_.get(), IncomingOptions{});
  auto r = m.Run(&in, listeners);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ(dma.size(), 2u);
  // Registered before the later rounds: their conversions reached the
  // listener as changes (a replay at registration only populates), and
  // nothing was left to replay in the downtime.
  EXPECT_GT(dma[0]->discards(), 0u);
  EXPECT_EQ(m.report().replay_ms, 0.0);
  // What the listeners hold is the final state, page for page.
  for (size_t i = 0; i < r->num_blocks(); ++i) {
    EXPECT_EQ(dma[i]->mapped(), SharedPages(r->block(i))) << r->block(i).name();
    EXPECT_EQ(kvm[i]->private_bytes(), r->block(i).BytesIn(PageState::kPrivate)) << r->block(i).name();
  }
  EXPECT_EQ(ComputeStateDigest(r.value()), ComputeStateDigest(vm));
  // The rounds were staged as they ended: the commit wrote the last
  // round's changes and the manifest, a small part of the records.
  EXPECT_GT(m.report().staged_bytes, 0u);
  EXPECT_GT(m.report().commit_bytes, 0u);
  EXPECT_LT(m.report().commit_bytes * 4, m.report().staged_bytes);
  auto stored = dst_store_->Load("g");
  ASSERT_TRUE(stored.ok()) << stored.status().message();
  EXPECT_EQ(ComputeStateDigest(stored.value()), ComputeStateDigest(vm));
  // The step-by-step caller that gave Receive its listeners cannot replay
  // them again.
  StringSource again(stream);
  IncomingOptions o;
  o.commit_as = "again";
  IncomingMigration steps(dst_store_.get(), std::move(o));
  std::vector<std::unique_ptr<RecordingDma>> more;
  const DestinationListeners others = [&](const BlockTracker& b) -> std::vector<StateListener*> {
    more.push_back(std::make_unique<RecordingDma>(b.page_size()));
    return {more.back().get()};
  };
  ASSERT_TRUE(steps.Receive(&again, &others).ok());
  ASSERT_TRUE(steps.Commit().ok());
  EXPECT_EQ(steps.Replay(others).code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(steps.Acknowledge().ok());
  for (size_t i = 0; i < steps.vm()->num_blocks(); ++i) {
    EXPECT_EQ(more[i]->mapped(), SharedPages(steps.vm()->block(i)));
    EXPECT_TRUE(steps.vm()->block(i).UnregisterListener(more[i].get()).ok());
  }
  for (size_t i = 0; i < r->num_blocks(); ++i) {
    EXPECT_TRUE(r->block(i).UnregisterListener(dma[i].get()).ok());
    EXPECT_TRUE(r->block(i).UnregisterListener(kvm[i].get()).ok());
  }
}

TEST_F(SessionTest, AFailureAfterTheFirstRoundWithdrawsTheListeners) {
  VmState vm = Guest(7);
  const std::string stream = RecordedLiveStream(&vm);
  // Cut inside the end frame: the listeners are registered by then.
  const std::string cut = stream.substr(0, stream.size() - 8);
  RecordingHost host;
  auto& dma = host.dma;
  auto& kvm = host.kvm;
  const DestinationListeners listeners = host.Listeners();
  StringSource in(cut);
  IncomingMigration m(dst_store_.get(), IncomingOptions{});
  auto r = m.Run(&in, listeners);
  ASSERT_FALSE(r.ok());
  ASSERT_EQ(dma.size(), 2u);
  EXPECT_GT(dma[0]->populates(), 0u);
  for (size_t i = 0; i < dma.size(); ++i) {
    EXPECT_TRUE(dma[i]->mapped().empty());
    EXPECT_EQ(kvm[i]->private_bytes(), 0u);
  }
  EXPECT_FALSE(dst_store_->HasVm("g").value());
  EXPECT_GT(m.report().staged_bytes, 0u);
  // Nor are the records staged before the failure left behind.
  auto expect_empty_store = [&] {
    std::unique_ptr<rocksdb::Iterator> it(dst_store_->db()->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    for (; it->Valid(); it->Next()) ADD_FAILURE() << "key left behind: " << it->key().ToString(true);
  };
  expect_empty_store();
  // A caller of the steps that drops the migration after the failure
  // without Abort: the same is taken back when it is destroyed.
  dma.clear();
  kvm.clear();
  {
    StringSource again(cut);
    IncomingMigration steps(dst_store_.get(), IncomingOptions{});
    EXPECT_FALSE(steps.Receive(&again, &listeners).ok());
    ASSERT_EQ(dma.size(), 2u);
    EXPECT_FALSE(dma[0]->mapped().empty());
  }
  for (size_t i = 0; i < dma.size(); ++i) {
    EXPECT_TRUE(dma[i]->mapped().empty());
    EXPECT_EQ(kvm[i]->private_bytes(), 0u);
  }
  expect_empty_store();
  // And the id is free again.
  StringSource whole(stream);
  IncomingMigration ok(dst_store_.get(), IncomingOptions{});
  EXPECT_TRUE(ok.Run(&whole, [](const BlockTracker&) { return std::vector<StateListener*>{}; }).ok());
}

TEST_F(SessionTest, AnIdBeingReceivedIsNotReceivedTwice) {
  VmState vm = Guest(9);
  const std::string stream = RecordedLiveStream(&vm);
  const auto none = [](const BlockTracker&) { return std::vector<StateListener*>{}; };
  IncomingMigration first(dst_store_.get(), IncomingOptions{});
  StringSource in(stream);
  ASSERT_TRUE(first.Receive(&in).ok());
  // The first holds "g" (reserved, staged, not committed yet).
  StringSource again(stream);
  IncomingMigration second(dst_store_.get(), IncomingOptions{});
  auto r = second.Run(&again, none);
  EXPECT_EQ(r.status().code(), Status::Code::kAlreadyExists) << r.status().message();
  ASSERT_TRUE(first.Commit().ok());
  ASSERT_TRUE(first.Acknowledge().ok());
  auto stored = dst_store_->Load("g");
  ASSERT_TRUE(stored.ok()) << stored.status().message();
  EXPECT_EQ(ComputeStateDigest(stored.value()), ComputeStateDigest(vm));
}

TEST_F(SessionTest, AListenerRefusingALaterRoundEndsTheMigration) {
  VmState vm = Guest(8);
  // Block 0's listener accepts exactly the replay of the first round's
  // state, then refuses: the first page a later round shares.
  uint64_t first_round_runs = 0;
  vm.block(0).map().ForEachRunOf(PageState::kShared, 0, vm.block(0).size() >> vm.block(0).page_shift(),
                                 [&](uint64_t, uint64_t) { ++first_round_runs; });
  const std::string stream = RecordedLiveStream(&vm);
  std::vector<std::unique_ptr<RecordingDma>> dma;
  KvmAttributeSim kvm;
  auto listeners = [&](const BlockTracker& b) -> std::vector<StateListener*> {
    dma.push_back(std::make_unique<RecordingDma>(b.page_size(), dma.empty() ? first_round_runs : ~uint64_t{0}));
    if (dma.size() == 1) return {&kvm, dma.back().get()};
    return {dma.back().get()};
  };
  StringSource in(stream);
  IncomingMigration m(dst_store_.get(), IncomingOptions{});
  auto r = m.Run(&in, listeners);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kRefused) << r.status().message();
  EXPECT_NE(r.status().message().find("mapping refused after"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("frame "), std::string::npos) << r.status().message();
  EXPECT_EQ(dma[0]->populates(), first_round_runs);
  for (const auto& d : dma) EXPECT_TRUE(d->mapped().empty());
  EXPECT_EQ(kvm.private_bytes(), 0u);
  EXPECT_FALSE(dst_store_->HasVm("g").value());
}

TEST_F(SessionTest, StepsRunOnlyInOrder) {
  IncomingMigration m(dst_store_.get(), IncomingOptions{});
  EXPECT_EQ(m.Commit().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(m.Acknowledge().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(m.Replay([](const BlockTracker&) { return std::vector<StateListener*>{}; }).code(),
            Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace cvmstate

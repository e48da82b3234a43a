// Power loss and bit rot in the write-ahead log, on real store directories.
// Power loss: the last commit's write is torn before it was acknowledged;
// the store must open with the previous checkpoint. Bit rot: any byte of
// the log may flip later; the store must open with the last checkpoint or
// refuse, never silently with an older one.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "codec/state_digest.h"
#include "process.h"
#include "store/checkpoint_store.h"

namespace cvmstate {
namespace {

namespace fs = std::filesystem;
using testing::MakeTempDir;
using testing::ReadFile;
using testing::WriteFile;

constexpr int kCheckpoints = 6;
const char* kRecordFile = "CVMSTATE-COMMITTED";

// The newest write-ahead log of a store directory.
std::string NewestLog(const std::string& dir) {
  std::string best;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string p = e.path().string();
    if (p.size() > 4 && p.compare(p.size() - 4, 4, ".log") == 0 && fs::file_size(p) > 0 && p > best) best = p;
  }
  return best;
}

class DurabilityTest : public ::testing::Test {
 protected:
  // Commits kCheckpoints distinct states of VM "g" into dir_; digests_[k]
  // is the digest of checkpoint k+1. Also keeps the commit record and the
  // log's size as they were after checkpoint kCheckpoints-1.
  void SetUp() override {
    dir_ = MakeTempDir() + "/db";
    auto store = CheckpointStore::Open(dir_);
    ASSERT_TRUE(store.ok()) << store.status().message();
    VmState vm;
    ASSERT_TRUE(vm.AddBlock("ram", uint64_t{1} << 34, 4096, PageState::kPrivate).ok());
    std::mt19937_64 rng(7);
    for (int k = 1; k <= kCheckpoints; ++k) {
      for (int i = 0; i < 200; ++i) {
        const uint64_t page = rng() % (uint64_t{1} << 22);
        ASSERT_TRUE(vm.block(0).Convert(page << 12, (1 + rng() % 64) << 12, static_cast<PageState>(rng() % 3)).ok());
      }
      if (k == kCheckpoints) {
        record_before_last_ = ReadFile(dir_ + "/" + kRecordFile);
        log_before_last_ = fs::file_size(NewestLog(dir_));
      }
      auto c = store.value()->CommitFull("g", vm, k);
      ASSERT_TRUE(c.ok()) << c.status().message();
      digests_.push_back(ComputeStateDigest(vm));
    }
    store.value().reset();
    log_ = NewestLog(dir_);
    ASSERT_FALSE(log_.empty());
    log_after_last_ = fs::file_size(log_);
    ASSERT_GT(log_after_last_, log_before_last_);
  }

  // A copy of the store to damage.
  std::string Copy() {
    const std::string to = MakeTempDir() + "/db";
    fs::copy(dir_, to, fs::copy_options::recursive);
    return to;
  }

  // Opens and loads g: the checkpoint number it has, 0 if refused.
  int Recovered(const std::string& dir, std::string* why) {
    auto store = CheckpointStore::Open(dir, /*read_only=*/true);
    if (!store.ok()) {
      *why = store.status().message();
      EXPECT_TRUE(store.status().code() == Status::Code::kCorruption ||
                  store.status().code() == Status::Code::kIOError) << *why;
      return 0;
    }
    CheckpointInfo info;
    auto vm = store.value()->Load("g", &info);
    if (!vm.ok()) {
      *why = vm.status().message();
      return vm.status().code() == Status::Code::kNotFound ? -1 : 0;
    }
    const uint64_t d = ComputeStateDigest(vm.value());
    for (int k = 0; k < kCheckpoints; ++k) {
      if (digests_[k] == d) {
        EXPECT_EQ(info.sequence, static_cast<uint64_t>(k + 1));
        return k + 1;
      }
    }
    ADD_FAILURE() << "a state that was never committed";
    return -2;
  }

  std::string dir_, log_, record_before_last_;
  uint64_t log_before_last_ = 0, log_after_last_ = 0;
  std::vector<uint64_t> digests_;
};

TEST_F(DurabilityTest, TornFinalWriteOpensThePreviousCheckpoint) {
  // Power fails while the last commit is being written: the log ends
  // anywhere inside its record, and the commit record was not yet updated
  // (it is written only after the log is synced).
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 12; ++trial) {
    const uint64_t cut = log_before_last_ + rng() % (log_after_last_ - log_before_last_);
    const std::string d = Copy();
    fs::resize_file(NewestLog(d), cut);
    WriteFile(d + "/" + kRecordFile, record_before_last_);
    std::string why;
    EXPECT_EQ(Recovered(d, &why), kCheckpoints - 1) << "cut at " << cut << ": " << why;
    // And it is writable again: a read-write open and a new commit work.
    auto store = CheckpointStore::Open(d);
    ASSERT_TRUE(store.ok()) << store.status().message();
    auto vm = store.value()->Load("g");
    ASSERT_TRUE(vm.ok()) << vm.status().message();
    ASSERT_TRUE(store.value()->CommitFull("g", vm.value(), kCheckpoints).ok());
  }
  // The whole write made it: the last checkpoint.
  std::string why;
  EXPECT_EQ(Recovered(Copy(), &why), kCheckpoints) << why;
}

TEST_F(DurabilityTest, LostAcknowledgedCommitIsRefused) {
  // The same torn log, but the commit record says the last commit was
  // acknowledged: the store lost it and must say so.
  const std::string d = Copy();
  fs::resize_file(NewestLog(d), log_before_last_ + (log_after_last_ - log_before_last_) / 2);
  std::string why;
  EXPECT_EQ(Recovered(d, &why), 0);
  EXPECT_NE(why.find("has lost committed checkpoints"), std::string::npos) << why;
  auto rw = CheckpointStore::Open(d);
  ASSERT_FALSE(rw.ok());  // read-write too: nothing builds on the older state
  EXPECT_EQ(rw.status().code(), Status::Code::kCorruption);
  // The CLI says it in one line and exits 1.
  testing::ProcessResult r = testing::RunCvmstate({"dump", "--db", d, "--vm", "g"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("has lost committed checkpoints"), std::string::npos) << r.err;
  // The operator may accept the older state by removing the record.
  fs::remove(d + "/" + kRecordFile);
  EXPECT_EQ(Recovered(d, &why), kCheckpoints - 1) << why;
}

TEST_F(DurabilityTest, BitRotInTheLogNeverRollsBackSilently) {
  std::mt19937_64 rng(3);
  int refused = 0, latest = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const std::string d = Copy();
    const std::string log = NewestLog(d);
    std::string bytes = ReadFile(log);
    const uint64_t bit = rng() % (bytes.size() * 8);
    bytes[bit / 8] ^= static_cast<char>(1 << (bit % 8));
    WriteFile(log, bytes);
    std::string why;
    const int k = Recovered(d, &why);
    EXPECT_TRUE(k == 0 || k == kCheckpoints) << "bit " << bit << " of " << bytes.size() * 8
                                             << " rolled the VM back to checkpoint " << k << " " << why;
    refused += k == 0;
    latest += k == kCheckpoints;
  }
  // Most flips land in a record: the log's checksums see them.
  EXPECT_GT(refused, 30);
  std::printf("bit rot: %d of 60 refused, %d harmless (the latest checkpoint)\n", refused, latest);
}

TEST_F(DurabilityTest, DamagedCommitRecordIsRefused) {
  const std::string d = Copy();
  std::string rec = ReadFile(d + "/" + kRecordFile);
  ASSERT_EQ(rec.size(), 64u);
  for (char& c : rec) c ^= 0x20;  // both slots
  WriteFile(d + "/" + kRecordFile, rec);
  std::string why;
  EXPECT_EQ(Recovered(d, &why), 0);
  EXPECT_NE(why.find("commit record"), std::string::npos) << why;
}

}  // namespace
}  // namespace cvmstate

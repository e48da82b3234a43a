// Disk faults under the store: a write that fails and a full disk make the
// checkpoint fail with a reason, and the previous checkpoint stays intact.
#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <atomic>
#include <random>

#include "cvmstate/checkpoint_store.h"
#include "cvmstate/listing.h"
#include "process.h"

namespace cvmstate {
namespace {

enum class Fault { kNone, kIOError, kNoSpace };

// A file system whose writable files fail on demand.
class FaultyFs : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultyFs(std::shared_ptr<rocksdb::FileSystem> base) : FileSystemWrapper(base) {}
  static const char* kClassName() { return "FaultyFs"; }
  const char* Name() const override { return kClassName(); }
  void Set(Fault f) { fault_ = f; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(f, o, r, dbg);
    if (s.ok()) *r = std::make_unique<File>(std::move(*r), &fault_);
    return s;
  }

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile>&& t, const std::atomic<Fault>* f)
        : FSWritableFileOwnerWrapper(std::move(t)), fault_(f) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& d, const rocksdb::IOOptions& o, rocksdb::IODebugContext* g) override {
      rocksdb::IOStatus s = Check();
      return s.ok() ? FSWritableFileOwnerWrapper::Append(d, o, g) : s;
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& d, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v, rocksdb::IODebugContext* g) override {
      rocksdb::IOStatus s = Check();
      return s.ok() ? FSWritableFileOwnerWrapper::Append(d, o, v, g) : s;
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* g) override {
      rocksdb::IOStatus s = Check();
      return s.ok() ? FSWritableFileOwnerWrapper::Sync(o, g) : s;
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* g) override {
      rocksdb::IOStatus s = Check();
      return s.ok() ? FSWritableFileOwnerWrapper::Fsync(o, g) : s;
    }

   private:
    rocksdb::IOStatus Check() const {
      switch (fault_->load()) {
        case Fault::kIOError:
          return rocksdb::IOStatus::IOError("injected write error");
        case Fault::kNoSpace:
          return rocksdb::IOStatus::NoSpace("injected: no space left on device");
        default:
          return rocksdb::IOStatus::OK();
      }
    }
    const std::atomic<Fault>* fault_;
  };
  std::atomic<Fault> fault_{Fault::kNone};
};

std::string Listing(const VmState& vm) {
  std::string s;
  AppendRunListing(vm, &s);
  return s;
}

TEST(FaultInjectionTest, FailedWritesKeepThePreviousCheckpoint) {
  for (Fault fault : {Fault::kIOError, Fault::kNoSpace}) {
    auto fs = std::make_shared<FaultyFs>(rocksdb::FileSystem::Default());
    std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
    const std::string dir = testing::MakeTempDir();
    auto store = CheckpointStore::Open(dir, false, env.get());
    ASSERT_TRUE(store.ok()) << store.status().message();
    VmState vm;
    ASSERT_TRUE(vm.AddBlock("ram", uint64_t{16} << 30, 4096, PageState::kPrivate).ok());
    std::mt19937_64 rng(1);
    auto churn = [&] {
      for (int i = 0; i < 500; ++i) {
        ASSERT_TRUE(vm.block(0).Convert((rng() % 4000000) * 4096, 4096 * (1 + rng() % 8), static_cast<PageState>(rng() % 3)).ok());
      }
    };
    VmCheckpointer cp(store.value().get(), "g");
    churn();
    ASSERT_TRUE(cp.CommitState(vm).ok());
    const std::string committed = Listing(vm);
    churn();
    fs->Set(fault);
    auto failed = cp.CommitState(vm);
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.status().code(), Status::Code::kIOError);
    EXPECT_NE(failed.status().message().find("cannot commit the checkpoint"), std::string::npos)
        << failed.status().message();
    fs->Set(Fault::kNone);
    // The previous checkpoint is intact, in this process and after a reopen.
    auto loaded = store.value()->Load("g");
    ASSERT_TRUE(loaded.ok()) << loaded.status().message();
    EXPECT_EQ(Listing(loaded.value()), committed);
    // With the fault gone, the next checkpoint writes everything since the
    // last one that succeeded.
    churn();
    auto again = cp.CommitState(vm);
    if (!again.ok()) {  // RocksDB may need a reopen after a hard WAL error
      store = Status::IOError("closed");
      store = CheckpointStore::Open(dir, false, env.get());
      ASSERT_TRUE(store.ok()) << store.status().message();
      VmCheckpointer fresh(store.value().get(), "g");
      again = fresh.CommitState(vm);
    }
    ASSERT_TRUE(again.ok()) << again.status().message();
    store = Status::IOError("closed");
    auto reopened = CheckpointStore::Open(dir);
    ASSERT_TRUE(reopened.ok());
    auto after = reopened.value()->Load("g");
    ASSERT_TRUE(after.ok()) << after.status().message();
    EXPECT_EQ(Listing(after.value()), Listing(vm));
  }
}

}  // namespace
}  // namespace cvmstate

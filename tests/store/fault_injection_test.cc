// Disk faults under the store: a write that fails and a full disk make the
// checkpoint fail with a reason, and the previous checkpoint stays intact.
#include <gtest/gtest.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <random>

#include "process.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "text/listing.h"

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

namespace cvmstate {
namespace {

// Models a host crash: remembers how much of every file written through it
// was synced, and can copy the database as the disk would hold it after a
// power cut — each file cut to its last synced size. It takes such images
// from inside WAL syncs too, i.e. while a checkpoint is being committed.
class CrashFs : public rocksdb::FileSystemWrapper {
 public:
  CrashFs(std::shared_ptr<rocksdb::FileSystem> base, std::string dir) : FileSystemWrapper(base), dir_(std::move(dir)) {}
  static const char* kClassName() { return "CrashFs"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(f, o, r, dbg);
    if (s.ok()) {
      std::lock_guard<std::mutex> l(mu_);
      synced_[f] = 0;
      *r = std::make_unique<File>(std::move(*r), this, f);
    }
    return s;
  }
  rocksdb::IOStatus RenameFile(const std::string& s, const std::string& t, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus st = target()->RenameFile(s, t, o, dbg);
    std::lock_guard<std::mutex> l(mu_);
    if (st.ok() && synced_.count(s)) {
      synced_[t] = synced_[s];
      synced_.erase(s);
    }
    return st;
  }
  // Copies the database to `to` as a power cut would leave it.
  void CrashImage(const std::string& to) {
    std::lock_guard<std::mutex> l(mu_);
    std::filesystem::create_directories(to);
    for (const auto& e : std::filesystem::directory_iterator(dir_)) {
      const std::string name = e.path().filename();
      if (name == "LOCK" || !e.is_regular_file()) continue;
      std::string data = testing::ReadFile(e.path());
      auto it = synced_.find(e.path().string());
      if (it != synced_.end()) data.resize(std::min<size_t>(data.size(), it->second));
      testing::WriteFile(to + "/" + name, data);
    }
  }
  std::function<void()> on_sync;  // called before every sync reaches the disk

 private:
  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile>&& t, CrashFs* fs, std::string name)
        : FSWritableFileOwnerWrapper(std::move(t)), fs_(fs), name_(std::move(name)) {}
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* g) override { return Synced(o, g, false); }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* g) override { return Synced(o, g, true); }

   private:
    rocksdb::IOStatus Synced(const rocksdb::IOOptions& o, rocksdb::IODebugContext* g, bool full) {
      if (fs_->on_sync) fs_->on_sync();
      rocksdb::IOStatus s = full ? FSWritableFileOwnerWrapper::Fsync(o, g) : FSWritableFileOwnerWrapper::Sync(o, g);
      if (s.ok()) {
        const uint64_t size = GetFileSize(o, g);
        std::lock_guard<std::mutex> l(fs_->mu_);
        fs_->synced_[name_] = size;
      }
      return s;
    }
    CrashFs* fs_;
    std::string name_;
  };
  std::string dir_;
  std::mutex mu_;
  std::map<std::string, uint64_t> synced_;
};

TEST(FaultInjectionTest, HostCrashDropsOnlyUnsyncedWrites) {
  const std::string root = testing::MakeTempDir(), dir = root + "/db";
  auto fs = std::make_shared<CrashFs>(rocksdb::FileSystem::Default(), dir);
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  auto store = CheckpointStore::Open(dir, false, env.get());
  ASSERT_TRUE(store.ok()) << store.status().message();
  VmState vm;
  ASSERT_TRUE(vm.AddBlock("ram", uint64_t{64} << 30, 4096, PageState::kPrivate).ok());
  VmCheckpointer cp(store.value().get(), "g");
  std::mt19937_64 rng(5);
  std::vector<std::string> committed{""};  // listing after each commit; "" = none yet
  int images = 0, during = 0;
  auto check_image = [&](const std::string& path, size_t last_committed) {
    auto crashed = CheckpointStore::Open(path);
    ASSERT_TRUE(crashed.ok()) << crashed.status().message();
    auto loaded = crashed.value()->Load("g");
    if (committed[last_committed].empty()) {
      ASSERT_EQ(loaded.status().code(), Status::Code::kNotFound) << loaded.status().message();
    } else {
      ASSERT_TRUE(loaded.ok()) << loaded.status().message();
      ASSERT_EQ(Listing(loaded.value()), committed[last_committed]) << "image " << path;
    }
    ++images;
  };
  // Images taken inside syncs show the last checkpoint committed before.
  fs->on_sync = [&] {
    if (rng() % 4 != 0) return;
    const std::string path = root + "/during" + std::to_string(during++);
    fs->CrashImage(path);
  };
  std::vector<std::pair<std::string, size_t>> during_images;
  for (int round = 0; round < 12; ++round) {
    for (int i = 0; i < 400; ++i) {
      ASSERT_TRUE(vm.block(0).Convert((rng() % 16000000) * 4096, 4096 * (1 + rng() % 8), static_cast<PageState>(rng() % 3)).ok());
    }
    const int before = during;
    ASSERT_TRUE(cp.CommitState(vm).ok());
    for (int k = before; k < during; ++k) during_images.push_back({root + "/during" + std::to_string(k), committed.size() - 1});
    committed.push_back(Listing(vm));
    fs->CrashImage(root + "/after" + std::to_string(round));
  }
  fs->on_sync = nullptr;
  for (int round = 0; round < 12; ++round) check_image(root + "/after" + std::to_string(round), round + 1);
  // A sync image taken during commit k may or may not include commit k
  // (the WAL sync under way may be the commit's own): it must show commit
  // k-1 or k, never anything else, never an error.
  for (const auto& [path, prev] : during_images) {
    auto crashed = CheckpointStore::Open(path);
    ASSERT_TRUE(crashed.ok()) << crashed.status().message();
    auto loaded = crashed.value()->Load("g");
    const std::string got = loaded.ok() ? Listing(loaded.value()) : "";
    if (!loaded.ok()) {
      ASSERT_EQ(loaded.status().code(), Status::Code::kNotFound) << loaded.status().message();
    }
    ASSERT_TRUE(got == committed[prev] || got == committed[prev + 1]) << "crash image " << path;
  }
  EXPECT_GE(images, 12);
  EXPECT_GT(during_images.size(), 2u);
}

}  // namespace
}  // namespace cvmstate

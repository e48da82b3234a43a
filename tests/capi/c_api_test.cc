// The C API through the shared library, as a VMM links it: errno values by
// status code, and checkpointers that never outlive their store.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "c_api_test_helpers.h"
#include "cvmstate/cvmstate.h"
#include "process.h"

namespace {

using cvmstate::testing::Digest;
using cvmstate::testing::ExpectNull;
using cvmstate::testing::Vm;

TEST(CApiTest, ErrnoComesFromTheStatusCodeNotItsMessage) {
  Vm v;
  // A block called "already": an unaligned conversion is -EINVAL, whatever
  // the message says about the block's name.
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "already", 1 << 20, 4096, CVMSTATE_PRIVATE), 0);
  EXPECT_EQ(cvmstate_convert(v.vm, "already", 1, 4096, CVMSTATE_SHARED), -EINVAL) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_vm_add_block(v.vm, "already", 1 << 20, 4096, CVMSTATE_PRIVATE), -EEXIST);
  EXPECT_EQ(cvmstate_convert(v.vm, "nope", 0, 4096, CVMSTATE_SHARED), -ENOENT);
  // Committing a VM id that exists is -EEXIST, by code.
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_store_commit(store, "g", v.vm), 0) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_store_commit(store, "g", v.vm), -EEXIST) << cvmstate_last_error();
  cvmstate_store_close(store);
}

// The newest non-empty write-ahead log of a store directory, and its size.
std::pair<std::string, uint64_t> NewestWal(const std::string& dir) {
  std::pair<std::string, uint64_t> best;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string p = e.path().string();
    if (p.size() > 4 && p.compare(p.size() - 4, 4, ".log") == 0 && e.file_size() > 0 && p > best.first) {
      best = {p, e.file_size()};
    }
  }
  return best;
}

TEST(CApiTest, AStoreThatLostAnAcknowledgedCheckpointIsRefused) {
  // Before, a damaged last WAL record made cvmstate_store_load return the
  // older checkpoint with rc 0.
  const std::string db = cvmstate::testing::MakeTempDir() + "/db";
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", uint64_t{1} << 34, 4096, CVMSTATE_PRIVATE), 0);
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open(db.c_str(), &store), 0) << cvmstate_last_error();
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
  const uint64_t before = NewestWal(db).second;
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 1 << 30, 1 << 20, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
  cvmstate_store_close(store);
  const auto [wal, after] = NewestWal(db);
  ASSERT_GT(after, before);
  std::filesystem::resize_file(wal, before + (after - before) / 2);  // the acknowledged commit's record, cut
  store = nullptr;
  EXPECT_EQ(cvmstate_store_open(db.c_str(), &store), -EBADMSG);
  EXPECT_EQ(store, nullptr);
  EXPECT_NE(std::string(cvmstate_last_error()).find("has lost committed checkpoints"), std::string::npos)
      << cvmstate_last_error();
}

TEST(CApiTest, AClosedStoresCheckpointerIsNeverReused) {
  const std::string dir = cvmstate::testing::MakeTempDir();
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", uint64_t{1} << 34, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 1 << 20, CVMSTATE_SHARED), 0);
  for (int round = 0; round < 4; ++round) {
    // Each store lives in its own directory; the allocator may well hand
    // out the same address for the next one.
    const std::string db = dir + "/db" + std::to_string(round);
    cvmstate_store* store = nullptr;
    ASSERT_EQ(cvmstate_store_open(db.c_str(), &store), 0) << cvmstate_last_error();
    ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
    ASSERT_EQ(cvmstate_convert(v.vm, "ram", (uint64_t{1} << 30) * (round + 1), 4096, CVMSTATE_SHARED), 0);
    ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
    cvmstate_vm* loaded = nullptr;
    // The first checkpoint into a new store is a whole one: what it loads
    // is exactly the VM.
    ASSERT_EQ(cvmstate_store_load(store, "g", &loaded), 0) << cvmstate_last_error();
    EXPECT_EQ(Digest(loaded), Digest(v.vm)) << "round " << round;
    cvmstate_vm_free(loaded);
    cvmstate_store_close(store);
  }
}

TEST(CApiTest, AVmFreedBeforeItsStoreLeavesTheStoreUsable) {
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0);
  {
    Vm v;
    ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 30, 4096, CVMSTATE_SHARED), 0);
    ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "a", nullptr), 0);
  }
  Vm w;
  ASSERT_EQ(cvmstate_vm_add_block(w.vm, "ram", 1 << 30, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, w.vm, "b", nullptr), 0) << cvmstate_last_error();
  cvmstate_store_close(store);  // must not touch the freed vm
}

// A DMA listener that records its calls.
struct DmaCalls {
  struct Call {
    bool populate;
    uint64_t offset, size;
  };
  std::vector<Call> calls;
  static int Populate(void* o, uint64_t off, uint64_t size) {
    static_cast<DmaCalls*>(o)->calls.push_back({true, off, size});
    return 0;
  }
  static void Discard(void* o, uint64_t off, uint64_t size) {
    static_cast<DmaCalls*>(o)->calls.push_back({false, off, size});
  }
};

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(CApiTest, ADmaListenerCoarserThanTheStateIsRefused) {
  constexpr uint64_t kMiB = 1 << 20;
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 16 * kMiB, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 2 * kMiB + 0x5000, 4096, CVMSTATE_SHARED), 0);
  DmaCalls d;
  const cvmstate_dma_ops ops = {DmaCalls::Populate, DmaCalls::Discard, 2 * kMiB, 0};
  cvmstate_listener* l = nullptr;
  EXPECT_EQ(cvmstate_register_dma_listener(v.vm, "ram", 0, 4 * kMiB, &ops, &d, &l), -EINVAL);
  const std::string err = cvmstate_last_error();
  EXPECT_TRUE(Has(err, "'ram'")) << err;
  EXPECT_TRUE(Has(err, "[0x205000, 0x206000)")) << err;
  EXPECT_TRUE(d.calls.empty()) << "a 4 KiB populate was replayed to a 2 MiB listener";
  EXPECT_EQ(l, nullptr);
  // Over [4 MiB, 8 MiB), without the odd page, it registers; a conversion
  // whose part inside the section is aligned is then accepted.
  ASSERT_EQ(cvmstate_register_dma_listener(v.vm, "ram", 4 * kMiB, 4 * kMiB, &ops, &d, &l), 0)
      << cvmstate_last_error();
  EXPECT_EQ(cvmstate_convert(v.vm, "ram", 2 * kMiB + 0x6000, 4 * kMiB - 0x6000, CVMSTATE_SHARED), 0)
      << cvmstate_last_error();
  ASSERT_EQ(d.calls.size(), 1u);
  EXPECT_TRUE(d.calls[0].populate);
  EXPECT_EQ(d.calls[0].offset, 4 * kMiB);
  EXPECT_EQ(d.calls[0].size, 2 * kMiB);
  EXPECT_EQ(cvmstate_unregister_listener(v.vm, l), 0);
}

struct Runs {
  std::vector<std::vector<uint64_t>> got;
  static int Add(void* o, uint64_t off, uint64_t size, int state) {
    static_cast<Runs*>(o)->got.push_back({off, size, static_cast<uint64_t>(state)});
    return 0;
  }
};

TEST(CApiTest, ForEachRunClipsExactlyToUnalignedBounds) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0x10000, 0x1000, CVMSTATE_SHARED), 0);
  Runs r;
  ASSERT_EQ(cvmstate_for_each_run(v.vm, "ram", 0xf064, 0x2000, -1, Runs::Add, &r), 0)
      << cvmstate_last_error();
  const std::vector<std::vector<uint64_t>> want = {{0xf064, 0x10000 - 0xf064, CVMSTATE_PRIVATE},
                                                   {0x10000, 0x1000, CVMSTATE_SHARED},
                                                   {0x11000, 0x64, CVMSTATE_PRIVATE}};
  EXPECT_EQ(r.got, want);
  // Inside one page, and with a state filter.
  r.got.clear();
  ASSERT_EQ(cvmstate_for_each_run(v.vm, "ram", 0x10010, 0x20, CVMSTATE_SHARED, Runs::Add, &r), 0);
  EXPECT_EQ(r.got, (std::vector<std::vector<uint64_t>>{{0x10010, 0x20, CVMSTATE_SHARED}}));
  r.got.clear();
  ASSERT_EQ(cvmstate_for_each_run(v.vm, "ram", 0xfffff, 1, -1, Runs::Add, &r), 0);
  EXPECT_EQ(r.got, (std::vector<std::vector<uint64_t>>{{0xfffff, 1, CVMSTATE_PRIVATE}}));
  r.got.clear();
  EXPECT_EQ(cvmstate_for_each_run(v.vm, "ram", 0x100, 0, -1, Runs::Add, &r), 0);
  EXPECT_TRUE(r.got.empty());
  EXPECT_EQ(cvmstate_for_each_run(v.vm, "ram", 0xfffff, 2, -1, Runs::Add, &r), -EINVAL);
}

TEST(CApiTest, AListenerHandleIsCheckedAgainstItsVm) {
  Vm a, b;
  ASSERT_EQ(cvmstate_vm_add_block(a.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_vm_add_block(b.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  DmaCalls d;
  const cvmstate_dma_ops ops = {DmaCalls::Populate, DmaCalls::Discard, 0, 0};
  cvmstate_listener* l = nullptr;
  ASSERT_EQ(cvmstate_register_dma_listener(a.vm, "ram", 0, 1 << 20, &ops, &d, &l), 0);
  ASSERT_EQ(d.calls.size(), 1u);
  // Through another vm: refused, and the listener told nothing.
  EXPECT_EQ(cvmstate_unregister_listener(b.vm, l), -ENOENT);
  EXPECT_TRUE(Has(cvmstate_last_error(), "not registered with this vm")) << cvmstate_last_error();
  EXPECT_EQ(d.calls.size(), 1u);
  EXPECT_EQ(cvmstate_unregister_listener(a.vm, l), 0);
  EXPECT_EQ(d.calls.size(), 2u);
  // The handle is freed: a second call is refused without touching it.
  EXPECT_EQ(cvmstate_unregister_listener(a.vm, l), -ENOENT);
  EXPECT_EQ(cvmstate_unregister_listener(b.vm, l), -ENOENT);
  EXPECT_EQ(d.calls.size(), 2u);
  // A listener left registered is freed with its vm.
  ASSERT_EQ(cvmstate_register_dma_listener(b.vm, "ram", 0, 1 << 20, &ops, &d, &l), 0);
}

TEST(CApiTest, FileDescriptorsAndTimeoutsAreChecked) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  cvmstate_source* src = nullptr;
  cvmstate_destination* dst = nullptr;
  EXPECT_EQ(cvmstate_source_new_fd(v.vm, "g", -1, nullptr, &src), -EINVAL);
  EXPECT_TRUE(Has(cvmstate_last_error(), "-1")) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_destination_new_fd(-1, nullptr, 30, &dst), -EINVAL);
  int closed = dup(0);
  ASSERT_GE(closed, 0);
  close(closed);
  EXPECT_EQ(cvmstate_source_new_fd(v.vm, "g", closed, nullptr, &src), -EBADF);
  EXPECT_EQ(cvmstate_destination_new_fd(closed, nullptr, 30, &dst), -EBADF);
  EXPECT_EQ(src, nullptr);
  EXPECT_EQ(dst, nullptr);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  for (double t : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e300, 1e6 + 1,
                   -std::numeric_limits<double>::infinity()}) {
    EXPECT_EQ(cvmstate_destination_new_fd(sv[1], nullptr, t, &dst), -EINVAL) << t;
    EXPECT_TRUE(Has(cvmstate_last_error(), "timeout_seconds")) << cvmstate_last_error();
    EXPECT_EQ(dst, nullptr);
  }
  for (double t : {0.001, 30.0, 1e6}) {
    ASSERT_EQ(cvmstate_destination_new_fd(sv[1], nullptr, t, &dst), 0)
        << t << ": " << cvmstate_last_error();
    cvmstate_destination_free(dst);
    dst = nullptr;
  }
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sv[0], nullptr, &src), 0);
  cvmstate_source_free(src);
  close(sv[0]);
  close(sv[1]);
}

// A source's deadline is the caller's: a destination that never sends its
// challenge (or never reads) ends begin with -ETIMEDOUT after it.
TEST(CApiTest, ASourcesTimeoutIsTheCallers) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  cvmstate_source* src = nullptr;
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sv[0], nullptr, &src), 0);
  for (double t : {0.0, -1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e6 + 1}) {
    EXPECT_EQ(cvmstate_source_set_timeout(src, t), -EINVAL) << t;
    EXPECT_TRUE(Has(cvmstate_last_error(), "timeout_seconds")) << cvmstate_last_error();
  }
  ASSERT_EQ(cvmstate_source_set_timeout(src, 0.3), 0) << cvmstate_last_error();
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(cvmstate_source_begin(src, nullptr), -ETIMEDOUT) << cvmstate_last_error();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5);
  cvmstate_source_free(src);
  EXPECT_EQ(cvmstate_source_set_timeout(nullptr, 1), -EINVAL);
  // Over callbacks the VMM bounds its own waits.
  cvmstate_io io = {[](void*, void*, size_t) -> long { return -EIO; },
                    [](void*, const void*, size_t size) -> long { return static_cast<long>(size); }};
  ASSERT_EQ(cvmstate_source_new_io(v.vm, "g", &io, nullptr, nullptr, &src), 0);
  EXPECT_EQ(cvmstate_source_set_timeout(src, 1), -EINVAL);
  EXPECT_TRUE(Has(cvmstate_last_error(), "callbacks")) << cvmstate_last_error();
  cvmstate_source_free(src);
  close(sv[0]);
  close(sv[1]);
}

TEST(CApiTest, ADestinationsMaxRunsBoundsWhatItAccepts) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 64 << 20, 4096, CVMSTATE_PRIVATE), 0);
  for (uint64_t page = 0; page < 1000; page += 2) {
    ASSERT_EQ(cvmstate_convert(v.vm, "ram", page * 4096, 4096, CVMSTATE_SHARED), 0);
  }
  for (uint64_t max_runs : {uint64_t{999}, uint64_t{1000}}) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    cvmstate_destination* dst = nullptr;
    ASSERT_EQ(cvmstate_destination_new_fd(sv[1], nullptr, 30, &dst), 0);
    EXPECT_EQ(cvmstate_destination_set_max_runs(dst, 0), -EINVAL);
    EXPECT_EQ(cvmstate_destination_set_max_runs(dst, (uint64_t{1} << 32) + 1), -EINVAL);
    ASSERT_EQ(cvmstate_destination_set_max_runs(dst, max_runs), 0);
    int src_rc = 0;
    std::thread source([&] {
      cvmstate_source* src = nullptr;
      src_rc = cvmstate_source_new_fd(v.vm, "g", sv[0], nullptr, &src);
      if (src_rc == 0) src_rc = cvmstate_source_begin(src, nullptr);
      if (src_rc == 0) src_rc = cvmstate_source_finish(src, nullptr);
      cvmstate_source_free(src);
      shutdown(sv[0], SHUT_WR);
    });
    cvmstate_vm* got = nullptr;
    const int rc = cvmstate_destination_receive(dst, &got);
    if (rc == 0) {
      EXPECT_EQ(cvmstate_destination_ack(dst, 1, nullptr), 0);
      EXPECT_EQ(cvmstate_destination_set_max_runs(dst, 5), -EINVAL) << "after receive";
      cvmstate_vm_free(got);
    } else {
      EXPECT_EQ(cvmstate_destination_ack(dst, 0, cvmstate_last_error()), 0);
    }
    source.join();
    // 1,000 runs: 500 shared pages, the 499 private pages between them and the private rest.
    if (max_runs == 999) {
      EXPECT_EQ(rc, -EACCES);
      EXPECT_NE(src_rc, 0);
    } else {
      EXPECT_EQ(rc, 0);
      EXPECT_EQ(src_rc, 0);
    }
    cvmstate_destination_free(dst);
    close(sv[0]);
    close(sv[1]);
  }
}

// Nothing is waiting to be read on fd.
bool Quiet(int fd) {
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

TEST(CApiTest, AFinishedMigrationSendsNothingMore) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 24, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 1 << 20, CVMSTATE_SHARED), 0);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  int dst_rc[4] = {1, 1, 1, 1};
  uint64_t dst_digest = 0;
  std::thread dest([&] {
    cvmstate_destination* dst = nullptr;
    dst_rc[0] = cvmstate_destination_new_fd(sv[1], nullptr, 60, &dst);
    if (dst_rc[0] != 0) return;
    cvmstate_vm* got = nullptr;
    dst_rc[1] = cvmstate_destination_receive(dst, &got);
    if (dst_rc[1] == 0) {
      cvmstate_vm_digest(got, &dst_digest);
      dst_rc[2] = cvmstate_destination_ack(dst, 1, nullptr);
      dst_rc[3] = cvmstate_destination_ack(dst, 1, nullptr);  // once only
      cvmstate_vm_free(got);
    }
    cvmstate_destination_free(dst);
  });
  cvmstate_source* src = nullptr;
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sv[0], nullptr, &src), 0);
  EXPECT_EQ(cvmstate_source_begin(src, nullptr), 0) << cvmstate_last_error();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 1 << 20, 1 << 20, CVMSTATE_SHARED), 0);
  EXPECT_EQ(cvmstate_source_round(src, nullptr), 0) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_source_finish(src, nullptr), 0) << cvmstate_last_error();
  dest.join();
  EXPECT_EQ(dst_rc[0], 0);
  EXPECT_EQ(dst_rc[1], 0);
  EXPECT_EQ(dst_rc[2], 0);
  EXPECT_EQ(dst_rc[3], -EINVAL);
  EXPECT_EQ(dst_digest, Digest(v.vm));
  const uint32_t rounds = cvmstate_source_rounds(src);
  EXPECT_EQ(cvmstate_source_round(src, nullptr), -EINVAL);
  EXPECT_TRUE(Has(cvmstate_last_error(), "the migration has finished")) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_source_finish(src, nullptr), -EINVAL);
  EXPECT_TRUE(Has(cvmstate_last_error(), "the migration has finished")) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_source_begin(src, nullptr), -EINVAL);
  EXPECT_EQ(cvmstate_source_rounds(src), rounds);
  // Neither side sent anything after the end: the source got only the one
  // acknowledgement, the destination nothing past the end frame.
  EXPECT_TRUE(Quiet(sv[0]));
  EXPECT_TRUE(Quiet(sv[1]));
  cvmstate_source_free(src);
  close(sv[0]);
  close(sv[1]);
}

TEST(CApiTest, EveryNullArgumentIsInvalid) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0);
  const cvmstate_dma_ops dma = {DmaCalls::Populate, DmaCalls::Discard, 0, 0};
  const cvmstate_attr_ops attr = {nullptr, nullptr, 0};
  const cvmstate_io io = {nullptr, nullptr};
  cvmstate_listener* l = nullptr;
  cvmstate_vm* out_vm = nullptr;
  cvmstate_source* src = nullptr;
  cvmstate_destination* dst = nullptr;
  uint64_t u = 0;
  ExpectNull(cvmstate_vm_add_block(nullptr, "x", 1 << 20, 4096, 0), "vm");
  ExpectNull(cvmstate_vm_add_block(v.vm, nullptr, 1 << 20, 4096, 0), "name");
  ExpectNull(cvmstate_convert(nullptr, "ram", 0, 4096, 0), "vm");
  ExpectNull(cvmstate_convert(v.vm, nullptr, 0, 4096, 0), "block");
  ExpectNull(cvmstate_state_at(nullptr, "ram", 0), "vm");
  ExpectNull(cvmstate_state_at(v.vm, nullptr, 0), "block");
  ExpectNull(cvmstate_for_each_run(nullptr, "ram", 0, 4096, -1, Runs::Add, nullptr), "vm");
  ExpectNull(cvmstate_for_each_run(v.vm, nullptr, 0, 4096, -1, Runs::Add, nullptr), "block");
  ExpectNull(cvmstate_for_each_run(v.vm, "ram", 0, 4096, -1, nullptr, nullptr), "fn");
  ExpectNull(cvmstate_vm_digest(nullptr, &u), "vm");
  ExpectNull(cvmstate_vm_digest(v.vm, nullptr), "digest");
  ExpectNull(cvmstate_register_dma_listener(nullptr, "ram", 0, 4096, &dma, nullptr, &l), "vm");
  ExpectNull(cvmstate_register_dma_listener(v.vm, nullptr, 0, 4096, &dma, nullptr, &l), "block");
  ExpectNull(cvmstate_register_dma_listener(v.vm, "ram", 0, 4096, nullptr, nullptr, &l), "ops");
  ExpectNull(cvmstate_register_dma_listener(v.vm, "ram", 0, 4096, &dma, nullptr, nullptr), "out");
  ExpectNull(cvmstate_register_attr_listener(nullptr, "ram", 0, 4096, &attr, nullptr, &l), "vm");
  ExpectNull(cvmstate_register_attr_listener(v.vm, nullptr, 0, 4096, &attr, nullptr, &l), "block");
  ExpectNull(cvmstate_register_attr_listener(v.vm, "ram", 0, 4096, nullptr, nullptr, &l), "ops");
  ExpectNull(cvmstate_register_attr_listener(v.vm, "ram", 0, 4096, &attr, nullptr, nullptr), "out");
  ASSERT_EQ(cvmstate_register_attr_listener(v.vm, "ram", 0, 4096, &attr, nullptr, &l), 0);
  ExpectNull(cvmstate_unregister_listener(nullptr, l), "vm");
  ExpectNull(cvmstate_unregister_listener(v.vm, nullptr), "listener");
  ASSERT_EQ(cvmstate_unregister_listener(v.vm, l), 0);
  ExpectNull(cvmstate_store_open(nullptr, &store), "dir");
  ExpectNull(cvmstate_store_open((dir + "/db2").c_str(), nullptr), "out");
  ExpectNull(cvmstate_checkpoint(nullptr, v.vm, "g", nullptr), "store");
  ExpectNull(cvmstate_checkpoint(store, nullptr, "g", nullptr), "vm");
  ExpectNull(cvmstate_checkpoint(store, v.vm, nullptr, nullptr), "vm_id");
  ExpectNull(cvmstate_store_load(nullptr, "g", &out_vm), "store");
  ExpectNull(cvmstate_store_load(store, nullptr, &out_vm), "vm_id");
  ExpectNull(cvmstate_store_load(store, "g", nullptr), "out");
  ExpectNull(cvmstate_store_delete(nullptr, "g"), "store");
  ExpectNull(cvmstate_store_delete(store, nullptr), "vm_id");
  ExpectNull(cvmstate_store_commit(nullptr, "h", v.vm), "store");
  ExpectNull(cvmstate_store_commit(store, nullptr, v.vm), "vm_id");
  ExpectNull(cvmstate_store_commit(store, "h", nullptr), "vm");
  ExpectNull(cvmstate_source_new_fd(nullptr, "g", 0, nullptr, &src), "vm");
  ExpectNull(cvmstate_source_new_fd(v.vm, nullptr, 0, nullptr, &src), "vm_id");
  ExpectNull(cvmstate_source_new_fd(v.vm, "g", 0, nullptr, nullptr), "out");
  ExpectNull(cvmstate_source_new_io(v.vm, "g", nullptr, nullptr, nullptr, &src), "io");
  ExpectNull(cvmstate_source_new_io(v.vm, "g", &io, nullptr, nullptr, &src), "io->read");
  ExpectNull(cvmstate_source_begin(nullptr, &u), "src");
  ExpectNull(cvmstate_source_round(nullptr, &u), "src");
  ExpectNull(cvmstate_source_finish(nullptr, &u), "src");
  ExpectNull(cvmstate_destination_new_fd(0, nullptr, 30, nullptr), "out");
  ExpectNull(cvmstate_destination_new_io(nullptr, nullptr, nullptr, &dst), "io");
  ExpectNull(cvmstate_destination_new_io(&io, nullptr, nullptr, &dst), "io->read");
  ExpectNull(cvmstate_destination_receive(nullptr, &out_vm), "dst");
  ExpectNull(cvmstate_destination_ack(nullptr, 1, nullptr), "dst");
  EXPECT_EQ(src, nullptr);
  EXPECT_EQ(dst, nullptr);
  EXPECT_EQ(out_vm, nullptr);
  // Without side effects: the store still holds "g" only, and "h" is free.
  EXPECT_EQ(cvmstate_store_load(store, "h", &out_vm), -ENOENT);
  cvmstate_store_close(store);
}

bool OneLine(const char* s) { return std::string(s).find_first_of("\n\r") == std::string::npos; }

TEST(CApiTest, NamesInMessagesAreQuoted) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  const char* bad = "ram\nFAKE: second line";
  const cvmstate_dma_ops dma = {DmaCalls::Populate, DmaCalls::Discard, 0, 0};
  cvmstate_listener* l = nullptr;
  EXPECT_EQ(cvmstate_vm_add_block(v.vm, bad, 1 << 20, 4096, 0), -EINVAL);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_convert(v.vm, bad, 0, 4096, 0), -ENOENT);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  EXPECT_TRUE(Has(cvmstate_last_error(), "'ram\\x0aFAKE")) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_state_at(v.vm, bad, 0), -ENOENT);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_for_each_run(v.vm, bad, 0, 4096, -1, Runs::Add, nullptr), -ENOENT);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  EXPECT_EQ(cvmstate_register_dma_listener(v.vm, bad, 0, 4096, &dma, nullptr, &l), -ENOENT);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0);
  cvmstate_vm* out = nullptr;
  for (int rc :
       {cvmstate_checkpoint(store, v.vm, bad, nullptr), cvmstate_store_load(store, bad, &out),
        cvmstate_store_commit(store, bad, v.vm), cvmstate_store_delete(store, bad)}) {
    EXPECT_EQ(rc, -EINVAL);
    EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  }
  cvmstate_store_close(store);
  // Paths reach the message through the layers below: still one line.
  const std::string bad_dir = dir + "/no\nsuch/dir/db";
  EXPECT_NE(cvmstate_store_open(bad_dir.c_str(), &store), 0);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  cvmstate_source* src = nullptr;
  const std::string bad_key = dir + "/no\nkey";
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  EXPECT_NE(cvmstate_source_new_fd(v.vm, "g", sv[0], bad_key.c_str(), &src), 0);
  EXPECT_TRUE(OneLine(cvmstate_last_error())) << cvmstate_last_error();
  EXPECT_EQ(src, nullptr);
  close(sv[0]);
  close(sv[1]);
}

TEST(CApiTest, DeletingAVmMakesTheNextCheckpointWhole) {
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0);
  Vm v, w;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", uint64_t{1} << 32, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_vm_add_block(w.vm, "ram", uint64_t{1} << 32, 4096, CVMSTATE_DISCARDED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 1 << 20, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
  ASSERT_EQ(cvmstate_checkpoint(store, w.vm, "other", nullptr), 0) << cvmstate_last_error();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", uint64_t{1} << 31, 1 << 20, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0)
      << cvmstate_last_error();  // incremental
  EXPECT_EQ(cvmstate_store_delete(store, "g"), 0) << cvmstate_last_error();
  cvmstate_vm* loaded = nullptr;
  EXPECT_EQ(cvmstate_store_load(store, "g", &loaded), -ENOENT);
  EXPECT_EQ(cvmstate_store_delete(store, "g"), -ENOENT);
  EXPECT_EQ(cvmstate_store_delete(store, "never"), -ENOENT);
  EXPECT_EQ(cvmstate_store_delete(store, "bad/id"), -EINVAL);
  // Changes after the delete: the next checkpoint must hold the whole VM,
  // not only what changed since a base that is gone.
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", uint64_t{3} << 30, 1 << 20, CVMSTATE_DISCARDED), 0);
  uint64_t bytes = 0;
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", &bytes), 0) << cvmstate_last_error();
  ASSERT_EQ(cvmstate_store_load(store, "g", &loaded), 0) << cvmstate_last_error();
  EXPECT_EQ(Digest(loaded), Digest(v.vm));
  cvmstate_vm_free(loaded);
  // And incremental ones go on from there; the other VM is untouched.
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", uint64_t{1} << 30, 4096, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "g", nullptr), 0) << cvmstate_last_error();
  ASSERT_EQ(cvmstate_store_load(store, "g", &loaded), 0) << cvmstate_last_error();
  EXPECT_EQ(Digest(loaded), Digest(v.vm));
  cvmstate_vm_free(loaded);
  ASSERT_EQ(cvmstate_store_load(store, "other", &loaded), 0) << cvmstate_last_error();
  EXPECT_EQ(Digest(loaded), Digest(w.vm));
  cvmstate_vm_free(loaded);
  cvmstate_store_close(store);
}

TEST(CApiTest, DeletesRacingCheckpointsLeaveLoadableState) {
  const std::string dir = cvmstate::testing::MakeTempDir();
  cvmstate_store* store = nullptr;
  ASSERT_EQ(cvmstate_store_open((dir + "/db").c_str(), &store), 0);
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", uint64_t{1} << 32, 4096, CVMSTATE_PRIVATE), 0);
  int bad_checkpoints = 0, bad_deletes = 0;
  std::thread deleter([&] {
    for (int i = 0; i < 40; ++i) {
      const int rc = cvmstate_store_delete(store, "a");
      if (rc != 0 && rc != -ENOENT) ++bad_deletes;
    }
  });
  for (int i = 0; i < 40; ++i) {
    if (cvmstate_convert(v.vm, "ram", uint64_t(i) << 26, 4096 * (1 + i), CVMSTATE_SHARED) != 0)
      ++bad_checkpoints;
    if (cvmstate_checkpoint(store, v.vm, "a", nullptr) != 0) ++bad_checkpoints;
  }
  deleter.join();
  EXPECT_EQ(bad_checkpoints, 0);
  EXPECT_EQ(bad_deletes, 0);
  // Whatever the interleaving, the next checkpoint leaves exactly the vm.
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", uint64_t{3} << 30, 4096, CVMSTATE_DISCARDED), 0);
  ASSERT_EQ(cvmstate_checkpoint(store, v.vm, "a", nullptr), 0) << cvmstate_last_error();
  cvmstate_vm* loaded = nullptr;
  ASSERT_EQ(cvmstate_store_load(store, "a", &loaded), 0) << cvmstate_last_error();
  EXPECT_EQ(Digest(loaded), Digest(v.vm));
  cvmstate_vm_free(loaded);
  cvmstate_store_close(store);
}

}  // namespace

// Load: 16 VMs checkpointing into one store at once, and 16 migrations of
// different VMs into one destination store at once. Also run under
// ThreadSanitizer in CI.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <thread>

#include "codec/state_digest.h"
#include "migration/byte_stream.h"
#include "migration/crc32c.h"
#include "migration/destination.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "migration/tcp.h"
#include "process.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"

namespace cvmstate {
namespace {

constexpr int kVms = 16;

void Churn(std::mt19937_64& rng, VmState* vm, int n) {
  for (int i = 0; i < n; ++i) {
    BlockTracker& b = vm->block(rng() % vm->num_blocks());
    const uint64_t pages = b.size() / b.page_size();
    const uint64_t p = rng() % pages, len = 1 + rng() % std::min<uint64_t>(pages - p, 64);
    (void)b.Convert(p * b.page_size(), len * b.page_size(), static_cast<PageState>(rng() % 3));
  }
}

VmState MakeVm(int i) {
  VmState vm;
  (void)vm.AddBlock("ram", (uint64_t{4} + i) << 30, 4096, PageState::kPrivate);
  (void)vm.AddBlock("bios", 4 << 20, 4096, PageState::kShared);
  return vm;
}

TEST(ConcurrencyTest, SixteenVmsCheckpointIntoOneStore) {
  auto store = CheckpointStore::Open(testing::MakeTempDir());
  ASSERT_TRUE(store.ok());
  std::vector<VmState> vms;
  for (int i = 0; i < kVms; ++i) vms.push_back(MakeVm(i));
  std::vector<Status> results(kVms);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kVms; ++i) {
    threads.emplace_back([&, i] {
      std::mt19937_64 rng(i);
      VmCheckpointer cp(store.value().get(), "vm" + std::to_string(i));
      for (int round = 0; round < 10 && results[i].ok(); ++round) {
        Churn(rng, &vms[i], 300);
        auto c = cp.CommitState(vms[i]);
        if (!c.ok()) results[i] = c.status();
      }
    });
  }
  for (auto& t : threads) t.join();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "16 VMs x 10 synced checkpoints into one store: %.0f ms\n", ms);
  for (int i = 0; i < kVms; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].message();
    auto loaded = store.value()->Load("vm" + std::to_string(i));
    ASSERT_TRUE(loaded.ok()) << loaded.status().message();
    EXPECT_EQ(ComputeStateDigest(loaded.value()), ComputeStateDigest(vms[i]));
  }
}

TEST(ConcurrencyTest, SixteenMigrationsIntoOneStore) {
  auto store = CheckpointStore::Open(testing::MakeTempDir());
  ASSERT_TRUE(store.ok());
  std::vector<VmState> vms;
  for (int i = 0; i < kVms; ++i) vms.push_back(MakeVm(i));
  std::vector<Status> sent(kVms), received(kVms);
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kVms; ++i) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    threads.emplace_back([&, i, fd = sv[0]] {  // the source host of VM i
      std::mt19937_64 rng(100 + i);
      Churn(rng, &vms[i], 500);
      FdSink sink(fd, 30);
      FdSource from(fd, 30);
      auto nonce = MigrationSource::ReadChallenge(&from);
      MigrationSource src(&vms[i], "vm" + std::to_string(i), &sink);
      Status s = nonce.ok() ? src.Begin(nonce.value()) : nonce.status();
      for (int r = 0; r < 3 && s.ok(); ++r) {
        Churn(rng, &vms[i], 100);
        auto st = r == 2 ? src.Finish() : src.SendRound();
        if (!st.ok()) s = st.status();
      }
      if (s.ok()) s = src.AwaitAck(&from);
      sent[i] = s;
      close(fd);
    });
    threads.emplace_back([&, i, fd = sv[1]] {  // its receiver on the shared destination
      FdSink back(fd, 30);
      FdSource in(fd, 30);
      MigrationDestination::Options opt;
      opt.expected_nonce = MigrationSource::NewNonce().value();
      opt.accept_vm = [&](const std::string& id) -> Status {
        auto has = store.value()->HasVm(id);
        return has.ok() && !has.value() ? Status::OK() : Status::Refused("exists");
      };
      Status s = MigrationDestination::SendChallenge(&back, opt.expected_nonce);
      MigrationDestination dest(opt);
      std::string id;
      Result<VmState> vm = Status::IOError("not received");
      if (s.ok()) vm = dest.Receive(&in, &id);
      if (vm.ok()) {
        auto b = store.value()->CommitFull(id, vm.value(), 1);
        s = b.ok() ? Status::OK() : b.status();
      } else {
        s = vm.status();
      }
      (void)dest.SendAck(&back, s.ok(), s.ok() ? "ready" : s.message());
      received[i] = s;
      close(fd);
    });
  }
  for (auto& t : threads) t.join();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "16 concurrent migrations into one store: %.0f ms\n", ms);
  for (int i = 0; i < kVms; ++i) {
    ASSERT_TRUE(sent[i].ok()) << i << ": " << sent[i].message();
    ASSERT_TRUE(received[i].ok()) << i << ": " << received[i].message();
    auto loaded = store.value()->Load("vm" + std::to_string(i));
    ASSERT_TRUE(loaded.ok()) << loaded.status().message();
    EXPECT_EQ(ComputeStateDigest(loaded.value()), ComputeStateDigest(vms[i])) << "vm " << i;
  }
}

}  // namespace
}  // namespace cvmstate

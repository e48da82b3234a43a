// The v1 calls of the C API, through the shared library: a VMM's own
// migration loop (pending, step with a byte budget, finish), cancel from
// another thread, the layout queries, replay, and the sized structs.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "c_api_test_helpers.h"
#include "cvmstate/cvmstate.h"

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

using cvmstate::testing::Digest;
using cvmstate::testing::ExpectNull;
using cvmstate::testing::Vm;

struct SocketPair {
  SocketPair() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd), 0); }
  ~SocketPair() {
    close(fd[0]);
    close(fd[1]);
  }
  int fd[2];
};

// A deterministic guest: conversions of 1 to 64 pages anywhere in the block.
struct Guest {
  uint64_t seed;
  uint64_t Next() {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return seed >> 11;
  }
  void Convert(cvmstate_vm* vm, const char* block, uint64_t pages, int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t len = 1 + Next() % 64, at = Next() % (pages - len);
      ASSERT_EQ(cvmstate_convert(vm, block, at * 4096, len * 4096, static_cast<int>(Next() % 3)), 0)
          << cvmstate_last_error();
    }
  }
};

// A destination thread: receive, ack, and keep the digest.
struct Destination {
  explicit Destination(int fd) {
    thread = std::thread([this, fd] {
      cvmstate_destination* dst = nullptr;
      rc = cvmstate_destination_new_fd(fd, nullptr, 60, &dst);
      if (rc != 0) return;
      cvmstate_vm* got = nullptr;
      rc = cvmstate_destination_receive(dst, &got);
      if (rc == 0) {
        cvmstate_vm_digest(got, &digest);
        rc = cvmstate_destination_ack(dst, 1, nullptr);
        cvmstate_vm_free(got);
      } else {
        error = cvmstate_last_error();
      }
      cvmstate_destination_free(dst);
    });
  }
  void Join() { thread.join(); }
  std::thread thread;
  int rc = 1;
  uint64_t digest = 0;
  std::string error;
};

constexpr uint64_t kPages = 1 << 20;  // 4 GiB of 4 KiB pages

TEST(CApiV1Test, AVmmsLoopStepsWithinItsBudgetWhileTheGuestConverts) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", kPages * 4096, 4096, CVMSTATE_PRIVATE), 0);
  Guest guest{7};
  guest.Convert(v.vm, "ram", kPages, 60000);
  SocketPair sp;
  Destination dest(sp.fd[1]);
  cvmstate_source* src = nullptr;
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);

  constexpr uint64_t kBudget = 4 << 10;
  // At most one small frame past the budget (header, MAC, table, zstd).
  constexpr uint64_t kOvershoot = 512;
  uint64_t pending = 0;
  ASSERT_EQ(cvmstate_source_pending(src, &pending), 0);
  uint64_t round_sent = 0, round_pending = pending, steps = 0, max_sent = 0;
  int rounds_done = 0;
  while (pending > 1024 || rounds_done == 0) {
    uint64_t sent = 0;
    int done = -1;
    ASSERT_EQ(cvmstate_source_step(src, kBudget, &sent, &done), 0) << cvmstate_last_error();
    ++steps;
    ASSERT_GT(sent, 0u);
    ASSERT_TRUE(done == 0 || done == 1);
    // The first step also carries the challenge answer and the hello.
    if (steps > 1) {
      EXPECT_LE(sent, kBudget + kOvershoot) << "step " << steps;
    }
    max_sent = std::max(max_sent, sent);
    round_sent += sent;
    // The guest keeps converting between steps: a few pages at a time.
    guest.Convert(v.vm, "ram", kPages, 40);
    if (done) {
      ++rounds_done;
      // The estimate taken before the round was at most one frame short.
      EXPECT_GE(round_pending + kOvershoot, round_sent) << "round " << rounds_done;
      round_sent = 0;
    }
    ASSERT_EQ(cvmstate_source_pending(src, &pending), 0);
    if (done) round_pending = pending;
    ASSERT_LT(steps, 10000u) << "the loop does not converge";
  }
  EXPECT_GT(steps, 4u) << "round 0 alone is larger than one budget";
  // Stop-and-copy.
  uint64_t last = 0;
  ASSERT_EQ(cvmstate_source_finish(src, &last), 0) << cvmstate_last_error();
  dest.Join();
  ASSERT_EQ(dest.rc, 0) << dest.error;
  EXPECT_EQ(dest.digest, Digest(v.vm));
  EXPECT_EQ(cvmstate_source_rounds(src),
            static_cast<uint32_t>(rounds_done) + 1 + (round_sent > 0 ? 1 : 0));
  EXPECT_EQ(cvmstate_source_step(src, kBudget, nullptr, nullptr), -EINVAL) << "after finish";
  std::printf("[ figures ] %llu steps of at most %llu bytes (budget %llu), %d rounds\n",
              static_cast<unsigned long long>(steps), static_cast<unsigned long long>(max_sent),
              static_cast<unsigned long long>(kBudget), rounds_done);
  cvmstate_source_free(src);
}

TEST(CApiV1Test, PendingBoundsWhatTheNextRoundSends) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", kPages * 4096, 4096, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram2", kPages * 4096, 4096, CVMSTATE_DISCARDED), 0);
  Guest guest{99};
  guest.Convert(v.vm, "ram", kPages, 50000);
  guest.Convert(v.vm, "ram2", kPages, 500);
  SocketPair sp;
  Destination dest(sp.fd[1]);
  cvmstate_source* src = nullptr;
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
  uint64_t pending = 0, sent = 0;
  ASSERT_EQ(cvmstate_source_pending(src, &pending), 0);
  ASSERT_EQ(cvmstate_source_begin(src, &sent), 0) << cvmstate_last_error();
  std::printf("[ figures ] round 0: pending %llu, sent %llu\n",
              static_cast<unsigned long long>(pending), static_cast<unsigned long long>(sent));
  EXPECT_GE(pending + 512, sent);
  for (int changes : {0, 1, 100, 5000}) {
    guest.Convert(v.vm, "ram", kPages, changes);
    ASSERT_EQ(cvmstate_source_pending(src, &pending), 0);
    ASSERT_EQ(cvmstate_source_round(src, &sent), 0) << cvmstate_last_error();
    std::printf("[ figures ] %d changes: pending %llu, sent %llu\n", changes,
                static_cast<unsigned long long>(pending), static_cast<unsigned long long>(sent));
    EXPECT_GE(pending + 512, sent) << changes;
    if (changes == 0) {
      EXPECT_LE(pending, 512u);
    }
  }
  ASSERT_EQ(cvmstate_source_finish(src, nullptr), 0) << cvmstate_last_error();
  dest.Join();
  EXPECT_EQ(dest.rc, 0) << dest.error;
  EXPECT_EQ(dest.digest, Digest(v.vm));
  cvmstate_source_free(src);
}

// The bytes a real destination sends first (its challenge), for a peer
// that then stops reading.
std::string AChallenge() {
  SocketPair sp;
  cvmstate_destination* dst = nullptr;
  EXPECT_EQ(cvmstate_destination_new_fd(sp.fd[1], nullptr, 30, &dst), 0);
  std::thread t([&] {
    cvmstate_vm* got = nullptr;
    EXPECT_EQ(cvmstate_destination_receive(dst, &got), -ECANCELED) << cvmstate_last_error();
  });
  std::string bytes;
  pollfd p{sp.fd[0], POLLIN, 0};
  char buf[4096];
  while (poll(&p, 1, 200) > 0) {
    const ssize_t n = read(sp.fd[0], buf, sizeof buf);
    if (n <= 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(cvmstate_destination_cancel(dst), 0);
  t.join();
  cvmstate_destination_free(dst);
  return bytes;
}

TEST(CApiV1Test, CancelEndsABlockedStepAtOnceAndSendsNothingMore) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", kPages * 4096, 4096, CVMSTATE_PRIVATE), 0);
  Guest guest{3};
  guest.Convert(v.vm, "ram", kPages, 100000);
  const std::string challenge = AChallenge();
  ASSERT_FALSE(challenge.empty());
  for (bool blocked_in_write : {false, true}) {
    SocketPair sp;
    const int small = 4096;
    ASSERT_EQ(setsockopt(sp.fd[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    ASSERT_EQ(setsockopt(sp.fd[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    // Without the challenge the step waits to read it; with it, it writes
    // round 0 into a peer that never reads.
    if (blocked_in_write) {
      ASSERT_EQ(write(sp.fd[1], challenge.data(), challenge.size()),
                static_cast<ssize_t>(challenge.size()));
    }
    cvmstate_source* src = nullptr;
    ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
    std::atomic<bool> returned{false};
    Clock::time_point cancelled_at;
    std::thread canceller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      ASSERT_FALSE(returned.load()) << "the step did not block";
      cancelled_at = Clock::now();
      EXPECT_EQ(cvmstate_source_cancel(src), 0);
    });
    const int rc = cvmstate_source_step(src, UINT64_MAX, nullptr, nullptr);
    const auto returned_at = Clock::now();
    returned = true;
    canceller.join();
    EXPECT_EQ(rc, -ECANCELED) << cvmstate_last_error();
    const double latency = std::chrono::duration<double>(returned_at - cancelled_at).count();
    std::printf("[ figures ] cancel latency (%s): %.3f ms\n", blocked_in_write ? "write" : "read",
                latency * 1e3);
    // A deadline against hanging, not a speed target: without the cancel
    // the call would wait its 120 s timeout.
    EXPECT_LT(latency, 5.0);
    // Every later call is cancelled too, and sends nothing.
    EXPECT_EQ(cvmstate_source_step(src, 1, nullptr, nullptr), -ECANCELED);
    EXPECT_EQ(cvmstate_source_round(src, nullptr), -ECANCELED);
    EXPECT_EQ(cvmstate_source_finish(src, nullptr), -ECANCELED);
    uint64_t pending = 0;
    EXPECT_EQ(cvmstate_source_pending(src, &pending), -ECANCELED);
    cvmstate_source_free(src);
  }
  EXPECT_EQ(cvmstate_source_cancel(nullptr), -EINVAL);
}

// After a finish, cvmstate_source_end_sent tells a VMM whether it may
// resume its guest: 0 when the end frame never went (the destination cannot
// commit), 1 when it went, also when the answer was then lost.
TEST(CApiV1Test, EndSentTellsALostAnswerFromAStreamThatNeverEnded) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", (1 << 16) * 4096ull, 4096, CVMSTATE_PRIVATE), 0);
  Guest guest{5};
  guest.Convert(v.vm, "ram", 1 << 16, 2000);
  ExpectNull(cvmstate_source_end_sent(nullptr), "src");
  {  // The answer is lost: a destination that receives all and closes.
    SocketPair sp;
    std::thread peer([&] {
      cvmstate_destination* dst = nullptr;
      ASSERT_EQ(cvmstate_destination_new_fd(sp.fd[1], nullptr, 30, &dst), 0);
      cvmstate_vm* got = nullptr;
      EXPECT_EQ(cvmstate_destination_receive(dst, &got), 0) << cvmstate_last_error();
      cvmstate_vm_free(got);
      shutdown(sp.fd[1], SHUT_RDWR);
      cvmstate_destination_free(dst);
    });
    cvmstate_source* src = nullptr;
    ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
    EXPECT_EQ(cvmstate_source_end_sent(src), 0);
    EXPECT_EQ(cvmstate_source_begin(src, nullptr), 0);
    EXPECT_EQ(cvmstate_source_end_sent(src), 0);
    const int rc = cvmstate_source_finish(src, nullptr);
    peer.join();
    EXPECT_NE(rc, 0);
    EXPECT_NE(rc, -EACCES);
    EXPECT_EQ(cvmstate_source_end_sent(src), 1);
    cvmstate_source_free(src);
  }
  {  // Cancelled before finish: the end never went.
    SocketPair sp;
    Destination d(sp.fd[1]);
    cvmstate_source* src = nullptr;
    ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
    EXPECT_EQ(cvmstate_source_begin(src, nullptr), 0);
    EXPECT_EQ(cvmstate_source_cancel(src), 0);
    EXPECT_EQ(cvmstate_source_finish(src, nullptr), -ECANCELED);
    EXPECT_EQ(cvmstate_source_end_sent(src), 0);
    shutdown(sp.fd[0], SHUT_RDWR);
    d.Join();
    EXPECT_NE(d.rc, 0);
    cvmstate_source_free(src);
  }
  {  // Acknowledged: sent, and 0.
    SocketPair sp;
    Destination d(sp.fd[1]);
    cvmstate_source* src = nullptr;
    ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
    EXPECT_EQ(cvmstate_source_finish(src, nullptr), -EINVAL);  // not begun
    EXPECT_EQ(cvmstate_source_begin(src, nullptr), 0);
    EXPECT_EQ(cvmstate_source_finish(src, nullptr), 0) << cvmstate_last_error();
    EXPECT_EQ(cvmstate_source_end_sent(src), 1);
    d.Join();
    EXPECT_EQ(d.rc, 0);
    EXPECT_EQ(d.digest, Digest(v.vm));
    cvmstate_source_free(src);
  }
}

TEST(CApiV1Test, CancelEndsABlockedReceiveWithNothingReceived) {
  SocketPair sp;
  cvmstate_destination* dst = nullptr;
  ASSERT_EQ(cvmstate_destination_new_fd(sp.fd[1], nullptr, 1000, &dst), 0);
  Clock::time_point cancelled_at;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    cancelled_at = Clock::now();
    EXPECT_EQ(cvmstate_destination_cancel(dst), 0);
  });
  cvmstate_vm* got = nullptr;
  EXPECT_EQ(cvmstate_destination_receive(dst, &got), -ECANCELED) << cvmstate_last_error();
  const double latency = SecondsSince(cancelled_at);
  canceller.join();
  EXPECT_EQ(got, nullptr);
  EXPECT_LT(latency, 5.0);
  EXPECT_EQ(cvmstate_destination_ack(dst, 1, nullptr), -ECANCELED);
  EXPECT_STREQ(cvmstate_destination_vm_id(dst), "");
  cvmstate_destination_free(dst);
  EXPECT_EQ(cvmstate_destination_cancel(nullptr), -EINVAL);
}

// A channel whose reads trickle: one byte every 50 ms, from `data`.
struct Trickle {
  std::string data;
  size_t at = 0;
  static long Read(void* opaque, void* buf, size_t) {
    auto* t = static_cast<Trickle*>(opaque);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (t->at >= t->data.size()) return 0;
    static_cast<char*>(buf)[0] = t->data[t->at++];
    return 1;
  }
  static long Write(void*, const void*, size_t size) { return static_cast<long>(size); }
};

TEST(CApiV1Test, AnIoDestinationHasATimeoutAndACancel) {
  const cvmstate_io_v1 io = {sizeof(cvmstate_io_v1), Trickle::Read, Trickle::Write};
  for (double bad : {0.0, -1.0, 1e9}) {
    cvmstate_destination* dst = nullptr;
    EXPECT_EQ(cvmstate_destination_new_io_v1(&io, nullptr, nullptr, bad, &dst), -EINVAL) << bad;
  }
  {
    // Garbage that never completes a frame header in time: -ETIMEDOUT once
    // a callback returns past the 0.3 s deadline.
    Trickle t{std::string(64, 'x')};
    cvmstate_destination* dst = nullptr;
    ASSERT_EQ(cvmstate_destination_new_io_v1(&io, &t, nullptr, 0.3, &dst), 0);
    cvmstate_vm* got = nullptr;
    const auto t0 = Clock::now();
    EXPECT_EQ(cvmstate_destination_receive(dst, &got), -ETIMEDOUT) << cvmstate_last_error();
    EXPECT_LT(SecondsSince(t0), 5.0);
    EXPECT_LT(t.at, 8u) << "read a whole header past the deadline";
    cvmstate_destination_free(dst);
  }
  {
    // A v0 io destination takes a timeout through the setter.
    const cvmstate_io io0 = {Trickle::Read, Trickle::Write};
    Trickle t{std::string(64, 'x')};
    cvmstate_destination* dst = nullptr;
    ASSERT_EQ(cvmstate_destination_new_io(&io0, &t, nullptr, &dst), 0);
    EXPECT_EQ(cvmstate_destination_set_timeout(dst, -1), -EINVAL);
    ASSERT_EQ(cvmstate_destination_set_timeout(dst, 0.3), 0);
    cvmstate_vm* got = nullptr;
    EXPECT_EQ(cvmstate_destination_receive(dst, &got), -ETIMEDOUT) << cvmstate_last_error();
    cvmstate_destination_free(dst);
  }
  {
    // Cancelled from another thread: seen when the callback returns.
    Trickle t{std::string(1 << 20, 'x')};
    cvmstate_destination* dst = nullptr;
    ASSERT_EQ(cvmstate_destination_new_io_v1(&io, &t, nullptr, 1000, &dst), 0);
    std::thread canceller([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      EXPECT_EQ(cvmstate_destination_cancel(dst), 0);
    });
    cvmstate_vm* got = nullptr;
    EXPECT_EQ(cvmstate_destination_receive(dst, &got), -ECANCELED) << cvmstate_last_error();
    canceller.join();
    cvmstate_destination_free(dst);
  }
}

// A VMM channel that is cancelled while its eighth read runs (as another
// thread would), then delivers that byte: the last of a frame header that
// would otherwise be parsed (and refused as corrupt).
struct CancelledWhileReading {
  cvmstate_source* src = nullptr;
  int reads = 0;
  static long Read(void* opaque, void* buf, size_t) {
    auto* c = static_cast<CancelledWhileReading*>(opaque);
    if (++c->reads == 8) {
      EXPECT_EQ(cvmstate_source_cancel(c->src), 0);
    }
    static_cast<char*>(buf)[0] = 'x';
    return 1;
  }
  static long Write(void*, const void*, size_t size) { return static_cast<long>(size); }
};

TEST(CApiV1Test, ACallbackSourceIsCancelledAsSoonAsItsCallbackReturns) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  // v0 and v1 callback sources alike: -ECANCELED, not the corrupt header.
  for (bool v1 : {false, true}) {
    CancelledWhileReading c;
    if (v1) {
      const cvmstate_io_v1 io = {sizeof(cvmstate_io_v1), CancelledWhileReading::Read, CancelledWhileReading::Write};
      ASSERT_EQ(cvmstate_source_new_io_v1(v.vm, "g", &io, &c, nullptr, &c.src), 0);
    } else {
      const cvmstate_io io = {CancelledWhileReading::Read, CancelledWhileReading::Write};
      ASSERT_EQ(cvmstate_source_new_io(v.vm, "g", &io, &c, nullptr, &c.src), 0);
    }
    EXPECT_EQ(cvmstate_source_step(c.src, 1 << 20, nullptr, nullptr), -ECANCELED) << cvmstate_last_error();
    EXPECT_EQ(c.reads, 8) << "read on after the cancel";
    cvmstate_source_free(c.src);
  }
}

TEST(CApiV1Test, BlocksAreListedWithTheirBytesInEachState) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 30, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "hugetlb", uint64_t{4} << 30, 2 << 20, CVMSTATE_DISCARDED),
            0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 1 << 20, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 1 << 20, 3 << 20, CVMSTATE_DISCARDED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "hugetlb", 0, 6 << 20, CVMSTATE_PRIVATE), 0);
  uint32_t count = 0;
  ASSERT_EQ(cvmstate_vm_block_count(v.vm, &count), 0);
  ASSERT_EQ(count, 2u);
  cvmstate_block_info info;
  std::memset(&info, 0xff, sizeof info);
  info.struct_size = sizeof info;
  ASSERT_EQ(cvmstate_vm_block_info(v.vm, 0, &info), 0) << cvmstate_last_error();
  EXPECT_STREQ(info.name, "ram");
  EXPECT_EQ(info.size, uint64_t{1} << 30);
  EXPECT_EQ(info.page_size, 4096u);
  EXPECT_EQ(info.bytes[CVMSTATE_SHARED], uint64_t{1} << 20);
  EXPECT_EQ(info.bytes[CVMSTATE_DISCARDED], uint64_t{3} << 20);
  EXPECT_EQ(info.bytes[CVMSTATE_PRIVATE], (uint64_t{1} << 30) - (uint64_t{4} << 20));
  ASSERT_EQ(cvmstate_vm_block_info(v.vm, 1, &info), 0);
  EXPECT_STREQ(info.name, "hugetlb");
  EXPECT_EQ(info.page_size, uint64_t{2} << 20);
  EXPECT_EQ(info.bytes[CVMSTATE_PRIVATE], uint64_t{6} << 20);
  EXPECT_EQ(info.bytes[CVMSTATE_SHARED], 0u);
  EXPECT_EQ(cvmstate_vm_block_info(v.vm, 2, &info), -ENOENT);
  // A caller built against an older header (a smaller struct) is refused;
  // one built against a newer one gets its unknown fields zeroed.
  info.struct_size = sizeof info - 8;
  EXPECT_EQ(cvmstate_vm_block_info(v.vm, 0, &info), -EINVAL);
  EXPECT_NE(std::string(cvmstate_last_error()).find("struct_size"), std::string::npos)
      << cvmstate_last_error();
  struct {
    cvmstate_block_info info;
    uint64_t newer_field;
  } bigger;
  std::memset(&bigger, 0xff, sizeof bigger);
  bigger.info.struct_size = sizeof bigger;
  ASSERT_EQ(cvmstate_vm_block_info(v.vm, 0, &bigger.info), 0);
  EXPECT_EQ(bigger.newer_field, 0u);
  EXPECT_EQ(bigger.info.struct_size, sizeof(cvmstate_block_info));
  Vm empty;
  ASSERT_EQ(cvmstate_vm_block_count(empty.vm, &count), 0);
  EXPECT_EQ(count, 0u);
}

TEST(CApiV1Test, RangeStateIsOneStateOrMixed) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 30, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 1 << 20, 1 << 20, CVMSTATE_SHARED), 0);
  int state = -1;
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", 1 << 20, 1 << 20, &state), 0);
  EXPECT_EQ(state, CVMSTATE_SHARED);
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", (1 << 20) + 100, 10, &state), 0) << "inside one page";
  EXPECT_EQ(state, CVMSTATE_SHARED);
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", 0, 1 << 20, &state), 0);
  EXPECT_EQ(state, CVMSTATE_PRIVATE);
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", (1 << 20) - 4096, 8192, &state), 0);
  EXPECT_EQ(state, CVMSTATE_MIXED);
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", (2 << 20) - 1, 2, &state), 0)
      << "the last shared byte and the next";
  EXPECT_EQ(state, CVMSTATE_MIXED);
  EXPECT_EQ(cvmstate_range_state(v.vm, "ram", 0, 0, &state), -EINVAL);
  EXPECT_EQ(cvmstate_range_state(v.vm, "ram", 1 << 30, 1, &state), -EINVAL);
  EXPECT_EQ(cvmstate_range_state(v.vm, "ram", 0, (uint64_t{1} << 30) + 1, &state), -EINVAL);
  EXPECT_EQ(cvmstate_range_state(v.vm, "nope", 0, 1, &state), -ENOENT);
  EXPECT_EQ(cvmstate_range_state(v.vm, "ram", 0, 1, nullptr), -EINVAL);
}

// A guest's shared runs taken a buffer at a time: the same runs as
// cvmstate_for_each_run, whatever the buffer's size, across chunks (a
// run spanning two is one run), in lists of many runs and in dense chunks.
TEST(CApiV1Test, GetRunsFillsBuffersWithOneStatesRuns) {
  Vm v;
  const uint64_t page = 4096, pages = uint64_t{3} << 16;  // three chunks
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", pages * page, page, CVMSTATE_PRIVATE), 0);
  std::mt19937_64 rng(5);
  // Chunk 0: a list of a few hundred runs in all three states; chunk 1: a
  // shared run across its start, then single shared pages every other page
  // (dense); chunk 2: one long shared run.
  for (int i = 0; i < 300; ++i) {
    const uint64_t at = rng() % 60000, len = 1 + rng() % 40;
    ASSERT_EQ(cvmstate_convert(v.vm, "ram", at * page, len * page, static_cast<int>(rng() % 3)), 0);
  }
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", (65536 - 10) * page, 20 * page, CVMSTATE_SHARED), 0);
  for (uint64_t p = 65536 + 100; p < 65536 + 6000; p += 2)
    ASSERT_EQ(cvmstate_convert(v.vm, "ram", p * page, page, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 2 * 65536 * page, 30000 * page, CVMSTATE_SHARED), 0);

  for (int state = 0; state < 3; ++state) {
    std::vector<std::pair<uint64_t, uint64_t>> want;
    auto add = [](void* o, uint64_t off, uint64_t size, int) {
      static_cast<std::vector<std::pair<uint64_t, uint64_t>>*>(o)->emplace_back(off, size);
      return 0;
    };
    // Bounds inside pages: the first and last runs are clipped to them.
    const uint64_t off = 12345, end = pages * page - 777;
    ASSERT_EQ(cvmstate_for_each_run(v.vm, "ram", off, end - off, state, add, &want), 0);
    ASSERT_GT(want.size(), state == CVMSTATE_SHARED ? 3000u : 50u);
    for (size_t capacity : {size_t{1}, size_t{7}, size_t{256}, size_t{100000}}) {
      std::vector<cvmstate_range> buf(capacity);
      std::vector<std::pair<uint64_t, uint64_t>> got;
      uint64_t at = off;
      int rc = 0, calls = 0;
      do {
        size_t n = 0;
        rc = cvmstate_get_runs(v.vm, "ram", at, end - at, state, buf.data(), capacity, &n);
        ASSERT_GE(rc, 0) << cvmstate_last_error();
        for (size_t i = 0; i < n; ++i) got.emplace_back(buf[i].offset, buf[i].size);
        if (n != 0) at = buf[n - 1].offset + buf[n - 1].size;
        ++calls;
      } while (rc == 1);
      EXPECT_EQ(got, want) << "state " << state << " capacity " << capacity;
      EXPECT_EQ(calls, static_cast<int>((want.size() + capacity - 1) / capacity)) << "capacity " << capacity;
    }
  }
  // Errors write no run and a count of 0; so does an empty range.
  cvmstate_range r{7, 7};
  struct Case {
    const char* block;
    uint64_t offset, size;
    int state;
    size_t capacity;
    int rc;
  };
  for (const Case& c : {Case{"ram", 0, page, -1, 1, -EINVAL}, Case{"ram", 0, page, 3, 1, -EINVAL},
                        Case{"ram", 0, page, 0, 0, -EINVAL}, Case{"ram", 0, pages * page + 1, 0, 1, -EINVAL},
                        Case{"nope", 0, page, 0, 1, -ENOENT}, Case{"ram", page, 0, 0, 1, 0}}) {
    size_t n = 5;
    EXPECT_EQ(cvmstate_get_runs(v.vm, c.block, c.offset, c.size, c.state, &r, c.capacity, &n), c.rc)
        << c.block << " " << c.offset << "+" << c.size << " state " << c.state << " capacity " << c.capacity;
    EXPECT_EQ(n, 0u);
    EXPECT_TRUE(r.offset == 7 && r.size == 7);
  }
}

// Records every callback of the listeners it serves, in order.
struct Log {
  std::vector<std::string> calls;
  int refuse_populate = 0;
  static std::string Range(const char* what, uint64_t offset, uint64_t size) {
    return std::string(what) + " " + std::to_string(offset >> 12) + "+" +
           std::to_string(size >> 12);
  }
  static int Populate(void* o, uint64_t offset, uint64_t size) {
    auto* l = static_cast<Log*>(o);
    l->calls.push_back(Range("populate", offset, size));
    return l->refuse_populate != 0 && --l->refuse_populate == 0 ? -ENOSPC : 0;
  }
  static void Discard(void* o, uint64_t offset, uint64_t size) {
    static_cast<Log*>(o)->calls.push_back(Range("discard", offset, size));
  }
  static int SetPrivate(void* o, uint64_t offset, uint64_t size) {
    static_cast<Log*>(o)->calls.push_back(Range("set_private", offset, size));
    return 0;
  }
  static void ClearPrivate(void* o, uint64_t offset, uint64_t size) {
    static_cast<Log*>(o)->calls.push_back(Range("clear_private", offset, size));
  }
};

TEST(CApiV1Test, ListenersAreReplayedOnDemandAndCalledInTheDocumentedOrder) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 64 << 12, 4096, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 4 << 12, 2 << 12, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 10 << 12, 1 << 12, CVMSTATE_SHARED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 20 << 12, 4 << 12, CVMSTATE_DISCARDED), 0);
  Log log;
  const cvmstate_attr_ops_v1 attr = {sizeof attr, Log::SetPrivate, Log::ClearPrivate, 0};
  const cvmstate_dma_ops_v1 dma = {sizeof dma, Log::Populate, Log::Discard, 0, 0};
  cvmstate_listener *a = nullptr, *d = nullptr;
  // The attribute listener first, on the whole block; the DMA one on pages [0, 32).
  ASSERT_EQ(cvmstate_register_attr_listener_v1(v.vm, "ram", 0, 64 << 12, &attr, &log, &a), 0)
      << cvmstate_last_error();
  ASSERT_EQ(cvmstate_register_dma_listener_v1(v.vm, "ram", 0, 32 << 12, &dma, &log, &d), 0)
      << cvmstate_last_error();
  log.calls.clear();
  ASSERT_EQ(cvmstate_listener_replay(v.vm, d, CVMSTATE_SHARED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"populate 4+2", "populate 10+1"}));
  log.calls.clear();
  ASSERT_EQ(cvmstate_listener_replay(v.vm, d, CVMSTATE_DISCARDED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"discard 20+4"}));
  log.calls.clear();
  ASSERT_EQ(cvmstate_listener_replay(v.vm, a, CVMSTATE_PRIVATE), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"set_private 0+4", "set_private 6+4",
                                                 "set_private 11+9", "set_private 24+40"}));
  // A refusal stops the replay with its code.
  log.calls.clear();
  log.refuse_populate = 2;
  EXPECT_EQ(cvmstate_listener_replay(v.vm, d, CVMSTATE_SHARED), -ENOSPC);
  EXPECT_EQ(log.calls.size(), 2u);
  EXPECT_EQ(cvmstate_listener_replay(v.vm, d, 3), -EINVAL);
  // Shared -> private on pages [4, 6): refusable calls first (set_private),
  // then the state changes, then discard. Private -> shared on [0, 2):
  // populate first, then clear_private.
  log.calls.clear();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 4 << 12, 2 << 12, CVMSTATE_PRIVATE), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"set_private 4+2", "discard 4+2"}));
  log.calls.clear();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 2 << 12, CVMSTATE_SHARED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"populate 0+2", "clear_private 0+2"}));
  // A refused populate undoes the accepted set_private... there is none
  // here: private -> shared refused leaves only the populate.
  log.calls.clear();
  log.refuse_populate = 1;
  EXPECT_EQ(cvmstate_convert(v.vm, "ram", 6 << 12, 2 << 12, CVMSTATE_SHARED), -ENOSPC);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"populate 6+2"}));
  int state = -1;
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", 6 << 12, 2 << 12, &state), 0);
  EXPECT_EQ(state, CVMSTATE_PRIVATE);
  ASSERT_EQ(cvmstate_unregister_listener(v.vm, d), 0);
  EXPECT_EQ(cvmstate_listener_replay(v.vm, d, CVMSTATE_SHARED), -ENOENT);
  ASSERT_EQ(cvmstate_unregister_listener(v.vm, a), 0);
}

// A discard listener (0.3) is told when pages lose their backing and when
// they get it back, never of shared <-> private; a refused populate rolls
// the conversion back together with the other listeners' calls.
TEST(CApiV1Test, ADiscardListenerIsToldWhenBackingGoesAndComesBack) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 64 << 12, 4096, CVMSTATE_DISCARDED), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 8 << 12, 8 << 12, CVMSTATE_PRIVATE), 0);
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 16 << 12, 4 << 12, CVMSTATE_SHARED), 0);
  Log log;
  const cvmstate_discard_ops_v1 ops = {sizeof ops, Log::Populate, Log::Discard, 0};
  const cvmstate_attr_ops_v1 attr = {sizeof attr, Log::SetPrivate, Log::ClearPrivate, 0};
  cvmstate_listener *l = nullptr, *a = nullptr;
  ASSERT_EQ(cvmstate_register_attr_listener_v1(v.vm, "ram", 0, 64 << 12, &attr, &log, &a), 0);
  log.calls.clear();
  ASSERT_EQ(cvmstate_register_discard_listener_v1(v.vm, "ram", 0, 64 << 12, &ops, &log, &l), 0)
      << cvmstate_last_error();
  // Registering: populate for the backed runs, private and shared merged.
  EXPECT_EQ(log.calls, (std::vector<std::string>{"populate 8+12"}));
  log.calls.clear();
  ASSERT_EQ(cvmstate_listener_replay(v.vm, l, CVMSTATE_DISCARDED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"discard 0+8", "discard 20+44"}));
  log.calls.clear();
  ASSERT_EQ(cvmstate_listener_replay(v.vm, l, CVMSTATE_SHARED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"populate 16+4"}));
  // Private -> shared is not its business.
  log.calls.clear();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 8 << 12, 2 << 12, CVMSTATE_SHARED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"clear_private 8+2"}));
  // Private and shared -> discarded: one discard after the state changed.
  log.calls.clear();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 6 << 12, 12 << 12, CVMSTATE_DISCARDED), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"clear_private 10+6", "discard 8+10"}));
  // Discarded -> private: populate (refusable) first, in registration order
  // after the attribute listener's set_private; a refusal undoes both.
  log.calls.clear();
  log.refuse_populate = 1;
  EXPECT_EQ(cvmstate_convert(v.vm, "ram", 0, 4 << 12, CVMSTATE_PRIVATE), -ENOSPC);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"set_private 0+4", "populate 0+4", "clear_private 0+4"}));
  int state = -1;
  ASSERT_EQ(cvmstate_range_state(v.vm, "ram", 0, 4 << 12, &state), 0);
  EXPECT_EQ(state, CVMSTATE_DISCARDED);
  log.calls.clear();
  ASSERT_EQ(cvmstate_convert(v.vm, "ram", 0, 4 << 12, CVMSTATE_PRIVATE), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"set_private 0+4", "populate 0+4"}));
  // Unregistering withdraws the backed runs.
  log.calls.clear();
  ASSERT_EQ(cvmstate_unregister_listener(v.vm, l), 0);
  EXPECT_EQ(log.calls, (std::vector<std::string>{"discard 0+4", "discard 18+2"}));
  ASSERT_EQ(cvmstate_unregister_listener(v.vm, a), 0);
  // Its struct is sized like the others.
  cvmstate_discard_ops_v1 small = ops;
  small.struct_size = sizeof(size_t);
  EXPECT_EQ(cvmstate_register_discard_listener_v1(v.vm, "ram", 0, 64 << 12, &small, &log, &l), -EINVAL);
  ExpectNull(cvmstate_register_discard_listener_v1(v.vm, "ram", 0, 64 << 12, nullptr, &log, &l), "ops");
}

TEST(CApiV1Test, SizedStructsAreCheckedBySize) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  Log log;
  cvmstate_listener* l = nullptr;
  cvmstate_dma_ops_v1 dma = {0, Log::Populate, Log::Discard, 0, 0};
  EXPECT_EQ(cvmstate_register_dma_listener_v1(v.vm, "ram", 0, 1 << 20, &dma, &log, &l), -EINVAL);
  EXPECT_NE(std::string(cvmstate_last_error()).find("struct_size"), std::string::npos)
      << cvmstate_last_error();
  EXPECT_TRUE(log.calls.empty());
  // A newer caller's struct: accepted when what it adds is zero, refused
  // when it asks for something this library does not know.
  struct {
    cvmstate_dma_ops_v1 ops;
    uint64_t newer;
  } bigger;
  std::memset(&bigger, 0, sizeof bigger);
  bigger.ops = {sizeof bigger, Log::Populate, Log::Discard, 0, 0};
  bigger.newer = 1;
  EXPECT_EQ(cvmstate_register_dma_listener_v1(v.vm, "ram", 0, 1 << 20, &bigger.ops, &log, &l),
            -EINVAL);
  EXPECT_NE(std::string(cvmstate_last_error()).find("newer"), std::string::npos)
      << cvmstate_last_error();
  bigger.newer = 0;
  ASSERT_EQ(cvmstate_register_dma_listener_v1(v.vm, "ram", 0, 1 << 20, &bigger.ops, &log, &l), 0)
      << cvmstate_last_error();
  EXPECT_EQ(log.calls, (std::vector<std::string>{"populate 0+256"}));
  ASSERT_EQ(cvmstate_unregister_listener(v.vm, l), 0);
  cvmstate_attr_ops_v1 attr = {sizeof attr - 1, Log::SetPrivate, Log::ClearPrivate, 0};
  EXPECT_EQ(cvmstate_register_attr_listener_v1(v.vm, "ram", 0, 1 << 20, &attr, &log, &l), -EINVAL);
  cvmstate_io_v1 io = {sizeof io - 8, Trickle::Read, Trickle::Write};
  cvmstate_source* src = nullptr;
  EXPECT_EQ(cvmstate_source_new_io_v1(v.vm, "g", &io, nullptr, nullptr, &src), -EINVAL);
  io.struct_size = sizeof io;
  io.read = nullptr;
  EXPECT_EQ(cvmstate_source_new_io_v1(v.vm, "g", &io, nullptr, nullptr, &src), -EINVAL);
  EXPECT_STREQ(cvmstate_last_error(), "null argument: io->read");
  io.read = Trickle::Read;
  ASSERT_EQ(cvmstate_source_new_io_v1(v.vm, "g", &io, nullptr, nullptr, &src), 0);
  EXPECT_EQ(cvmstate_source_set_timeout(src, 0.5), 0) << "a v1 io source takes a timeout";
  cvmstate_source_free(src);
}

}  // namespace

namespace {

TEST(CApiV1Test, EveryNullArgumentOfTheV1CallsIsInvalid) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", 1 << 20, 4096, CVMSTATE_SHARED), 0);
  SocketPair sp;
  cvmstate_source* src = nullptr;
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
  uint64_t u = 0;
  uint32_t count = 0;
  int state = 0;
  cvmstate_block_info info{};
  info.struct_size = sizeof info;
  ExpectNull(cvmstate_source_pending(nullptr, &u), "src");
  ExpectNull(cvmstate_source_pending(src, nullptr), "bytes");
  ExpectNull(cvmstate_source_step(nullptr, 1, nullptr, nullptr), "src");
  ExpectNull(cvmstate_vm_block_count(nullptr, &count), "vm");
  ExpectNull(cvmstate_vm_block_count(v.vm, nullptr), "count");
  ExpectNull(cvmstate_vm_block_info(nullptr, 0, &info), "vm");
  ExpectNull(cvmstate_vm_block_info(v.vm, 0, nullptr), "info");
  ExpectNull(cvmstate_range_state(nullptr, "ram", 0, 1, &state), "vm");
  ExpectNull(cvmstate_range_state(v.vm, nullptr, 0, 1, &state), "block");
  ExpectNull(cvmstate_range_state(v.vm, "ram", 0, 1, nullptr), "state");
  cvmstate_range range{};
  size_t n = 0;
  ExpectNull(cvmstate_get_runs(nullptr, "ram", 0, 1, 0, &range, 1, &n), "vm");
  ExpectNull(cvmstate_get_runs(v.vm, nullptr, 0, 1, 0, &range, 1, &n), "block");
  ExpectNull(cvmstate_get_runs(v.vm, "ram", 0, 1, 0, nullptr, 1, &n), "runs");
  ExpectNull(cvmstate_get_runs(v.vm, "ram", 0, 1, 0, &range, 1, nullptr), "count");
  ExpectNull(cvmstate_listener_replay(nullptr, nullptr, 0), "vm");
  ExpectNull(cvmstate_listener_replay(v.vm, nullptr, 0), "listener");
  cvmstate_listener* l = nullptr;
  ExpectNull(cvmstate_register_dma_listener_v1(v.vm, "ram", 0, 1 << 20, nullptr, nullptr, &l),
             "ops");
  ExpectNull(cvmstate_register_attr_listener_v1(v.vm, "ram", 0, 1 << 20, nullptr, nullptr, &l),
             "ops");
  cvmstate_source* s2 = nullptr;
  ExpectNull(cvmstate_source_new_io_v1(v.vm, "g", nullptr, nullptr, nullptr, &s2), "io");
  cvmstate_destination* d = nullptr;
  ExpectNull(cvmstate_destination_new_io_v1(nullptr, nullptr, nullptr, 1, &d), "io");
  ExpectNull(cvmstate_destination_set_timeout(nullptr, 1), "dst");
  ExpectNull(cvmstate_source_cancel(nullptr), "src");
  ExpectNull(cvmstate_destination_cancel(nullptr), "dst");
  cvmstate_source_free(src);
}

TEST(CApiV1Test, AStreamCutInTheMiddleSendsNothingMore) {
  Vm v;
  ASSERT_EQ(cvmstate_vm_add_block(v.vm, "ram", kPages * 4096, 4096, CVMSTATE_PRIVATE), 0);
  Guest guest{5};
  guest.Convert(v.vm, "ram", kPages, 20000);
  const std::string challenge = AChallenge();
  SocketPair sp;
  ASSERT_EQ(write(sp.fd[1], challenge.data(), challenge.size()),
            static_cast<ssize_t>(challenge.size()));
  cvmstate_source* src = nullptr;
  ASSERT_EQ(cvmstate_source_new_fd(v.vm, "g", sp.fd[0], nullptr, &src), 0);
  uint64_t sent = 0;
  ASSERT_EQ(cvmstate_source_step(src, 1024, &sent, nullptr), 0) << cvmstate_last_error();
  // The destination goes away in the middle of round 0.
  ASSERT_EQ(shutdown(sp.fd[1], SHUT_RDWR), 0);
  int rc = 0;
  for (int i = 0; i < 100 && rc == 0; ++i)
    rc = cvmstate_source_step(src, 1 << 20, nullptr, nullptr);
  EXPECT_EQ(rc, -EIO) << cvmstate_last_error();
  // What follows would continue a cut frame: refused, nothing written.
  EXPECT_EQ(cvmstate_source_step(src, 1 << 20, nullptr, nullptr), -EIO);
  EXPECT_NE(std::string(cvmstate_last_error()).find("earlier call failed"), std::string::npos)
      << cvmstate_last_error();
  EXPECT_EQ(cvmstate_source_finish(src, nullptr), -EIO);
  cvmstate_source_free(src);
}

}  // namespace

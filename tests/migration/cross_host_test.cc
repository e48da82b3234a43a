// Live migration between real processes over loopback TCP (and, where the
// machine allows, between two network namespaces), with either side killed
// at random moments, and recorded streams corrupted.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "migration/byte_stream.h"
#include "migration/crc32c.h"
#include "migration/destination.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "migration/tcp.h"

#include "cvmstate_test.h"
#include "netns.h"

namespace cvmstate::testing {
namespace {

class CrossHostTest : public CvmstateTest {
 protected:
  void SetUp() override {
    CvmstateTest::SetUp();
    // A source store holding a realistic VM, and a live trace for it.
    const std::string base = dir_ + "/base.trace";
    ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "256G", "--ops", "20000", "--seed", "4"}, base).exit_code, 0);
    ASSERT_EQ(Cvm({"replay", base, "--db", dir_ + "/src", "--vm", "g", "--quiet"}).exit_code, 0);
    const std::string live = dir_ + "/live.trace";
    ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "256G", "--ops", "10000", "--seed", "5"}, live).exit_code, 0);
    std::string text = ReadFile(live), kept;
    for (size_t pos = 0; pos < text.size();) {
      size_t nl = text.find('\n', pos);
      std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.rfind("shared", 0) == 0 || line.rfind("private", 0) == 0 || line.rfind("discarded", 0) == 0) {
        kept += line + "\n";
      }
    }
    WriteFile(live, kept);
    src_before_ = Dump(dir_ + "/src");
    ASSERT_FALSE(src_before_.empty());
    // The state a migration of it carries: the base state with the live
    // conversions applied (applying them again changes nothing, so this is
    // also what every later migration carries).
    WriteFile(dir_ + "/migrated.trace", ReadFile(base) + kept);
    ASSERT_EQ(Cvm({"replay", dir_ + "/migrated.trace", "--db", dir_ + "/migrated", "--vm", "g", "--quiet"}).exit_code, 0);
    migrated_ = Dump(dir_ + "/migrated");
    ASSERT_FALSE(migrated_.empty());
  }
  std::string Dump(const std::string& db, const std::string& vm = "g") {
    ProcessResult r = Cvm({"dump", "--db", db, "--vm", vm, "--format", "runs"});
    return r.exit_code == 0 ? r.out : "";
  }
  std::string Port(BackgroundProcess& recv) {
    EXPECT_TRUE(recv.WaitForStderr("listening on ", 10000)) << recv.Stderr();
    std::string err = recv.Stderr();
    size_t at = err.find("listening on ") + 13;
    return err.substr(at, err.find('\n', at) - at);
  }
  std::string src_before_;
  std::string migrated_;
};

TEST_F(CrossHostTest, LiveMigrationOverLoopbackTcp) {
  BackgroundProcess recv({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dir_ + "/dst"},
                         dir_ + "/recv.out", dir_ + "/recv.err");
  const std::string port = Port(recv);
  ProcessResult send = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to", port, "--trace",
                            dir_ + "/live.trace", "--rounds", "4"});
  ProcessResult r = recv.Wait();
  ASSERT_EQ(send.exit_code, 0) << send.err;
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ready\n");
  EXPECT_NE(r.err.find("downtime"), std::string::npos);
  EXPECT_NE(send.err.find("round 4 (stop-and-copy)"), std::string::npos) << send.err;
  const std::string src_after = Dump(dir_ + "/src"), dst = Dump(dir_ + "/dst");
  EXPECT_EQ(dst, src_after) << "destination differs from source";
  EXPECT_NE(src_after, src_before_) << "the live trace changed nothing";
  EXPECT_EQ(dst, migrated_) << "the migrated state is the base with the live conversions";
  // A second migration of the same id into the same store is refused.
  BackgroundProcess again({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dir_ + "/dst"},
                          dir_ + "/again.out", dir_ + "/again.err");
  ProcessResult send2 = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to", Port(again)});
  ProcessResult r2 = again.Wait();
  EXPECT_EQ(r2.exit_code, 1);
  EXPECT_NE(r2.err.find("already exists"), std::string::npos) << r2.err;
  EXPECT_EQ(send2.exit_code, 1);
  EXPECT_NE(send2.err.find("refused"), std::string::npos) << send2.err;
  EXPECT_EQ(Dump(dir_ + "/src"), src_after) << "a failed send changed the source store";
  EXPECT_EQ(Dump(dir_ + "/dst"), dst);
}

TEST_F(CrossHostTest, EitherSideKilledLeavesNoPartialVm) {
  std::mt19937_64 rng(21);
  for (int round = 0; round < 6; ++round) {
    const std::string dst = dir_ + "/dst" + std::to_string(round);
    BackgroundProcess recv({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dst, "--timeout",
                            "3"},
                           dst + ".out", dst + ".err");
    const std::string port = Port(recv);
    BackgroundProcess send({CvmstateBinary(), "migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to", port,
                            "--trace", dir_ + "/live.trace", "--rounds", "3"},
                           dst + ".sout", dst + ".serr");
    usleep(static_cast<useconds_t>(rng() % 40000));
    const bool kill_source = round % 2 == 0;
    (kill_source ? send : recv).Kill(SIGKILL);
    ProcessResult s = send.Wait(), r = recv.Wait();
    // The survivor ends by itself with an error, never a signal of its own.
    if (kill_source) {
      EXPECT_NE(r.signal, SIGSEGV);
      EXPECT_TRUE(r.signal == 0) << r.err;
    } else {
      EXPECT_TRUE(s.signal == 0) << s.err;
    }
    const bool source_done = s.signal == 0 && s.exit_code == 0;
    if (!source_done) {
      EXPECT_EQ(Dump(dir_ + "/src"), src_before_) << "round " << round << ": the source store changed";
    }
    // The destination holds the whole migrated VM or none of it. It can
    // hold it while the source has not committed: a destination killed
    // after its synced commit and before its acknowledgement reached the
    // source (the two-generals case the README states).
    ProcessResult list = Cvm({"dump", "--db", dst, "--vm", "g", "--format", "runs"});
    if (list.exit_code == 0) {
      EXPECT_EQ(list.out, migrated_) << "round " << round;
      if (source_done) {
        EXPECT_EQ(list.out, Dump(dir_ + "/src")) << "round " << round;
      }
    } else {
      EXPECT_TRUE(list.err.find("no checkpoint") != std::string::npos ||
                  list.err.find("cannot open store") != std::string::npos)
          << list.err;
    }
    if (source_done) {
      // The migration went through before the kill: restore the source.
      src_before_ = Dump(dir_ + "/src");
    }
  }
}

TEST_F(CrossHostTest, CorruptedRecordedStreamsAreRefused) {
  const std::string stream = dir_ + "/g.stream";
  ProcessResult s = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", stream, "--trace",
                         dir_ + "/live.trace"});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  const std::string good = ReadFile(stream);
  ProcessResult dump = Cvm({"dump", "--stream", stream, "--format", "runs"});
  EXPECT_EQ(dump.out, Dump(dir_ + "/src"));
  std::mt19937_64 rng(3);
  for (int i = 0; i < 12; ++i) {
    std::string bad = good;
    if (i % 3 == 2) {
      bad.resize(rng() % bad.size());
    } else {
      const size_t at = rng() % bad.size();
      bad[at] = static_cast<char>(bad[at] ^ (1 << (rng() % 8)));
    }
    WriteFile(dir_ + "/bad.stream", bad);
    ProcessResult r = Cvm({"migrate", "recv", "--from-file", dir_ + "/bad.stream", "--db", dir_ + "/dst"});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("migration failed: "), std::string::npos) << r.err;
    EXPECT_EQ(Dump(dir_ + "/dst"), "") << "a corrupted stream left a VM behind";
  }
  WriteFile(dir_ + "/tail.stream", good + "x");
  EXPECT_EQ(Cvm({"migrate", "recv", "--from-file", dir_ + "/tail.stream", "--db", dir_ + "/dst"}).exit_code, 1);
  ProcessResult ok = Cvm({"migrate", "recv", "--from-file", stream, "--db", dir_ + "/dst", "--vm", "copy"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out, "ready\n");
  EXPECT_EQ(Dump(dir_ + "/dst", "copy"), Dump(dir_ + "/src"));
}

TEST_F(CrossHostTest, SilentSenderTimesOut) {
  BackgroundProcess recv({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dir_ + "/dst",
                          "--timeout", "1"},
                         dir_ + "/r.out", dir_ + "/r.err");
  Port(recv);
  ProcessResult r = recv.Wait(20);  // nobody connects
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("timed out"), std::string::npos) << r.err;
}

// Two hosts: network namespaces joined by a veth pair.
TEST_F(CrossHostTest, BetweenNetworkNamespaces) {
  NetnsPair hosts;
  if (!hosts.ok()) GTEST_SKIP() << hosts.why();
  BackgroundProcess recv(NetnsPair::In(hosts.b(), {CvmstateBinary(), "migrate", "recv", "--listen", "192.0.2.2:7411",
                                                   "--db", dir_ + "/dst"}),
                         dir_ + "/ns.out", dir_ + "/ns.err");
  ASSERT_TRUE(recv.WaitForStderr("listening on", 10000)) << recv.Stderr();
  BackgroundProcess send(NetnsPair::In(hosts.a(), {CvmstateBinary(), "migrate", "send", "--db", dir_ + "/src", "--vm",
                                                   "g", "--to", "192.0.2.2:7411", "--trace", dir_ + "/live.trace"}),
                         dir_ + "/nss.out", dir_ + "/nss.err");
  ProcessResult s = send.Wait(), r = recv.Wait();
  ASSERT_EQ(s.exit_code, 0) << s.err;
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ready\n");
  EXPECT_EQ(Dump(dir_ + "/dst"), Dump(dir_ + "/src"));
}

}  // namespace
}  // namespace cvmstate::testing

namespace cvmstate::testing {
namespace {

TEST_F(CrossHostTest, PreSharedKeys) {
  WriteFile(dir_ + "/key", "a-pre-shared-key-of-enough-bytes");
  WriteFile(dir_ + "/other", "another-pre-shared-key-entirely!");
  struct Case {
    const char* send_key;
    const char* recv_key;
    bool ok;
    const char* why;
  } cases[] = {
      {"key", "key", true, ""},
      {"other", "key", false, "authentication failed"},
      {nullptr, "key", false, "does not authenticate"},
      {"key", nullptr, false, "stream is authenticated"},
  };
  int n = 0;
  for (const Case& c : cases) {
    const std::string dst = dir_ + "/dst" + std::to_string(n++);
    std::vector<std::string> rargs = {CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dst};
    if (c.recv_key) rargs.insert(rargs.end(), {"--psk-file", dir_ + "/" + c.recv_key});
    BackgroundProcess recv(rargs, dst + ".out", dst + ".err");
    std::vector<std::string> sargs = {"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to", Port(recv)};
    if (c.send_key) sargs.insert(sargs.end(), {"--psk-file", dir_ + "/" + c.send_key});
    ProcessResult s = Cvm(sargs);
    ProcessResult r = recv.Wait();
    if (c.ok) {
      EXPECT_EQ(s.exit_code, 0) << s.err;
      EXPECT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(Dump(dst), Dump(dir_ + "/src"));
    } else {
      EXPECT_EQ(r.exit_code, 1);
      EXPECT_NE(r.err.find(c.why), std::string::npos) << r.err;
      EXPECT_EQ(s.exit_code, 1) << s.err;
      EXPECT_EQ(Dump(dst), "") << "a refused stream left a VM";
      EXPECT_EQ(Dump(dir_ + "/src"), src_before_);
    }
  }
  // A keyed recording: recv --from-file needs the key; dump reads it without.
  const std::string stream = dir_ + "/keyed.stream";
  ASSERT_EQ(Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", stream, "--psk-file",
                 dir_ + "/key"}).exit_code, 0);
  EXPECT_EQ(Cvm({"migrate", "recv", "--from-file", stream, "--db", dir_ + "/f1"}).exit_code, 1);
  EXPECT_EQ(Cvm({"migrate", "recv", "--from-file", stream, "--db", dir_ + "/f2", "--psk-file", dir_ + "/other"}).exit_code, 1);
  EXPECT_EQ(Cvm({"migrate", "recv", "--from-file", stream, "--db", dir_ + "/f3", "--psk-file", dir_ + "/key"}).exit_code, 0);
  EXPECT_EQ(Cvm({"dump", "--stream", stream, "--format", "runs"}).out, Dump(dir_ + "/src"));
}

// Hostile peers: garbage, a byte a second, a sender that stops mid-frame, a
// reset: recv ends with exit 1 within its timeout, nothing committed.
TEST_F(CrossHostTest, HostilePeers) {
  for (int kind = 0; kind < 4; ++kind) {
    const std::string dst = dir_ + "/h" + std::to_string(kind);
    BackgroundProcess recv({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dst, "--timeout", "2"},
                           dst + ".out", dst + ".err");
    auto fd = TcpConnect(Port(recv), 5);
    ASSERT_TRUE(fd.ok());
    const auto t0 = std::chrono::steady_clock::now();
    // The hostile peer writes with MSG_NOSIGNAL: once recv has given up and
    // closed (its drain after a refusal is bounded), a write gets EPIPE
    // instead of killing this test process.
    if (kind == 0) {  // garbage
      std::string junk(100000, '\x5a');
      (void)!send(fd.value(), junk.data(), junk.size(), MSG_NOSIGNAL);
    } else if (kind == 1) {  // slow loris: a byte a second
      for (int i = 0; i < 6; ++i) {
        if (send(fd.value(), "\x10", 1, MSG_NOSIGNAL) != 1) break;
        sleep(1);
      }
    } else if (kind == 2) {  // stops in the middle of a frame
      const char partial[11] = {0x40, 0, 0, 0, 0, 0, 0, 0, 'a', 'b', 'c'};
      (void)!send(fd.value(), partial, sizeof partial, MSG_NOSIGNAL);
      sleep(4);
    } else {  // connection reset
      linger l{1, 0};
      setsockopt(fd.value(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    close(fd.value());
    ProcessResult r = recv.Wait(30);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.signal, 0);
    EXPECT_EQ(r.exit_code, 1) << "kind " << kind << ": " << r.err;
    EXPECT_LT(secs, 12) << "kind " << kind;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 2) << "one line of listening, one of error: " << r.err;
    EXPECT_EQ(Dump(dst), "");
  }
}

// A peer that keeps sending after recv has refused it (a flood of garbage)
// cannot keep recv alive: its drain is bounded in all, not per read.
TEST_F(CrossHostTest, AFloodingPeerCannotHoldRecv) {
  const std::string dst = dir_ + "/flood";
  BackgroundProcess recv({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", dst, "--timeout", "1"},
                         dst + ".out", dst + ".err");
  auto fd = TcpConnect(Port(recv), 5);
  ASSERT_TRUE(fd.ok());
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<bool> stop{false};
  std::thread flood([&] {
    const std::string junk(65536, '\x5a');
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!stop && std::chrono::steady_clock::now() < until) {
      if (send(fd.value(), junk.data(), junk.size(), MSG_NOSIGNAL) < 0) break;
    }
  });
  ProcessResult r = recv.Wait(60);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop = true;
  flood.join();
  close(fd.value());
  EXPECT_EQ(r.signal, 0);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_LT(secs, 12) << "recv outlived its deadlines while the peer kept sending";
  EXPECT_EQ(Dump(dst), "");
}

}  // namespace
}  // namespace cvmstate::testing

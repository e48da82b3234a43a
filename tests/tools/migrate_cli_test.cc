// `cvmstate migrate` against peers and files that misbehave: a destination
// that never acknowledges, FIFOs nobody writes or reads, a failed recv into
// a directory that did not exist, and VMs at the edges of what a stream
// carries (no blocks, more than 1,023 blocks, more than 4,096).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "cvmstate_test.h"
#include "migration/byte_stream.h"
#include "migration/destination.h"
#include "migration/tcp.h"

namespace cvmstate::testing {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class MigrateCliTest : public CvmstateTest {
 protected:
  // A store `db` holding VM "g" replayed from `trace_text`.
  void MakeSource(const std::string& db, const std::string& trace_text) {
    WriteFile(dir_ + "/src.trace", trace_text);
    ProcessResult r = Cvm({"replay", dir_ + "/src.trace", "--db", db, "--vm", "g", "--quiet"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string Dump(const std::string& db) {
    ProcessResult r = Cvm({"dump", "--db", db, "--vm", "g", "--format", "json"});
    return r.exit_code == 0 ? r.out : "";
  }
  // The blocks of the json dump: their runs and bytes (the rest names the
  // checkpoint's sequence and time). Empty if the dump failed.
  std::string Blocks(const std::string& db) {
    const std::string json = Dump(db);
    const size_t at = json.find("\"blocks\"");
    EXPECT_NE(at, std::string::npos) << db << ": " << json;
    return at == std::string::npos ? std::string() : json.substr(at);
  }
  std::string MakeFifo(const std::string& name) {
    const std::string path = dir_ + "/" + name;
    EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0);
    return path;
  }
};

std::string SmallTrace() { return "block ram 1G\nshared ram 0x1000 0x3000\nprivate ram 0x100000 0x200000\n"; }

// A trace of n blocks of 1 MiB, each with one shared page.
std::string ManyBlocks(int n) {
  std::string t;
  for (int i = 0; i < n; ++i) {
    // Appends, not "b" + std::to_string(i): GCC 12's -Wrestrict false
    // positive (its bug 105329) under -O3.
    const std::string name = std::to_string(i);
    t.append("block b").append(name).append(" 1M\n");
    t.append("shared b").append(name).append(" ").append(std::to_string(4096 * (i % 256))).append(" 4K\n");
  }
  return t;
}

// The destination answers with its challenge, reads everything the source
// sends and never acknowledges: the source must give up within --timeout.
TEST_F(MigrateCliTest, SendGivesUpOnADestinationThatNeverAcknowledges) {
  MakeSource(dir_ + "/src", SmallTrace());
  const std::string before = Dump(dir_ + "/src");
  std::string bound;
  auto listener = TcpListen("127.0.0.1:0", &bound);
  ASSERT_TRUE(listener.ok()) << listener.status().message();
  std::thread deaf([fd = listener.value()] {
    auto conn = TcpAccept(fd, 30);
    if (!conn.ok()) return;
    FdSink out(conn.value(), 5);
    (void)MigrationDestination::SendChallenge(&out, std::string(32, 'c'));
    char buf[4096];
    while (::read(conn.value(), buf, sizeof buf) > 0) {
    }
    ::close(conn.value());
  });
  const auto t0 = Clock::now();
  ProcessResult r = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to", bound, "--timeout", "1"});
  const double secs = SecondsSince(t0);
  deaf.join();
  ::close(listener.value());
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("no acknowledgement from the destination"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("timed out after 1 s"), std::string::npos) << r.err;
  EXPECT_LT(secs, 15);
  EXPECT_EQ(Dump(dir_ + "/src"), before) << "the source commits nothing unacknowledged";
}

TEST_F(MigrateCliTest, SendTimeoutIsAnOption) {
  MakeSource(dir_ + "/src", SmallTrace());
  for (const char* bad : {"0", "-1", "nan", "inf", "x"}) {
    ProcessResult r = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", dir_ + "/s",
                           "--timeout", bad});
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
  }
}

TEST_F(MigrateCliTest, AFifoNobodyWritesNeverHoldsRecvPastItsTimeout) {
  MakeSource(dir_ + "/src", SmallTrace());
  ASSERT_EQ(Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", dir_ + "/s"}).exit_code, 0);
  const std::string key_fifo = MakeFifo("key"), stream_fifo = MakeFifo("stream");
  struct Case {
    std::vector<std::string> args;
    const char* says;
  } cases[] = {
      {{"migrate", "recv", "--from-file", dir_ + "/s", "--db", dir_ + "/d1", "--psk-file", key_fifo, "--timeout", "1"},
       "reading the key file"},
      {{"migrate", "recv", "--from-file", stream_fifo, "--db", dir_ + "/d2", "--timeout", "1"}, "timed out after 1 s"},
  };
  for (const Case& c : cases) {
    const auto t0 = Clock::now();
    ProcessResult r = Cvm(c.args);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_LT(SecondsSince(t0), 15);
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/d1"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/d2"));
}

TEST_F(MigrateCliTest, AKeyFromAPipeIsRead) {
  // `--psk-file <(...)`: a pipe that delivers its key is fine.
  MakeSource(dir_ + "/src", SmallTrace());
  WriteFile(dir_ + "/key", std::string(32, 'k'));
  ASSERT_EQ(Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", dir_ + "/s", "--psk-file",
                 dir_ + "/key"})
                .exit_code,
            0);
  const std::string fifo = MakeFifo("keypipe");
  std::thread writer([&] {
    const int fd = ::open(fifo.c_str(), O_WRONLY);
    if (fd < 0) return;
    const std::string key(32, 'k');
    (void)!::write(fd, key.data(), key.size());
    ::close(fd);
  });
  ProcessResult r = Cvm({"migrate", "recv", "--from-file", dir_ + "/s", "--db", dir_ + "/dst", "--psk-file", fifo});
  writer.join();
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(MigrateCliTest, AFifoNobodyReadsFailsSendAtOnce) {
  MakeSource(dir_ + "/src", SmallTrace());
  const std::string before = Dump(dir_ + "/src");
  const std::string fifo = MakeFifo("out");
  const auto t0 = Clock::now();
  ProcessResult r = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", fifo, "--timeout", "1"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("a FIFO that nobody reads"), std::string::npos) << r.err;
  EXPECT_LT(SecondsSince(t0), 15);
  EXPECT_EQ(Dump(dir_ + "/src"), before);
}

// `send --to-file FIFO | recv --from-file FIFO`: a stream through a pipe,
// written within the deadline a pipe buffer at a time.
TEST_F(MigrateCliTest, AStreamThroughAFifoMigrates) {
  std::string trace = "block ram 64G initial=private\n";
  for (uint64_t i = 0; i < 20000; ++i) {
    trace.append("shared ram ").append(std::to_string((i * 7919) % 16000000 * 4096)).append(" 4K\n");
  }
  MakeSource(dir_ + "/src", trace);
  if (HasFatalFailure()) return;
  const std::string fifo = MakeFifo("pipe");
  BackgroundProcess recv({CvmstateBinary(), "migrate", "recv", "--from-file", fifo, "--db", dir_ + "/dst", "--timeout", "20"},
                         dir_ + "/recv.out", dir_ + "/recv.err");
  // recv opens its end without blocking; send needs it open to start.
  ProcessResult s;
  for (int attempt = 0; attempt < 100; ++attempt) {
    s = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", fifo, "--timeout", "20"});
    if (s.err.find("a FIFO that nobody reads") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ProcessResult r = recv.Wait(60);
  ASSERT_EQ(s.exit_code, 0) << s.err;
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Blocks(dir_ + "/dst"), Blocks(dir_ + "/src"));
}

TEST_F(MigrateCliTest, AFailedRecvLeavesNoStoreWhereThereWasNone) {
  WriteFile(dir_ + "/junk", std::string(1000, 'j'));
  ProcessResult r = Cvm({"migrate", "recv", "--from-file", dir_ + "/junk", "--db", dir_ + "/new"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/new"));
  // A directory that existed stays, as it was.
  ASSERT_TRUE(std::filesystem::create_directory(dir_ + "/old"));
  WriteFile(dir_ + "/old/mine", "kept");
  r = Cvm({"migrate", "recv", "--from-file", dir_ + "/junk", "--db", dir_ + "/old"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(ReadFile(dir_ + "/old/mine"), "kept");
}

// Whatever the store holds, the stream carries: no blocks, and more blocks
// than the FlatBuffers verifier's default table limit (1,024).
TEST_F(MigrateCliTest, VmsWithNoBlocksOrManyBlocksMigrate) {
  for (const std::string& trace : {std::string("checkpoint\n"), ManyBlocks(1023), ManyBlocks(4096)}) {
    const std::string src = dir_ + "/src" + std::to_string(trace.size());
    MakeSource(src, trace);
    const std::string stream = src + ".stream";
    ProcessResult s = Cvm({"migrate", "send", "--db", src, "--vm", "g", "--to-file", stream});
    ASSERT_EQ(s.exit_code, 0) << s.err;
    ProcessResult r = Cvm({"migrate", "recv", "--from-file", stream, "--db", src + ".dst"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "ready\n");
    EXPECT_EQ(Blocks(src), Blocks(src + ".dst")) << trace.size();
    ProcessResult d = Cvm({"dump", "--stream", stream, "--format", "json"});
    EXPECT_EQ(d.exit_code, 0) << d.err;
  }
}

// What the stream cannot carry, the source refuses before it writes or
// commits anything.
TEST_F(MigrateCliTest, AVmBeyondTheStreamsLimitsIsRefusedBeforeAnythingIsSent) {
  MakeSource(dir_ + "/src", ManyBlocks(4097));
  const std::string before = Dump(dir_ + "/src");
  ProcessResult r = Cvm({"migrate", "send", "--db", dir_ + "/src", "--vm", "g", "--to-file", dir_ + "/s"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("4097 blocks; a migration stream carries at most 4096"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/s"));
  EXPECT_EQ(Dump(dir_ + "/src"), before);
}

}  // namespace
}  // namespace cvmstate::testing

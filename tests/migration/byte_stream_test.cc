// FdSink and FdSource over real sockets and pipes: every write and every
// read ends within its deadline, whatever the peer does.
#include "migration/byte_stream.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

namespace cvmstate {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A connected socket pair or a pipe; writer() and reader() are its ends.
struct Pair {
  explicit Pair(bool socket) : socket(socket) {
    const int rc = socket ? ::socketpair(AF_UNIX, SOCK_STREAM, 0, fd) : ::pipe(fd);
    EXPECT_EQ(rc, 0);
  }
  ~Pair() {
    for (int f : fd) {
      if (f >= 0) ::close(f);
    }
  }
  int writer() const { return socket ? fd[0] : fd[1]; }
  int reader() const { return socket ? fd[1] : fd[0]; }
  const char* kind() const { return socket ? "socket" : "pipe"; }
  bool socket;
  int fd[2] = {-1, -1};
};

TEST(FdSinkTest, APeerThatStopsReadingCannotHoldTheWriter) {
  const std::string data(size_t{8} << 20, 'x');  // far more than any socket or pipe buffer
  for (bool socket : {true, false}) {
    Pair p(socket);
    FdSink sink(p.writer(), 0.5);
    const auto t0 = Clock::now();
    Status s = sink.Write(data);
    EXPECT_EQ(s.code(), Status::Code::kTimedOut) << p.kind() << ": " << s.message();
    EXPECT_NE(s.message().find("the peer stopped reading"), std::string::npos) << s.message();
    EXPECT_LT(SecondsSince(t0), 5);
  }
}

TEST(FdSinkTest, APeerThatReadsGetsEveryByteInOrder) {
  std::string data(size_t{8} << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + (i >> 12));
  for (bool socket : {true, false}) {
    Pair p(socket);
    std::string got;
    std::thread r([&] {
      FdSource in(p.reader(), 10);
      got.resize(data.size());
      EXPECT_TRUE(in.Read(got.data(), got.size()).ok());
    });
    FdSink sink(p.writer(), 10);
    EXPECT_TRUE(sink.Write(data).ok());
    r.join();
    EXPECT_TRUE(got == data) << p.kind();
  }
}

TEST(FdSourceTest, ASilentPeerTimesOut) {
  Pair p(/*socket=*/true);
  FdSource in(p.reader(), 0.3);
  char c;
  const auto t0 = Clock::now();
  Status s = in.Read(&c, 1);
  EXPECT_EQ(s.code(), Status::Code::kTimedOut) << s.message();
  EXPECT_LT(SecondsSince(t0), 5);
}

}  // namespace
}  // namespace cvmstate

// TCP endpoints: address formatting with its failures checked, and accept
// deadlines reported as timeouts.
#include "migration/tcp.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace cvmstate {
namespace {

TEST(TcpTest, FormatsIpv4AndIpv6Addresses) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(7000);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  auto s = FormatSocketAddress(reinterpret_cast<sockaddr*>(&a), sizeof a);
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s.value(), "127.0.0.1:7000");
  sockaddr_in6 b{};
  b.sin6_family = AF_INET6;
  b.sin6_port = htons(80);
  b.sin6_addr = in6addr_loopback;
  auto t = FormatSocketAddress(reinterpret_cast<sockaddr*>(&b), sizeof b);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t.value(), "[::1]:80");
}

TEST(TcpTest, AnAddressItCannotFormatIsAnErrorNotGarbage) {
  sockaddr_un u{};
  u.sun_family = AF_UNIX;
  std::strcpy(u.sun_path, "/tmp/x");
  EXPECT_FALSE(FormatSocketAddress(reinterpret_cast<sockaddr*>(&u), sizeof u).ok());
  sockaddr_in a{};
  a.sin_family = AF_INET;
  EXPECT_FALSE(FormatSocketAddress(reinterpret_cast<sockaddr*>(&a), 1).ok());  // too short
  EXPECT_FALSE(FormatSocketAddress(nullptr, 0).ok());
}

TEST(TcpTest, ListenReportsTheRealPortAndAcceptTimesOut) {
  std::string bound;
  auto l = TcpListen("127.0.0.1:0", &bound);
  ASSERT_TRUE(l.ok()) << l.status().message();
  EXPECT_EQ(bound.rfind("127.0.0.1:", 0), 0u);
  EXPECT_NE(bound, "127.0.0.1:0");
  auto a = TcpAccept(l.value(), 0.2);
  EXPECT_EQ(a.status().code(), Status::Code::kTimedOut) << a.status().message();
  EXPECT_NE(a.status().message().find("0.2 s"), std::string::npos) << a.status().message();
  close(l.value());
}

}  // namespace
}  // namespace cvmstate

// Message formatting and name rules shared by every layer.
#include "tracker/format.h"

#include <gtest/gtest.h>

#include <string>

#include "tracker/names.h"

namespace cvmstate {
namespace {

TEST(FormatTest, Hex) {
  EXPECT_EQ(Hex(0), "0x0");
  EXPECT_EQ(Hex(0x1000), "0x1000");
  EXPECT_EQ(Hex(~uint64_t{0}), "0xffffffffffffffff");
}

TEST(FormatTest, QuotedNamesStayOnOneLine) {
  EXPECT_EQ(Quoted("pc.ram"), "'pc.ram'");
  EXPECT_EQ(Quoted(std::string("a\nb", 3)), "'a\\x0ab'");
  EXPECT_EQ(Quoted(std::string("a\0b", 3)), "'a\\x00b'");  // not cut at the NUL
  EXPECT_EQ(Quoted("back\\slash"), "'back\\x5cslash'");
  const std::string q = Quoted(std::string(200, 'x'));
  EXPECT_EQ(q, "'" + std::string(80, 'x') + "...'");
  EXPECT_EQ(q.find('\n'), std::string::npos);
}

TEST(FormatTest, SecondsKeepTheirFraction) {
  EXPECT_EQ(FormatSeconds(30), "30 s");
  EXPECT_EQ(FormatSeconds(0.5), "0.5 s");
  EXPECT_EQ(FormatSeconds(1.25), "1.25 s");
}

TEST(NamesTest, BlockNamesAndVmIdsShareOneRule) {
  EXPECT_TRUE(IsValidBlockName("/objects/mem0"));
  EXPECT_FALSE(IsValidVmId("/objects/mem0"));  // a VM id has no '/'
  EXPECT_TRUE(IsValidVmId("guest-1.a_b:c"));
  EXPECT_TRUE(IsValidBlockName(std::string(64, 'a')));
  EXPECT_FALSE(IsValidBlockName(std::string(65, 'a')));
  EXPECT_TRUE(IsValidVmId(std::string(64, 'a')));
  EXPECT_FALSE(IsValidVmId(std::string(65, 'a')));
  EXPECT_FALSE(IsValidBlockName(""));
  EXPECT_FALSE(IsValidVmId(""));
  EXPECT_FALSE(IsValidBlockName("a b"));
  EXPECT_FALSE(IsValidVmId(std::string("a\0", 2)));
}

}  // namespace
}  // namespace cvmstate

namespace cvmstate {
namespace {

TEST(PrintableTest, ControlBytesBecomeEscapesSoAMessageStaysOneWholeLine) {
  EXPECT_EQ(Printable("plain 'text' \\ ok"), "plain 'text' \\ ok");
  EXPECT_EQ(Printable(std::string("a\0b\nc\r\x7f", 7)), "a\\x00b\\x0ac\\x0d\\x7f");
  EXPECT_EQ(Printable(""), "");
}

}  // namespace
}  // namespace cvmstate

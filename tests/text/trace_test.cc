#include "text/trace.h"

#include <gtest/gtest.h>

#include "text/listing.h"

namespace cvmstate {
namespace {

TEST(TraceNumberTest, Accepts) {
  struct {
    const char* in;
    uint64_t want;
  } ok[] = {
      {"0", 0},
      {"4096", 4096},
      {"0x1000", 0x1000},
      {"0X1000", 0x1000},
      {"0xaBcD", 0xabcd},
      {"2M", 2 << 20},
      {"64G", uint64_t{64} << 30},
      {"3T", uint64_t{3} << 40},
      {"4K", 4096},
      {"0K", 0},
      {"007", 7},
      {"18446744073709551615", UINT64_MAX},
      {"0xffffffffffffffff", UINT64_MAX},
      {"16777215T", uint64_t{16777215} << 40},
  };
  for (const auto& c : ok) {
    auto r = ParseTraceNumber(c.in);
    ASSERT_TRUE(r.ok()) << c.in << ": " << r.status().message();
    EXPECT_EQ(r.value(), c.want) << c.in;
  }
}

TEST(TraceNumberTest, Rejects) {
  for (const char* bad : {"", "0x", "0x-1", "-1", "+1", "1.5", "4k", "2MB", "0x10K", "K", "1KM",
                          "18446744073709551616", "0x10000000000000000", "16777216T", "99999999999T",
                          "1 2", "0b101", "1e3", "x10"}) {
    auto r = ParseTraceNumber(bad);
    EXPECT_FALSE(r.ok()) << "accepted '" << bad << "'";
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("invalid number"), std::string::npos);
    }
  }
}

Status ParseOnly(const char* line) {
  TraceDirective d;
  return ParseTraceLine(line, &d);
}

TEST(TraceLineTest, Syntax) {
  TraceDirective d;
  ASSERT_TRUE(ParseTraceLine("  # just a comment", &d).ok());
  EXPECT_EQ(d.kind, TraceDirective::Kind::kEmpty);
  ASSERT_TRUE(ParseTraceLine("", &d).ok());
  EXPECT_EQ(d.kind, TraceDirective::Kind::kEmpty);
  ASSERT_TRUE(ParseTraceLine("\tblock pc.ram\t4G initial=shared page=2M  # x", &d).ok());
  EXPECT_EQ(d.kind, TraceDirective::Kind::kBlock);
  EXPECT_EQ(d.size, uint64_t{4} << 30);
  EXPECT_EQ(d.page_size, 2u << 20);
  EXPECT_EQ(d.state, PageState::kShared);
  ASSERT_TRUE(ParseTraceLine("block b 1M", &d).ok());
  EXPECT_EQ(d.page_size, 4096u);
  EXPECT_EQ(d.state, PageState::kPrivate);
  ASSERT_TRUE(ParseTraceLine("discarded b 0x0 4K#comment", &d).ok());
  EXPECT_EQ(d.kind, TraceDirective::Kind::kConvert);
  EXPECT_EQ(d.state, PageState::kDiscarded);
  ASSERT_TRUE(ParseTraceLine("checkpoint\r", &d).ok());
  EXPECT_EQ(d.kind, TraceDirective::Kind::kCheckpoint);

  for (const char* bad : {"sharde a 0x0 0x1000", "shared a 0x0", "shared a 0x0 0x1000 extra", "shared a",
                          "block", "block a", "block a 1M page=4K page=4K", "block a 1M initial=private initial=shared",
                          "block a 1M colour=red", "block a 1M page", "block a 1M initial=secret",
                          "block a 1M initial=Shared", "block bad@name 1M", "block a 1M page=4K initial=shared x=y",
                          "checkpoint now", "SHARED a 0 4K", "shared a 0x-1 0x1000", "block big 99999999999T"}) {
    EXPECT_FALSE(ParseOnly(bad).ok()) << "accepted '" << bad << "'";
  }
}

TEST(TraceApplyTest, InvalidLinesChangeNothing) {
  VmState vm;
  TraceDirective d;
  for (const char* line : {"block a 1M", "block b 64M page=2M initial=shared", "shared a 0x0 0x1000"}) {
    ASSERT_TRUE(ParseTraceLine(line, &d).ok());
    ASSERT_TRUE(ApplyTraceDirective(d, &vm).ok()) << line;
  }
  std::string before;
  AppendRunListing(vm, &before);
  for (const char* line : {"shared a 0x800 0x1000", "private a 0x1000 0x800", "shared a 0x0 0x0",
                           "shared a 0xff000 0x2000", "shared a 0xfffffffffffff000 0x2000", "shared zz 0x0 0x1000",
                           "block a 1M", "block d 12288 page=12288", "block e 6K", "private b 0x100000 0x200000",
                           "block f 0", "block h 1M page=2048", "block g 1G page=2G"}) {
    ASSERT_TRUE(ParseTraceLine(line, &d).ok()) << line;
    Status s = ApplyTraceDirective(d, &vm);
    EXPECT_FALSE(s.ok()) << line;
    EXPECT_FALSE(s.message().empty());
    std::string after;
    AppendRunListing(vm, &after);
    EXPECT_EQ(after, before) << line;
    EXPECT_EQ(vm.num_blocks(), 2u) << line;
  }
}

}  // namespace
}  // namespace cvmstate

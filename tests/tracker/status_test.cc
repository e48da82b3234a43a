// Status and Result: distinct codes, prefixes that keep the code, and a
// checked value().
#include "tracker/status.h"

#include <gtest/gtest.h>

#include <set>

namespace cvmstate {
namespace {

TEST(StatusTest, EveryFactoryHasItsOwnCode) {
  const Status all[] = {Status::InvalidArgument("a"), Status::NotFound("b"),  Status::AlreadyExists("c"),
                        Status::Corruption("d"),      Status::IOError("e"),   Status::Refused("f"),
                        Status::TimedOut("g"),        Status::Cancelled("h")};
  std::set<Status::Code> codes;
  for (const Status& s : all) {
    EXPECT_FALSE(s.ok());
    codes.insert(s.code());
  }
  EXPECT_EQ(codes.size(), std::size(all));
  EXPECT_EQ(codes.count(Status::Code::kOk), 0u);
  EXPECT_TRUE(Status::OK().ok());
  EXPECT_EQ(Status::OK().ToString(), "ok");
}

TEST(StatusTest, WithPrefixKeepsTheCode) {
  Status s = Status::TimedOut("no frame").WithPrefix("frame 3: ");
  EXPECT_EQ(s.code(), Status::Code::kTimedOut);
  EXPECT_EQ(s.message(), "frame 3: no frame");
  EXPECT_TRUE(Status::OK().WithPrefix("x").ok());
}

TEST(ResultTest, HoldsAValueOrAnError) {
  Result<int> v(7);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v.value(), 7);
  Result<int> e(Status::NotFound("none"));
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Status::Code::kNotFound);
  // An OK status without a value is not a value either.
  Result<int> bad{Status::OK()};
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Status::Code::kInvalidArgument);
}

TEST(ResultDeathTest, ValueOfAFailedResultTerminatesWithItsMessage) {
  Result<int> e(Status::Corruption("broken record"));
  EXPECT_DEATH((void)e.value(), "value\\(\\) of a failed Result: broken record");
}

}  // namespace
}  // namespace cvmstate

// replay --db and dump as operators and scripts use them.
#include <gtest/gtest.h>

#include "process.h"

namespace cvmstate::testing {
namespace {

class StoreCliTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  ProcessResult Cvm(std::vector<std::string> args, const std::string& stdout_path = "") {
    args.insert(args.begin(), CvmstateBinary());
    ProcessOptions o;
    o.stdout_path = stdout_path;
    ProcessResult r = RunProcess(args, o);
    EXPECT_EQ(r.signal, 0);
    return r;
  }
  std::string dir_;
};

TEST_F(StoreCliTest, ReplayCommitsAndDumpShowsIt) {
  const std::string trace = dir_ + "/s.trace", db = dir_ + "/db";
  ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "64G", "--ops", "4000"}, trace).exit_code, 0);
  ProcessResult r = Cvm({"replay", trace, "--db", db, "--vm", "guest1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string text = ReadFile(trace);
  size_t checkpoints = 0;
  for (size_t p = 0; (p = text.find("\ncheckpoint\n", p)) != std::string::npos; ++p) ++checkpoints;
  size_t committed = 0;
  for (size_t p = 0; (p = r.err.find(" committed: ", p)) != std::string::npos; ++p) ++committed;
  EXPECT_EQ(committed, checkpoints + 1) << r.err;  // the end of the trace commits too
  EXPECT_NE(r.err.find("checkpoint 1 committed: "), std::string::npos);
  ProcessResult runs = Cvm({"dump", "--db", db, "--format", "runs"});
  ASSERT_EQ(runs.exit_code, 0) << runs.err;
  EXPECT_EQ(runs.out, r.out);
  ProcessResult summary = Cvm({"dump", "--db", db, "--vm", "guest1"});
  ASSERT_EQ(summary.exit_code, 0);
  EXPECT_NE(summary.out.find("/objects/mem0"), std::string::npos);
  EXPECT_NE(summary.out.find("largest shared runs"), std::string::npos);
  ProcessResult json = Cvm({"dump", "--db", db, "--format", "json"});
  ASSERT_EQ(json.exit_code, 0);
  for (const char* key : {"{\"vm\": \"guest1\"", "\"blocks\": [", "\"name\": \"pc.bios\"", "\"page_size\": 4096",
                          "\"bytes\": {\"shared\": ", "\"private\": ", "\"discarded\": "}) {
    EXPECT_NE(json.out.find(key), std::string::npos) << key;
  }
  // A second VM: dump without --vm lists them and fails.
  ASSERT_EQ(Cvm({"replay", trace, "--db", db, "--vm", "guest2", "--quiet"}).exit_code, 0);
  ProcessResult two = Cvm({"dump", "--db", db});
  EXPECT_EQ(two.exit_code, 1);
  EXPECT_NE(two.err.find("guest1, guest2"), std::string::npos) << two.err;
  ProcessResult missing = Cvm({"dump", "--db", db, "--vm", "nope"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("no checkpoint of VM 'nope'"), std::string::npos);
  ProcessResult nodir = Cvm({"dump", "--db", dir_ + "/nothing-here"});
  EXPECT_EQ(nodir.exit_code, 1);
  EXPECT_EQ(Cvm({"replay", trace, "--db", db}).exit_code, 2);           // --db needs --vm
  EXPECT_EQ(Cvm({"replay", trace, "--db", db, "--vm", "a/b"}).exit_code, 2);
  EXPECT_EQ(Cvm({"replay", trace, "--db", db, "--vm", "x", "--impl", "icl"}).exit_code, 2);
}

TEST_F(StoreCliTest, InvalidLinesNeverReachTheStore) {
  const std::string trace = dir_ + "/bad.trace", db = dir_ + "/db";
  WriteFile(trace, "block a 1M\nshared a 0 4K\ncheckpoint\nshared a 0x800 4K\ncheckpoint\n");
  ProcessResult stop = Cvm({"replay", trace, "--db", db, "--vm", "v"});
  EXPECT_EQ(stop.exit_code, 1);
  EXPECT_NE(stop.err.find("checkpoint 1 committed"), std::string::npos);
  EXPECT_EQ(Cvm({"dump", "--db", db, "--format", "runs"}).out, "a 0x0 0x1000 shared\na 0x1000 0xff000 private\n");
}

}  // namespace
}  // namespace cvmstate::testing

// replay --db and dump as operators and scripts use them.
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>

#include "cvmstate_test.h"

namespace cvmstate::testing {
namespace {

class StoreCliTest : public CvmstateTest {};

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

namespace cvmstate::testing {
namespace {

// The memory map: well-formed SVG with the three colours, a legend and
// ticks, and it draws (rsvg-convert, when installed).
TEST_F(StoreCliTest, SvgMemoryMapIsWellFormedAndDraws) {
  struct Case {
    const char* name;
    std::string trace;
  };
  const std::string big = dir_ + "/big.trace";
  ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "1T", "--ops", "50000"}, big).exit_code, 0);
  WriteFile(dir_ + "/small.trace", "block tiny 4M\nshared tiny 0x1000 0x1000\ndiscarded tiny 0x200000 0x1000\n");
  for (const char* name : {"big", "small"}) {
    const std::string db = dir_ + "/" + name + ".db", svg = dir_ + "/" + name + ".svg";
    ASSERT_EQ(Cvm({"replay", dir_ + "/" + name + ".trace", "--db", db, "--vm", "v", "--quiet"}).exit_code, 0);
    ProcessResult r = Cvm({"dump", "--db", db, "--format", "svg", "--out", svg});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string text = ReadFile(svg);
    ASSERT_EQ(text.rfind("<?xml", 0), 0u);
    EXPECT_NE(text.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
    EXPECT_EQ(text.substr(text.size() - 7), "</svg>\n");
    // Balanced groups, every element closed.
    size_t open_g = 0, close_g = 0;
    for (size_t p = 0; (p = text.find("<g>", p)) != std::string::npos; ++p) ++open_g;
    for (size_t p = 0; (p = text.find("</g>", p)) != std::string::npos; ++p) ++close_g;
    EXPECT_EQ(open_g, close_g);
    EXPECT_GT(open_g, 0u);
    for (const char* colour : {"#e8590c", "#1c7ed6", "#ced4da"}) EXPECT_NE(text.find(colour), std::string::npos) << colour;
    EXPECT_NE(text.find(">shared</text>"), std::string::npos);
    // The single shared page of 4 MiB and the ones in 1 TiB stay visible:
    // at least one shared rectangle per block that has shared pages.
    EXPECT_NE(text.find("fill=\"#e8590c\"/>"), std::string::npos);
    if (system("command -v rsvg-convert >/dev/null 2>&1") == 0) {
      const std::string png = dir_ + "/" + name + ".png";
      ASSERT_EQ(system(("rsvg-convert -o " + png + " " + svg).c_str()), 0) << "rsvg-convert failed on " << name;
      EXPECT_EQ(ReadFile(png).substr(1, 3), "PNG");
    }
  }
  EXPECT_GT(ReadFile(dir_ + "/big.svg").size(), ReadFile(dir_ + "/small.svg").size());
}

TEST_F(StoreCliTest, DeleteIsTheWayOutOfTheTwoGeneralsWindow) {
  const std::string trace = dir_ + "/s.trace", db = dir_ + "/db", src = dir_ + "/src", stream = dir_ + "/s.stream";
  ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "16G", "--ops", "1000"}, trace).exit_code, 0);
  ASSERT_EQ(Cvm({"replay", trace, "--db", src, "--vm", "g", "--quiet"}).exit_code, 0);
  ASSERT_EQ(Cvm({"replay", trace, "--db", db, "--vm", "other", "--quiet"}).exit_code, 0);
  ASSERT_EQ(Cvm({"migrate", "send", "--db", src, "--vm", "g", "--to-file", stream}).exit_code, 0);
  // A destination that committed g and then lost the acknowledgement: every
  // retry is refused until the operator deletes g.
  ASSERT_EQ(Cvm({"migrate", "recv", "--from-file", stream, "--db", db}).exit_code, 0);
  ProcessResult again = Cvm({"migrate", "recv", "--from-file", stream, "--db", db});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("already exists"), std::string::npos) << again.err;
  // Refused while another process holds the store for writing.
  {
    BackgroundProcess holder({CvmstateBinary(), "migrate", "recv", "--listen", "127.0.0.1:0", "--db", db, "--timeout", "30"},
                             dir_ + "/holder.out", dir_ + "/holder.err");
    ASSERT_TRUE(holder.WaitForStderr("listening on", 20000)) << holder.Stderr();
    ProcessResult busy = Cvm({"delete", "--db", db, "--vm", "g"});
    EXPECT_EQ(busy.exit_code, 1);
    EXPECT_NE(busy.err.find("in use by another process"), std::string::npos) << busy.err;
    EXPECT_EQ(std::count(busy.err.begin(), busy.err.end(), '\n'), 1) << busy.err;
    holder.Kill(SIGKILL);
  }
  EXPECT_EQ(Cvm({"dump", "--db", db, "--vm", "g", "--format", "runs"}).exit_code, 0);  // still there
  ProcessResult del = Cvm({"delete", "--db", db, "--vm", "g"});
  ASSERT_EQ(del.exit_code, 0) << del.err;
  ProcessResult gone = Cvm({"dump", "--db", db, "--vm", "g"});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_NE(gone.err.find("no checkpoint of VM 'g'"), std::string::npos) << gone.err;
  // Only g went: the other VM is intact, and the retry now succeeds.
  EXPECT_EQ(Cvm({"dump", "--db", db, "--vm", "other", "--format", "runs"}).out, Cvm({"replay", trace}).out);
  ASSERT_EQ(Cvm({"migrate", "recv", "--from-file", stream, "--db", db}).exit_code, 0);
  EXPECT_EQ(Cvm({"dump", "--db", db, "--vm", "g", "--format", "runs"}).out,
            Cvm({"dump", "--db", src, "--vm", "g", "--format", "runs"}).out);
  // Nothing to delete, no store, bad arguments.
  ProcessResult missing = Cvm({"delete", "--db", db, "--vm", "nope"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("no checkpoint of VM 'nope'"), std::string::npos) << missing.err;
  ProcessResult nostore = Cvm({"delete", "--db", dir_ + "/absent", "--vm", "g"});
  EXPECT_EQ(nostore.exit_code, 1);
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/absent"));
  EXPECT_EQ(Cvm({"delete", "--db", db, "--vm", "a/b"}).exit_code, 2);
  EXPECT_EQ(Cvm({"delete", "--db", "", "--vm", "g"}).exit_code, 2);
  EXPECT_EQ(Cvm({"delete", "--db", db}).exit_code, 2);
}

TEST_F(StoreCliTest, ErrorMessagesStayOneWholeLine) {
  // A name with a newline and a NUL must neither split the message nor cut it.
  const std::string odd = dir_ + "/odd\nname";
  ProcessResult r = Cvm({"replay", odd + ".trace"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("odd\\x0aname.trace"), std::string::npos) << r.err;
  const std::string trace = dir_ + "/nul.trace";
  WriteFile(trace, std::string("block a\0b 4K\n", 13));
  ProcessResult n = Cvm({"replay", trace});
  EXPECT_EQ(n.exit_code, 1);
  EXPECT_NE(n.err.find("'a\\x00b'"), std::string::npos) << n.err;
  EXPECT_EQ(n.err.back(), '\n');
}

TEST_F(StoreCliTest, EmptyStoreNamesAreUsageErrors) {
  const std::string trace = dir_ + "/t.trace";
  WriteFile(trace, "block a 1M\nshared a 0 4K\n");
  // Before, --db "" ran without a store and exited 0: nothing was committed.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"replay", trace, "--db", "", "--vm", "v"},
        std::vector<std::string>{"replay", trace, "--db", dir_ + "/db", "--vm", ""},
        std::vector<std::string>{"dump", "--db", ""}, std::vector<std::string>{"dump", "--stream", ""}}) {
    ProcessResult r = Cvm(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[2] << "\n" << r.err;
    EXPECT_NE(r.err.find("usage error"), std::string::npos) << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/db"));
}

}  // namespace
}  // namespace cvmstate::testing

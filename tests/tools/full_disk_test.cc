// A store on a nearly full disk: a real tmpfs of a few MiB, filled to leave
// a few KiB. Needs root to mount; skips cleanly otherwise.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "cvmstate_test.h"

namespace cvmstate::testing {
namespace {

class FullDiskTest : public CvmstateTest {
 protected:
  void SetUp() override {
    CvmstateTest::SetUp();
    if (geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
    mnt_ = dir_ + "/mnt";
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    if (mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=8m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) umount2(mnt_.c_str(), MNT_DETACH);
  }
  // Fills the file system to leave about `free_bytes`.
  void FillLeaving(uint64_t free_bytes) {
    unlink((mnt_ + "/fill").c_str());
    struct statvfs v;
    ASSERT_EQ(statvfs(mnt_.c_str(), &v), 0);
    const uint64_t avail = uint64_t{v.f_bavail} * v.f_frsize;
    if (avail <= free_bytes) return;
    const int fd = open((mnt_ + "/fill").c_str(), O_WRONLY | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fallocate(fd, 0, 0, static_cast<off_t>(avail - free_bytes)), 0) << std::strerror(errno);
    close(fd);
  }
  std::string mnt_;
  bool mounted_ = false;
};

// Exit 0, or exit 1 with exactly one line; never a signal (Cvm checks).
void ExpectCleanOutcome(const ProcessResult& r, const std::string& what) {
  ASSERT_TRUE(r.exit_code == 0 || r.exit_code == 1) << what << ": exit " << r.exit_code << "\n" << r.err;
  if (r.exit_code == 1) {
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << what << ":\n" << r.err;
    EXPECT_EQ(r.err.rfind("cvmstate: error: ", 0), 0u) << what << ":\n" << r.err;
  }
}

TEST_F(FullDiskTest, NearlyFullDiskFailsCleanlyAndKeepsTheLastCheckpoint) {
  const std::string base = dir_ + "/base.trace", more = dir_ + "/more.trace", db = mnt_ + "/db";
  ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "16G", "--ops", "2000", "--seed", "5"}, base).exit_code, 0);
  ASSERT_EQ(Cvm({"gen", "--profile", "steady", "--size", "16G", "--ops", "4000", "--seed", "5"}, more).exit_code, 0);
  {
    // One commit at the end only, so the store holds one state or the other.
    std::string text = ReadFile(more), kept;
    for (size_t p = 0, e; p < text.size(); p = e + 1) {
      e = text.find('\n', p);
      if (e == std::string::npos) e = text.size();
      if (text.compare(p, e - p, "checkpoint") != 0) kept += text.substr(p, e - p) + "\n";
    }
    WriteFile(more, kept);
  }
  ASSERT_EQ(Cvm({"replay", base, "--db", db, "--vm", "g", "--quiet"}).exit_code, 0);
  const std::string before = Cvm({"dump", "--db", db, "--vm", "g", "--format", "runs"}).out;
  ASSERT_FALSE(before.empty());
  const std::string after = Cvm({"replay", more}).out;  // what a successful replay commits
  const std::string stream = dir_ + "/s.stream";
  {
    // A stream to receive into the full disk (made from a store elsewhere).
    const std::string src = dir_ + "/src";
    ASSERT_EQ(Cvm({"replay", base, "--db", src, "--vm", "m", "--quiet"}).exit_code, 0);
    ASSERT_EQ(Cvm({"migrate", "send", "--db", src, "--vm", "m", "--to-file", stream}).exit_code, 0);
  }
  int failures = 0;
  std::string last = before;
  for (uint64_t free_kib : {0, 4, 8, 12, 16, 24, 32, 64}) {
    SCOPED_TRACE("free KiB: " + std::to_string(free_kib));
    FillLeaving(free_kib << 10);
    ProcessResult r = Cvm({"replay", more, "--db", db, "--vm", "g", "--quiet"});
    ExpectCleanOutcome(r, "replay --db");
    failures += r.exit_code != 0;
    ProcessResult recv = Cvm({"migrate", "recv", "--from-file", stream, "--db", db});
    ExpectCleanOutcome(recv, "migrate recv");
    unlink((mnt_ + "/fill").c_str());
    // The store holds the last committed state of g: the new one after a
    // success, what it held before after a failure.
    ProcessResult d = Cvm({"dump", "--db", db, "--vm", "g", "--format", "runs"});
    ASSERT_EQ(d.exit_code, 0) << d.err;
    EXPECT_EQ(d.out, r.exit_code == 0 ? after : last);
    last = d.out;
    // A failed recv leaves no part of m.
    ProcessResult m = Cvm({"dump", "--db", db, "--vm", "m", "--format", "runs"});
    if (recv.exit_code != 0) {
      EXPECT_EQ(m.exit_code, 1) << m.out;
    }
    if (m.exit_code == 0) {
      ASSERT_EQ(Cvm({"delete", "--db", db, "--vm", "m"}).exit_code, 0);
    }
  }
  EXPECT_GT(failures, 0) << "the disk was never full enough to refuse a commit";
}

}  // namespace
}  // namespace cvmstate::testing

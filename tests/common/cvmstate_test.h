// A test fixture for tests that run the cvmstate program: a fresh
// directory per test, and Cvm() that runs the binary and insists it did not
// die by a signal.
#ifndef CVMSTATE_TESTS_COMMON_CVMSTATE_TEST_H_
#define CVMSTATE_TESTS_COMMON_CVMSTATE_TEST_H_

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "process.h"

namespace cvmstate::testing {

class CvmstateTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir(); }
  ProcessResult Cvm(std::vector<std::string> args, const std::string& stdout_path = "") {
    ProcessResult r = RunCvmstate(std::move(args), stdout_path);
    EXPECT_EQ(r.signal, 0) << "cvmstate died by a signal";
    EXPECT_FALSE(r.timed_out);
    return r;
  }
  std::string dir_;
};

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_COMMON_CVMSTATE_TEST_H_

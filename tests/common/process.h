// Runs a real child process for the CLI and cross-process tests.
#ifndef CVMSTATE_TESTS_COMMON_PROCESS_H_
#define CVMSTATE_TESTS_COMMON_PROCESS_H_

#include <string>
#include <vector>

namespace cvmstate::testing {

struct ProcessResult {
  int exit_code = -1;     // valid when !signaled
  int signal = 0;         // the signal that ended it, or 0
  bool timed_out = false;
  std::string out, err;
  long max_rss_kb = 0;    // peak resident memory of the child
};

struct ProcessOptions {
  std::string stdin_data;
  std::string stdout_path;  // when set, stdout goes to this file instead of a pipe
  int timeout_seconds = 120;
};

// Runs argv[0] with argv, waits for it (killing it with SIGKILL after the
// timeout), and returns what it printed and how it ended.
ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessOptions& opts = {});

// The cvmstate binary under test and a fresh empty directory for a test.
std::string CvmstateBinary();
std::string MakeTempDir();
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_COMMON_PROCESS_H_

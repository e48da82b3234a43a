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

// A child running in the background, its output going to files.
class BackgroundProcess {
 public:
  // Starts argv; stdout and stderr go to out_path and err_path.
  BackgroundProcess(const std::vector<std::string>& argv, const std::string& out_path, const std::string& err_path);
  ~BackgroundProcess();  // kills it if still running
  // Waits for it to end (killing it with SIGKILL after timeout_seconds).
  ProcessResult Wait(int timeout_seconds = 120);
  void Kill(int sig);
  // Polls err_path until it contains `text` or the timeout passes.
  bool WaitForStderr(const std::string& text, int timeout_ms);
  std::string Stderr() const;

 private:
  int pid_ = -1;
  std::string out_, err_;
};

// Runs the cvmstate binary under test with args (stdout to a file if
// stdout_path is set).
ProcessResult RunCvmstate(std::vector<std::string> args, const std::string& stdout_path = "");

// The cvmstate binary under test and a fresh empty directory for a test.
std::string CvmstateBinary();
std::string MakeTempDir();
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_COMMON_PROCESS_H_

#include "process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace cvmstate::testing {

ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessOptions& opts) {
  ProcessResult res;
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) throw std::runtime_error("pipe");
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork");
  if (pid == 0) {
    dup2(in[0], 0);
    if (!opts.stdout_path.empty()) {
      int fd = open(opts.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) _exit(127);
      dup2(fd, 1);
    } else {
      dup2(out[1], 1);
    }
    dup2(err[1], 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  // Feed stdin from here; the child's output is drained by poll below.
  size_t written = 0;
  int infd = in[1];
  if (opts.stdin_data.empty()) {
    close(infd);
    infd = -1;
  } else {
    fcntl(infd, F_SETFL, O_NONBLOCK);
  }
  timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    pollfd fds[3];
    int n = 0;
    if (out_open) fds[n++] = {out[0], POLLIN, 0};
    if (err_open) fds[n++] = {err[0], POLLIN, 0};
    if (infd >= 0) fds[n++] = {infd, POLLOUT, 0};
    int r = poll(fds, n, 200);
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec - start.tv_sec > opts.timeout_seconds) {
      kill(pid, SIGKILL);
      res.timed_out = true;
      break;
    }
    if (r <= 0) continue;
    for (int i = 0; i < n; ++i) {
      if (fds[i].fd == infd && (fds[i].revents & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t w = write(infd, opts.stdin_data.data() + written, opts.stdin_data.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if (w < 0 && errno != EAGAIN) written = opts.stdin_data.size();
        if (written == opts.stdin_data.size()) {
          close(infd);
          infd = -1;
        }
        continue;
      }
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[65536];
      ssize_t got = read(fds[i].fd, buf, sizeof buf);
      std::string& dst = fds[i].fd == out[0] ? res.out : res.err;
      if (got > 0) {
        dst.append(buf, static_cast<size_t>(got));
      } else {
        (fds[i].fd == out[0] ? out_open : err_open) = false;
      }
    }
  }
  if (infd >= 0) close(infd);
  close(out[0]);
  close(err[0]);
  int status = 0;
  rusage ru{};
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  res.max_rss_kb = ru.ru_maxrss;
  if (WIFSIGNALED(status)) {
    res.signal = WTERMSIG(status);
  } else {
    res.exit_code = WEXITSTATUS(status);
  }
  return res;
}

BackgroundProcess::BackgroundProcess(const std::vector<std::string>& argv, const std::string& out_path,
                                     const std::string& err_path)
    : out_(out_path), err_(err_path) {
  pid_ = fork();
  if (pid_ < 0) throw std::runtime_error("fork");
  if (pid_ == 0) {
    int o = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int in = open("/dev/null", O_RDONLY);
    if (o < 0 || e < 0 || in < 0) _exit(127);
    dup2(in, 0);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
}

BackgroundProcess::~BackgroundProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

void BackgroundProcess::Kill(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

ProcessResult BackgroundProcess::Wait(int timeout_seconds) {
  ProcessResult res;
  int status = 0;
  rusage ru{};
  for (int waited_ms = 0;; waited_ms += 10) {
    pid_t r = wait4(pid_, &status, WNOHANG, &ru);
    if (r == pid_) break;
    if (waited_ms >= timeout_seconds * 1000) {
      kill(pid_, SIGKILL);
      res.timed_out = true;
      wait4(pid_, &status, 0, &ru);
      break;
    }
    usleep(10000);
  }
  pid_ = -1;
  res.max_rss_kb = ru.ru_maxrss;
  if (WIFSIGNALED(status)) {
    res.signal = WTERMSIG(status);
  } else {
    res.exit_code = WEXITSTATUS(status);
  }
  res.out = ReadFile(out_);
  res.err = ReadFile(err_);
  return res;
}

bool BackgroundProcess::WaitForStderr(const std::string& text, int timeout_ms) {
  for (int t = 0; t < timeout_ms; t += 10) {
    if (ReadFile(err_).find(text) != std::string::npos) return true;
    usleep(10000);
  }
  return false;
}

std::string BackgroundProcess::Stderr() const { return ReadFile(err_); }

std::string CvmstateBinary() { return CVMSTATE_BINARY; }

ProcessResult RunCvmstate(std::vector<std::string> args, const std::string& stdout_path) {
  args.insert(args.begin(), CvmstateBinary());
  ProcessOptions o;
  o.stdout_path = stdout_path;
  return RunProcess(args, o);
}

std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/cvmstate-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp");
  return tmpl;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

}  // namespace cvmstate::testing

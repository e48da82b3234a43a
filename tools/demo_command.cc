// cvmstate demo [--dir DIR]: the main job end to end, with figures.
//
// A confidential VM (1 TiB, four blocks) converts pages with a DMA-mapping
// and a memory-attribute listener attached, checkpoints to a RocksDB store,
// then migrates live over loopback TCP to a destination process (this
// program's `migrate recv`) while it keeps converting; the destination
// rebuilds its DMA mappings before "resuming". Exit 0 only if the
// destination's committed state equals the source's.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "cvmstate/checkpoint_store.h"
#include "cvmstate/kvm_attr_sim.h"
#include "cvmstate/migration.h"
#include "cvmstate/state_digest.h"
#include "cvmstate/trace.h"
#include "cvmstate/vfio_sim.h"
#include "output.h"
#include "workload.h"

namespace cvmstate::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct DemoOptions {
  std::string dir;
};

std::string Bytes(double b) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, kUnits[u]);
  return buf;
}

double Ms(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Progress on a terminal; nothing extra in pipes and CI logs.
class Progress {
 public:
  explicit Progress(const char* what) : what_(what), tty_(isatty(STDOUT_FILENO)) {}
  void Update(size_t done, size_t total) {
    if (!tty_ || total == 0 || (done % 4096 != 0 && done != total)) return;
    const int width = 30, filled = static_cast<int>(width * done / total);
    std::printf("\r  %-28s [%s%s] %3zu%%", what_, std::string(filled, '#').c_str(),
                std::string(width - filled, ' ').c_str(), 100 * done / total);
    if (done == total) std::printf("\r%*s\r", 80, "");
    std::fflush(stdout);
  }

 private:
  const char* what_;
  bool tty_;
};

// The conversions of a generated trace, parsed once.
std::vector<TraceDirective> Directives(const std::string& trace) {
  std::vector<TraceDirective> out;
  size_t pos = 0;
  while (pos < trace.size()) {
    size_t nl = trace.find('\n', pos);
    if (nl == std::string::npos) nl = trace.size();
    TraceDirective d;
    if (ParseTraceLine(std::string_view(trace).substr(pos, nl - pos), &d).ok() && d.kind != TraceDirective::Kind::kEmpty) {
      out.push_back(std::move(d));
    }
    pos = nl + 1;
  }
  return out;
}

// The destination host: this program's `migrate recv` in a child process.
class Destination {
 public:
  Status Start(const std::string& db) {
    int err[2], out[2];
    if (pipe(err) != 0 || pipe(out) != 0) return Status::IOError("pipe failed");
    pid_ = fork();
    if (pid_ < 0) return Status::IOError("fork failed");
    if (pid_ == 0) {
      dup2(out[1], 1);
      dup2(err[1], 2);
      close(err[0]);
      close(out[0]);
      execl("/proc/self/exe", "cvmstate", "migrate", "recv", "--listen", "127.0.0.1:0", "--db", db.c_str(), "--timeout",
            "30", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(err[1]);
    close(out[1]);
    err_ = err[0];
    out_ = out[0];
    // Its first line says where it listens.
    std::string line;
    while (ReadLine(err_, &line, 10000)) {
      if (line.rfind("recv: listening on ", 0) == 0) {
        port_ = line.substr(19);
        return Status::OK();
      }
    }
    return Status::IOError("the destination did not start listening");
  }
  const std::string& address() const { return port_; }
  // Waits for it to end; collects its stdout and stderr.
  int Wait(std::string* out, std::string* err) {
    std::string line;
    while (ReadLine(out_, &line, 60000)) *out += line + "\n";
    while (ReadLine(err_, &line, 60000)) *err += line + "\n";
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  ~Destination() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (err_ >= 0) close(err_);
    if (out_ >= 0) close(out_);
  }

 private:
  static bool ReadLine(int fd, std::string* line, int timeout_ms) {
    line->clear();
    char c;
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, timeout_ms) <= 0) return false;
      if (read(fd, &c, 1) != 1) return !line->empty();
      if (c == '\n') return true;
      line->push_back(c);
    }
  }
  pid_t pid_ = -1;
  int err_ = -1, out_ = -1;
  std::string port_;
};

int RunDemo(const DemoOptions& o) {
  constexpr uint64_t kGuest = uint64_t{1} << 40;
  constexpr uint64_t kOps = 100000, kLiveOps = 10000;
  std::string dir = o.dir;
  bool temporary = false;
  if (dir.empty()) {
    std::string tmpl = (std::getenv("TMPDIR") ? std::string(std::getenv("TMPDIR")) : std::string("/tmp")) + "/cvmstate-demo-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) return Fail("cannot create a temporary directory");
    dir = tmpl;
    temporary = true;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (std::filesystem::exists(dir + "/source") || std::filesystem::exists(dir + "/destination")) {
    return Fail("'" + dir + "' already holds a demo; pass an empty --dir");
  }
  std::printf("cvmstate demo: a 1 TiB confidential VM (TDX/SNP-like) in %s\n\n", dir.c_str());

  // 1. The guest boots and runs: conversions with listeners attached.
  std::string trace;
  Status s = GenerateWorkload("steady", kGuest, 2026, kOps, &trace);
  if (!s.ok()) return Fail(s.message());
  std::vector<TraceDirective> ops = Directives(trace);
  VmState vm;
  VfioContainer vfio(VfioContainer::Mode::kExtent, 65535);
  std::vector<std::unique_ptr<DmaMappingListener>> dma;
  std::vector<std::unique_ptr<KvmAttributeSim>> kvm;
  auto store = CheckpointStore::Open(dir + "/source");
  if (!store.ok()) return Fail(store.status().message());
  VmCheckpointer checkpointer(store.value().get(), "guest1");
  uint64_t conversions = 0, checkpoints = 0, checkpoint_bytes = 0, first_checkpoint = 0;
  Progress progress("running the guest");
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ops.size(); ++i) {
    const TraceDirective& d = ops[i];
    if (d.kind == TraceDirective::Kind::kBlock) {
      s = vm.AddBlock(d.name, d.size, d.page_size, d.state);
      if (s.ok()) {
        BlockTracker* b = vm.Find(d.name);
        dma.push_back(vfio.MakeListener(d.name, d.page_size));
        kvm.push_back(std::make_unique<KvmAttributeSim>());
        s = b->RegisterListener(dma.back().get(), 0, b->size());
        if (s.ok()) s = b->RegisterListener(kvm.back().get(), 0, b->size());
      }
    } else if (d.kind == TraceDirective::Kind::kConvert) {
      s = vm.Find(d.name)->Convert(d.offset, d.size, d.state);
      ++conversions;
    } else if (d.kind == TraceDirective::Kind::kCheckpoint) {
      auto c = checkpointer.CommitState(vm);
      if (!c.ok()) return Fail(c.status().message());
      ++checkpoints;
      checkpoint_bytes = c->bytes;
      if (first_checkpoint == 0) first_checkpoint = c->bytes;
    }
    if (!s.ok()) return Fail("demo workload: " + s.message());
    progress.Update(i + 1, ops.size());
  }
  const double run_ms = Ms(t0);
  uint64_t pages = 0, runs = 0, shared_pages = 0, shared_runs = 0;
  std::printf("  %" PRIu64 " conversions in %.0f ms (%.0f ns each, DMA and memory-attribute listeners attached)\n",
              conversions, run_ms, run_ms * 1e6 / static_cast<double>(conversions));
  std::printf("\n  %-16s %10s %12s %12s %12s %8s\n", "block", "size", "shared", "private", "discarded", "runs");
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const uint64_t r = b.CountRuns();
    std::printf("  %-16s %10s %12s %12s %12s %8" PRIu64 "\n", b.name().c_str(), Bytes(static_cast<double>(b.size())).c_str(),
                Bytes(static_cast<double>(b.BytesIn(PageState::kShared))).c_str(),
                Bytes(static_cast<double>(b.BytesIn(PageState::kPrivate))).c_str(),
                Bytes(static_cast<double>(b.BytesIn(PageState::kDiscarded))).c_str(), r);
    pages += b.size() >> b.page_shift();
    runs += r;
    shared_pages += b.BytesIn(PageState::kShared) >> b.page_shift();
    b.map().ForEachRunOf(PageState::kShared, 0, b.size() >> b.page_shift(), [&](uint64_t, uint64_t) { ++shared_runs; });
  }
  const double mem = static_cast<double>(vm.MemoryBytes());
  std::printf("\n  page-state memory for %" PRIu64 " runs:\n", runs);
  std::printf("    cvmstate run map   %10s  (%.1f bytes a run)\n", Bytes(mem).c_str(), mem / static_cast<double>(runs));
  std::printf("    1-bit bitmap       %10s  (QEMU today; cannot tell private from discarded)\n",
              Bytes(static_cast<double>(pages) / 8).c_str());
  std::printf("    2-bit bitmap       %10s  (%.0fx the run map)\n", Bytes(static_cast<double>(pages) / 4).c_str(),
              static_cast<double>(pages) / 4 / mem);
  std::printf("\n  DMA mappings for %s of shared memory:\n", Bytes(static_cast<double>(shared_pages * 4096)).c_str());
  std::printf("    extent mode (one per section) %8" PRIu64 " live, peak %" PRIu64 "  (type1 limit 65535)\n",
              vfio.stats().mappings, vfio.stats().peak);
  std::printf("    per-page mapping (QEMU today) %8" PRIu64 "  -> %.0fx more, %s the limit\n", shared_pages,
              static_cast<double>(shared_pages) / static_cast<double>(std::max<uint64_t>(1, shared_runs)),
              shared_pages > 65535 ? "over" : "under");
  std::printf("\n  %" PRIu64 " synced checkpoints to RocksDB, one every %" PRIu64 " conversions: first %s, last %s\n"
              "    (a zstd run-length record per changed 512 MiB chunk, plus a manifest)\n",
              checkpoints, kOps / 8, Bytes(static_cast<double>(first_checkpoint)).c_str(),
              Bytes(static_cast<double>(checkpoint_bytes)).c_str());

  // 2. Live migration to a destination process while the guest converts.
  for (size_t i = 0; i < vm.num_blocks(); ++i) {  // the source's listeners stay with the source host
    (void)vm.block(i).UnregisterListener(dma[i].get());
    (void)vm.block(i).UnregisterListener(kvm[i].get());
  }
  auto c = checkpointer.CommitState(vm);
  if (!c.ok()) return Fail(c.status().message());
  std::string live_trace;
  s = GenerateWorkload("steady", kGuest, 7, kLiveOps, &live_trace);
  if (!s.ok()) return Fail(s.message());
  std::vector<TraceDirective> live;
  for (auto& d : Directives(live_trace)) {
    if (d.kind == TraceDirective::Kind::kConvert) live.push_back(std::move(d));
  }
  Destination dest;
  s = dest.Start(dir + "/destination");
  if (!s.ok()) return Fail(s.message());
  std::printf("\n  live migration to a destination process listening on %s:\n", dest.address().c_str());
  auto fd = TcpConnect(dest.address(), 10);
  if (!fd.ok()) return Fail(fd.status().message());
  FdSink sink(fd.value());
  MigrationSource src(&vm, "guest1", &sink);
  FdSource challenge(fd.value(), 30);
  auto nonce = MigrationSource::ReadChallenge(&challenge);
  s = nonce.ok() ? src.Begin(nonce.value()) : nonce.status();
  constexpr int kRounds = 3;
  for (int r = 0; s.ok() && r < kRounds; ++r) {
    for (size_t i = live.size() * r / kRounds; i < live.size() * (r + 1) / kRounds; ++i) {
      s = vm.Find(live[i].name)->Convert(live[i].offset, live[i].size, live[i].state);
      if (!s.ok()) break;
    }
    if (!s.ok()) break;
    auto round = r + 1 == kRounds ? src.Finish() : src.SendRound();
    if (!round.ok()) s = round.status();
  }
  if (s.ok()) {
    FdSource back(fd.value(), 60);
    s = src.AwaitAck(&back);
  }
  close(fd.value());
  std::string dest_out, dest_err;
  const int dest_rc = dest.Wait(&dest_out, &dest_err);
  if (!s.ok() || dest_rc != 0) {
    return Fail("migration failed: " + (s.ok() ? dest_err : s.message()));
  }
  for (const RoundStats& r : src.rounds()) {
    std::printf("    round %u %-18s %6" PRIu64 " runs %10s\n", r.round,
                r.round == 0 ? "(full state)" : r.round + 1 == src.rounds().size() ? "(stop-and-copy)" : "(pre-copy)", r.runs,
                Bytes(static_cast<double>(r.bytes)).c_str());
  }
  std::printf("    total %s on the wire, against %s for a 2-bit bitmap (%.0fx less)\n",
              Bytes(static_cast<double>(src.total_bytes())).c_str(), Bytes(static_cast<double>(pages) / 4).c_str(),
              static_cast<double>(pages) / 4 / static_cast<double>(src.total_bytes()));
  const size_t at = dest_err.find("downtime ");
  std::printf("    destination: verified, committed, DMA mappings and memory attributes rebuilt; %s",
              at == std::string::npos ? "\n" : (dest_err.substr(at, dest_err.find('\n', at) - at) + "\n").c_str());
  std::printf("    destination says: %s", dest_out.c_str());
  auto final_commit = store.value()->CommitFull("guest1", vm, c->sequence + 1);
  if (!final_commit.ok()) return Fail(final_commit.status().message());

  // 3. The verdict: the destination's committed state against the source's.
  auto dst_store = CheckpointStore::Open(dir + "/destination", /*read_only=*/true);
  if (!dst_store.ok()) return Fail(dst_store.status().message());
  auto dst = dst_store.value()->Load("guest1");
  if (!dst.ok()) return Fail(dst.status().message());
  const bool same = ComputeStateDigest(dst.value()) == ComputeStateDigest(vm);
  std::printf("\n  verdict: %s\n", same ? "the destination's state equals the source's, page for page: OK"
                                       : "MISMATCH between destination and source");
  if (temporary) {
    std::filesystem::remove_all(dir, ec);
  } else {
    std::printf("  inspect: cvmstate dump --db %s/destination --format svg --out map.svg\n", dir.c_str());
  }
  return same ? 0 : 1;
}

}  // namespace

void AddDemoCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* sub = app.add_subcommand(
      "demo",
      "The main job end to end: a 1 TiB confidential VM converts pages with DMA and\n"
      "memory-attribute listeners, checkpoints to RocksDB, migrates live over loopback\n"
      "TCP to a destination process while it keeps converting, and the destination\n"
      "rebuilds its DMA mappings. Exits 0 only if both sides end with the same state.\n"
      "Example: cvmstate demo --dir /tmp/demo");
  sub->add_option("--dir", o->dir, "Keep the stores in DIR (default: a fresh temporary directory, removed after)");
  sub->callback([o, exit_code] { *exit_code = RunDemo(*o); });
}

}  // namespace cvmstate::tools

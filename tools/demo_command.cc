// cvmstate demo [--dir DIR]: the main job end to end, with figures.
//
// A confidential VM (1 TiB, four blocks) converts pages with a DMA-mapping
// and a memory-attribute listener attached, checkpoints to a RocksDB store,
// then migrates live over loopback TCP to a destination process while it
// keeps converting; the destination runs the library's incoming sequence
// (verify, commit, replay its DMA mappings and memory attributes,
// acknowledge) before "resuming". Exit 0 only if the destination's committed
// state equals the source's.
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

#include "codec/state_digest.h"
#include "migration/byte_stream.h"
#include "migration/tcp.h"
#include "session/incoming.h"
#include "session/outgoing.h"
#include "sim/host_listeners.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "text/trace.h"
#include "tools/commands.h"
#include "tools/human_bytes.h"
#include "tools/output.h"
#include "tools/workload.h"

namespace cvmstate::tools {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kGuest = uint64_t{1} << 40;
constexpr uint64_t kOps = 100000, kLiveOps = 10000;
constexpr int kRounds = 3;

struct DemoOptions {
  std::string dir;
};

std::string Bytes(double b) { return HumanBytes(b); }
std::string Bytes(uint64_t b) { return HumanBytes(static_cast<double>(b)); }

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

// The conversions of a generated workload, parsed once.
Result<std::vector<TraceDirective>> Workload(const char* profile, uint64_t seed, uint64_t ops) {
  std::string trace;
  Status s = GenerateWorkload(profile, kGuest, seed, ops, &trace);
  if (!s.ok()) return s;
  return ParseTraceText(trace);
}

// What the destination process reports back through a pipe: fixed-size,
// so the parent reads figures, not text.
struct DestinationReport {
  int ok = 0;
  double verify_ms = 0, commit_ms = 0, replay_ms = 0, ack_ms = 0, early_replay_ms = 0, last_stage_ms = 0;
  uint64_t dma_mappings = 0, private_ranges = 0, commit_bytes = 0;
  char error[512] = "";
};

// The destination host: a child process that accepts one migration on a
// socket the parent bound (so the parent knows the port) and runs the
// library's incoming sequence into its own store.
class DestinationHost {
 public:
  // Forks the child; call before this process opens any store or thread.
  Status Start(const std::string& db) {
    auto l = TcpListen("127.0.0.1:0", &address_);
    if (!l.ok()) return l.status();
    int report[2];
    if (pipe(report) != 0) {
      close(l.value());
      return Status::IOError("pipe failed");
    }
    pid_ = fork();
    if (pid_ < 0) return Status::IOError("fork failed");
    if (pid_ == 0) {
      close(report[0]);
      _exit(Serve(l.value(), db, report[1]));
    }
    close(l.value());
    close(report[1]);
    report_fd_ = report[0];
    return Status::OK();
  }
  const std::string& address() const { return address_; }

  // Waits for the child's report and its exit.
  Status Wait(DestinationReport* r) {
    size_t got = 0;
    char* p = reinterpret_cast<char*>(r);
    while (got < sizeof *r) {
      pollfd pfd{report_fd_, POLLIN, 0};
      if (poll(&pfd, 1, 60000) <= 0) break;
      const ssize_t n = read(report_fd_, p + got, sizeof *r - got);
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    // No whole report within the deadline: the child will not send one, so
    // it must not be waited for either.
    if (got != sizeof *r) kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    if (got != sizeof *r) return Status::IOError("the destination process ended without a report");
    r->error[sizeof r->error - 1] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !r->ok) return Status::IOError(r->error);
    return Status::OK();
  }

  ~DestinationHost() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (report_fd_ >= 0) close(report_fd_);
  }

 private:
  static int Serve(int listen_fd, const std::string& db, int report_fd) {
    DestinationReport r;
    Status s = Receive(listen_fd, db, &r);
    r.ok = s.ok();
    std::snprintf(r.error, sizeof r.error, "%s", s.message().c_str());
    const bool sent = write(report_fd, &r, sizeof r) == static_cast<ssize_t>(sizeof r);
    return s.ok() && sent ? 0 : 1;
  }
  static Status Receive(int listen_fd, const std::string& db, DestinationReport* r) {
    auto store = CheckpointStore::Open(db);
    if (!store.ok()) return store.status();
    auto fd = TcpAccept(listen_fd, 60);
    if (!fd.ok()) return fd.status();
    ScopedFd conn;
    conn.fd = fd.value();
    FdSource in(conn.fd, 30);
    FdSink back(conn.fd, 30);
    IncomingOptions opt;
    opt.reply = &back;
    HostListeners listeners;
    IncomingMigration incoming(store.value().get(), std::move(opt));
    auto vm = incoming.Run(&in, [&](const BlockTracker& b) { return listeners.For(b); });
    if (!vm.ok()) return vm.status();
    const IncomingReport& ir = incoming.report();
    r->verify_ms = ir.verify_ms;
    r->commit_ms = ir.commit_ms;
    r->replay_ms = ir.replay_ms;
    r->early_replay_ms = ir.early_replay_ms;
    r->last_stage_ms = ir.last_stage_ms;
    r->ack_ms = ir.ack_ms;
    r->commit_bytes = ir.commit_bytes;
    r->dma_mappings = listeners.vfio().stats().mappings;
    r->private_ranges = listeners.PrivateRanges();
    listeners.Detach(&vm.value());
    return Status::OK();
  }

  pid_t pid_ = -1;
  int report_fd_ = -1;
  std::string address_;
};

// The source host's guest: its VM state with a DMA-mapping and a
// memory-attribute listener on every block, checkpointed as it runs.
struct SourceGuest {
  VmState vm;
  HostListeners listeners{65535};  // type1's default dma_entry_limit
  uint64_t conversions = 0, checkpoints = 0, first_checkpoint = 0, last_checkpoint = 0;
  double run_ms = 0;

  Status Declare(const TraceDirective& d) {
    Status s = vm.AddBlock(d.name, d.size, d.page_size, d.state);
    return s.ok() ? listeners.Attach(vm.Find(d.name)) : s;
  }
};

// 1. The guest boots and runs: conversions with listeners attached, and a
// synced checkpoint at every checkpoint line.
Status RunGuest(const std::vector<TraceDirective>& ops, VmCheckpointer* checkpointer, SourceGuest* g) {
  Progress progress("running the guest");
  const auto t0 = Clock::now();
  for (size_t i = 0; i < ops.size(); ++i) {
    const TraceDirective& d = ops[i];
    Status s;
    if (d.kind == TraceDirective::Kind::kBlock) {
      s = g->Declare(d);
    } else if (d.kind == TraceDirective::Kind::kConvert) {
      s = g->vm.Find(d.name)->Convert(d.offset, d.size, d.state);
      ++g->conversions;
    } else if (d.kind == TraceDirective::Kind::kCheckpoint) {
      auto c = checkpointer->CommitState(g->vm);
      if (!c.ok()) return c.status();
      ++g->checkpoints;
      g->last_checkpoint = c->bytes;
      if (g->first_checkpoint == 0) g->first_checkpoint = c->bytes;
    }
    if (!s.ok()) return s.WithPrefix("demo workload: ");
    progress.Update(i + 1, ops.size());
  }
  g->run_ms = Ms(t0);
  return Status::OK();
}

void PrintGuestFigures(const SourceGuest& g) {
  const VmState& vm = g.vm;
  uint64_t pages = 0, runs = 0, shared_pages = 0, shared_runs = 0;
  std::printf("  %" PRIu64 " conversions in %.0f ms (%.0f ns each, DMA and memory-attribute listeners attached)\n",
              g.conversions, g.run_ms, g.run_ms * 1e6 / static_cast<double>(g.conversions));
  std::printf("\n  %-16s %10s %12s %12s %12s %8s\n", "block", "size", "shared", "private", "discarded", "runs");
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    const uint64_t r = b.CountRuns();
    std::printf("  %-16s %10s %12s %12s %12s %8" PRIu64 "\n", b.name().c_str(), Bytes(b.size()).c_str(),
                Bytes(b.BytesIn(PageState::kShared)).c_str(), Bytes(b.BytesIn(PageState::kPrivate)).c_str(),
                Bytes(b.BytesIn(PageState::kDiscarded)).c_str(), r);
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
  std::printf("\n  DMA mappings for %s of shared memory:\n", Bytes(shared_pages * 4096).c_str());
  std::printf("    extent mode (one per section) %8" PRIu64 " live, peak %" PRIu64 "  (type1 limit 65535)\n",
              g.listeners.vfio().stats().mappings, g.listeners.vfio().stats().peak);
  std::printf("    per-page mapping (QEMU today) %8" PRIu64 "  -> %.0fx more, %s the limit\n", shared_pages,
              static_cast<double>(shared_pages) / static_cast<double>(std::max<uint64_t>(1, shared_runs)),
              shared_pages > 65535 ? "over" : "under");
  std::printf("\n  %" PRIu64 " synced checkpoints to RocksDB, one every %" PRIu64 " conversions: first %s, last %s\n"
              "    (a zstd run-length record per changed 512 MiB chunk, plus a manifest)\n",
              g.checkpoints, kOps / 8, Bytes(g.first_checkpoint).c_str(), Bytes(g.last_checkpoint).c_str());
}

// 2. Live migration to the destination process while the guest converts;
// the source commits its final state once the destination is ready.
Status MigrateLive(SourceGuest* g, const std::vector<TraceDirective>& live, const std::string& to, CheckpointStore* store,
                   uint64_t sequence, OutgoingReport* report) {
  auto fd = TcpConnect(to, 10);
  if (!fd.ok()) return fd.status();
  ScopedFd conn;
  conn.fd = fd.value();
  FdSink sink(conn.fd, 60);
  FdSource replies(conn.fd, 60), refusal(conn.fd, 2);
  OutgoingOptions opt;
  opt.rounds = kRounds;
  opt.replies = &replies;
  opt.refusal = &refusal;
  opt.commit_to = store;
  opt.commit_id = "guest1";
  opt.commit_sequence = sequence;
  auto between = [&](int r, bool) -> Status {
    for (size_t i = live.size() * (r - 1) / kRounds; i < live.size() * r / kRounds; ++i) {
      Status s = g->vm.Find(live[i].name)->Convert(live[i].offset, live[i].size, live[i].state);
      if (!s.ok()) return s;
    }
    return Status::OK();
  };
  return RunOutgoingMigration(&g->vm, "guest1", &sink, opt, between, report);
}

void PrintMigrationFigures(const SourceGuest& g, const OutgoingReport& out, const DestinationReport& in) {
  uint64_t pages = 0;
  for (size_t i = 0; i < g.vm.num_blocks(); ++i) pages += g.vm.block(i).size() >> g.vm.block(i).page_shift();
  for (const RoundStats& r : out.rounds) {
    std::printf("    round %u %-18s %6" PRIu64 " runs %10s\n", r.round,
                r.round == 0 ? "(full state)" : r.round + 1 == out.rounds.size() ? "(stop-and-copy)" : "(pre-copy)",
                r.runs, Bytes(r.bytes).c_str());
  }
  std::printf("    total %s on the wire, against %s for a 2-bit bitmap (%.0fx less)\n", Bytes(out.total_bytes).c_str(),
              Bytes(static_cast<double>(pages) / 4).c_str(),
              static_cast<double>(pages) / 4 / static_cast<double>(out.total_bytes));
  std::printf("    destination: DMA mappings and memory attributes rebuilt at round 0's end, %.1f ms before the "
              "downtime, and kept up to date by the later rounds\n",
              in.early_replay_ms);
  std::printf("    destination: each round's records staged as it ended; verified, committed; downtime %.1f ms "
              "(last round staged %.1f, verify %.1f, commit %.1f, listeners %.1f, ack %.1f)\n",
              in.last_stage_ms + in.verify_ms + in.commit_ms + in.replay_ms + in.ack_ms, in.last_stage_ms,
              in.verify_ms, in.commit_ms, in.replay_ms, in.ack_ms);
  std::printf("    destination: %" PRIu64 " DMA mappings, %" PRIu64 " private ranges, %s committed: ready\n",
              in.dma_mappings, in.private_ranges, Bytes(in.commit_bytes).c_str());
}

// 3. The verdict: the destination's committed state against the source's.
Result<bool> SameState(const std::string& destination_db, const VmState& source) {
  auto dst_store = CheckpointStore::Open(destination_db, /*read_only=*/true);
  if (!dst_store.ok()) return dst_store.status();
  auto dst = dst_store.value()->Load("guest1");
  if (!dst.ok()) return dst.status();
  return ComputeStateDigest(dst.value()) == ComputeStateDigest(source);
}

Result<std::string> DemoDir(const DemoOptions& o, bool* temporary) {
  std::string dir = o.dir;
  *temporary = false;
  if (dir.empty()) {
    std::string tmpl = (std::getenv("TMPDIR") ? std::string(std::getenv("TMPDIR")) : std::string("/tmp")) +
                       "/cvmstate-demo-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) return Status::IOError("cannot create a temporary directory");
    dir = tmpl;
    *temporary = true;
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (std::filesystem::exists(dir + "/source") || std::filesystem::exists(dir + "/destination")) {
    return Status::InvalidArgument("'" + dir + "' already holds a demo; pass an empty --dir");
  }
  return dir;
}

int RunDemo(const DemoOptions& o) {
  bool temporary = false;
  auto where = DemoDir(o, &temporary);
  if (!where.ok()) return Fail(where.status().message());
  const std::string dir = where.value();
  std::printf("cvmstate demo: a 1 TiB confidential VM (TDX/SNP-like) in %s\n\n", dir.c_str());
  auto ops = Workload("steady", 2026, kOps);
  auto live = Workload("steady", 7, kLiveOps);
  if (!ops.ok() || !live.ok()) return Fail((ops.ok() ? live.status() : ops.status()).message());
  std::erase_if(live.value(), [](const TraceDirective& d) { return d.kind != TraceDirective::Kind::kConvert; });
  // The destination host starts first, before this process opens a store.
  DestinationHost dest;
  Status s = dest.Start(dir + "/destination");
  if (!s.ok()) return Fail(s.message());

  SourceGuest guest;
  {
    auto store = CheckpointStore::Open(dir + "/source");
    if (!store.ok()) return Fail(store.status().message());
    VmCheckpointer checkpointer(store.value().get(), "guest1");
    s = RunGuest(ops.value(), &checkpointer, &guest);
    if (!s.ok()) return Fail(s.message());
    PrintGuestFigures(guest);
    guest.listeners.Detach(&guest.vm);  // the source's listeners stay with the source host
    auto c = checkpointer.CommitState(guest.vm);
    if (!c.ok()) return Fail(c.status().message());

    std::printf("\n  live migration to a destination process listening on %s:\n", dest.address().c_str());
    OutgoingReport out;
    s = MigrateLive(&guest, live.value(), dest.address(), store.value().get(), c->sequence + 1, &out);
    DestinationReport in;
    Status ds = dest.Wait(&in);
    if (!s.ok() || !ds.ok()) return Fail("migration failed: " + (ds.ok() ? s.message() : ds.message()));
    PrintMigrationFigures(guest, out, in);
  }
  auto same = SameState(dir + "/destination", guest.vm);
  if (!same.ok()) return Fail(same.status().message());
  std::printf("\n  verdict: %s\n", same.value() ? "the destination's state equals the source's, page for page: OK"
                                                 : "MISMATCH between destination and source");
  if (temporary) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  } else {
    std::printf("  inspect: cvmstate dump --db %s/destination --format svg --out map.svg\n", dir.c_str());
  }
  return same.value() ? 0 : 1;
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

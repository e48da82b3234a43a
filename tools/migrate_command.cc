// cvmstate migrate send | recv (SPEC.md section 4).
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "migration/byte_stream.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "migration/tcp.h"
#include "session/incoming.h"
#include "session/outgoing.h"
#include "sim/host_listeners.h"
#include "store/checkpoint_store.h"
#include "text/trace.h"
#include "tools/commands.h"
#include "tools/output.h"
#include "tracker/format.h"
#include "tracker/names.h"

namespace cvmstate::tools {
namespace {

struct SendOptions {
  std::string db, vm, to, to_file, trace, psk_file;
  int rounds = 3;
  double timeout = 30;
};

struct RecvOptions {
  std::string listen, from_file, db, vm, psk_file;
  double timeout = 30;
  uint64_t max_runs = MigrationDestination::kDefaultMaxRuns;
};

void PrintRound(const char* who, const RoundStats& r, bool final_round) {
  std::fprintf(stderr, "%s: round %u%s: %" PRIu64 " frames, %" PRIu64 " sections, %" PRIu64 " runs, %" PRIu64 " bytes\n",
               who, r.round, r.round == 0 ? " (full state)" : final_round ? " (stop-and-copy)" : " (pre-copy delta)",
               r.frames, r.sections, r.runs, r.bytes);
}

// The conversion lines of a trace, checked against the VM: its block lines
// must match the VM's blocks, every conversion must be valid.
Status LoadTraceConversions(const std::string& path, const VmState& vm, std::vector<TraceDirective>* out) {
  TraceReader reader;
  Status s = reader.Open(path);
  if (!s.ok()) return s;
  TraceDirective d;
  while (reader.NextDirective(&d, &s)) {
    if (s.ok() && d.kind == TraceDirective::Kind::kBlock) {
      const BlockTracker* b = vm.Find(d.name);
      if (b == nullptr || b->size() != d.size || b->page_size() != d.page_size) {
        s = Status::InvalidArgument("block '" + d.name + "' does not match a block of the VM being migrated");
      }
    } else if (s.ok() && d.kind == TraceDirective::Kind::kConvert) {
      s = CheckConversion(d, vm).status();
      if (s.ok()) out->push_back(std::move(d));
    }
    if (!s.ok()) return Status::InvalidArgument(path + ":" + std::to_string(reader.line_number()) + ": error: " + s.message());
  }
  return reader.read_status();
}

// After a refusal: stop sending, and read and drop what the source still
// sends for at most `seconds` in all, so that it reads the reason.
void DrainSocket(int fd, double seconds) {
  shutdown(fd, SHUT_WR);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                               std::chrono::duration<double>(seconds));
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return;
    if (read(fd, buf, sizeof buf) <= 0) return;
  }
}

Result<std::string> KeyFrom(const std::string& psk_file, double timeout) {
  if (psk_file.empty()) return std::string();
  return LoadPskFile(psk_file, timeout);
}

int RunSend(const SendOptions& o) {
  auto key = KeyFrom(o.psk_file, o.timeout);
  if (!key.ok()) return Fail(key.status().message());
  auto store = CheckpointStore::Open(o.db);
  if (!store.ok()) return Fail(store.status().message());
  CheckpointInfo info;
  auto vm = store.value()->Load(o.vm, &info);
  if (!vm.ok()) return Fail(vm.status().message());
  // Refused before the channel or the file is touched.
  Status streamable = MigrationSource::CheckStreamable(vm.value());
  if (!streamable.ok()) return Fail("cannot migrate VM " + Quoted(o.vm) + ": " + streamable.message());
  std::vector<TraceDirective> conversions;
  if (!o.trace.empty()) {
    Status s = LoadTraceConversions(o.trace, vm.value(), &conversions);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.message().c_str());
      return 1;
    }
  }
  ScopedFd fd;
  if (!o.to.empty()) {
    auto c = TcpConnect(o.to, o.timeout);
    if (!c.ok()) return Fail(c.status().message());
    fd.fd = c.value();
  } else {
    // Non-blocking open: a FIFO nobody reads fails at once (ENXIO) instead
    // of holding us in open(); the writes then poll within --timeout.
    fd.fd = open(o.to_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd.fd < 0 && errno == ENXIO) return Fail("cannot write '" + o.to_file + "': a FIFO that nobody reads");
    if (fd.fd < 0) return Fail("cannot write '" + o.to_file + "': " + std::strerror(errno));
  }
  // Every write and every wait for the destination ends within --timeout.
  FdSink sink(fd.fd, o.timeout);
  FdSource replies(fd.fd, o.timeout), refusal(fd.fd, std::min(o.timeout, 2.0));
  OutgoingOptions opt;
  opt.rounds = o.rounds;
  opt.key = key.value();
  if (!o.to.empty()) {
    opt.replies = &replies;
    opt.refusal = &refusal;
  } else {
    opt.on_complete = [&]() -> Status {
      // A pipe or FIFO cannot be synced (EINVAL): its bytes are handed over.
      struct stat st {};
      const bool file = fstat(fd.fd, &st) == 0 && S_ISREG(st.st_mode);
      if (fsync(fd.fd) != 0 && (file || errno != EINVAL)) {
        return Status::IOError("cannot write '" + o.to_file + "': " + std::strerror(errno));
      }
      return Status::OK();
    };
  }
  opt.commit_to = store.value().get();
  opt.commit_id = o.vm;
  opt.commit_sequence = info.sequence + 1;
  // The guest keeps converting: slice r-1 of the trace runs before round r.
  const size_t n = conversions.size();
  auto between = [&](int r, bool) -> Status {
    for (size_t i = n * (r - 1) / o.rounds; i < n * r / o.rounds; ++i) {
      const TraceDirective& d = conversions[i];
      Status s = vm->Find(d.name)->Convert(d.offset, d.size, d.state);
      if (!s.ok()) return s.WithPrefix("conversion failed: ");
    }
    return Status::OK();
  };
  OutgoingReport report;
  Status s = RunOutgoingMigration(&vm.value(), o.vm, &sink, opt, between, &report);
  for (size_t i = 0; i < report.rounds.size(); ++i) {
    PrintRound("send", report.rounds[i], i == static_cast<size_t>(o.rounds));
  }
  if (!s.ok()) {
    if (s.message().rfind("conversion failed: ", 0) == 0 || s.message().rfind("the destination has the VM", 0) == 0) {
      return Fail(s.message());
    }
    if (o.to_file.size() && s.message().rfind("cannot write '", 0) == 0) return Fail(s.message());
    return Fail("migration failed: " + s.message());
  }
  uint64_t pages = 0;
  for (size_t i = 0; i < vm->num_blocks(); ++i) pages += vm->block(i).size() >> vm->block(i).page_shift();
  std::fprintf(stderr, "send: migrated VM %s: %" PRIu64 " bytes in %zu rounds (a 2-bit bitmap is %" PRIu64
               " bytes); source state committed (%" PRIu64 " bytes)\n",
               o.vm.c_str(), report.total_bytes, report.rounds.size(), pages / 4, report.commit_bytes);
  return 0;
}

int ReceiveInto(const RecvOptions& o, const std::string& key, CheckpointStore* store) {
  ScopedFd listener, fd;
  const bool network = !o.listen.empty();
  if (network) {
    std::string bound;
    auto l = TcpListen(o.listen, &bound);
    if (!l.ok()) return Fail(l.status().message());
    listener.fd = l.value();
    std::fprintf(stderr, "recv: listening on %s\n", bound.c_str());
    std::fflush(stderr);
    auto a = TcpAccept(listener.fd, o.timeout);
    if (!a.ok()) return Fail(a.status().message());
    fd.fd = a.value();
  } else {
    // Non-blocking open: a FIFO with no writer does not hold us in open();
    // every read then waits at most --timeout.
    fd.fd = open(o.from_file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd.fd < 0) return Fail("cannot read '" + o.from_file + "': " + std::strerror(errno));
  }
  FdSource in(fd.fd, o.timeout);
  FdSink back(fd.fd, o.timeout);
  IncomingOptions opt;
  opt.stream.key = key;
  opt.stream.max_runs = o.max_runs;
  opt.commit_as = o.vm;
  if (network) {
    opt.reply = &back;
    opt.drain = [&fd] { DrainSocket(fd.fd, 2.0); };
  }
  HostListeners listeners;
  IncomingMigration incoming(store, std::move(opt));
  auto vm = incoming.Run(&in, [&](const BlockTracker& b) { return listeners.For(b); });
  if (!vm.ok()) return Fail("migration failed: " + vm.status().message());
  const IncomingReport& r = incoming.report();
  for (size_t i = 0; i < r.rounds.size(); ++i) PrintRound("recv", r.rounds[i], i + 1 == r.rounds.size());
  std::fprintf(stderr, "recv: VM %s committed as '%s' (%" PRIu64 " bytes staged as the rounds ended, %" PRIu64
               " in the final commit); %" PRIu64 " DMA mappings, %" PRIu64
               " private ranges (replayed at round 0's end in %.1f ms, then kept up to date); downtime %.1f ms "
               "(last round staged %.1f, verify %.1f, commit %.1f, listeners and ack %.1f)\n",
               r.vm_id.c_str(), r.committed_as.c_str(), r.staged_bytes, r.commit_bytes,
               listeners.vfio().stats().mappings, listeners.PrivateRanges(), r.early_replay_ms, r.downtime_ms(),
               r.last_stage_ms, r.verify_ms, r.commit_ms, r.replay_ms + r.ack_ms);
  std::fputs("ready\n", stdout);
  if (std::fflush(stdout) != 0) return Fail("cannot write to standard output");
  // Listeners are unregistered before they go away (their mappings stay:
  // the guest resumes on them).
  listeners.Detach(&vm.value());
  return 0;
}

int RunRecv(const RecvOptions& o) {
  auto key = KeyFrom(o.psk_file, o.timeout);
  if (!key.ok()) return Fail(key.status().message());
  // A failed migration leaves DIR as it was: one that did not exist is
  // removed again (the store it got is empty by then). mkdir decides
  // atomically whether this process made it.
  std::error_code ec;
  const bool created = ::mkdir(o.db.c_str(), 0755) == 0;
  auto store = CheckpointStore::Open(o.db);
  if (!store.ok()) {
    // Not recursive: whatever is in it now is not ours to remove.
    if (created) std::filesystem::remove(o.db, ec);
    return Fail(store.status().message());
  }
  const int rc = ReceiveInto(o, key.value(), store.value().get());
  if (rc != 0 && created) {
    store.value().reset();
    std::filesystem::remove_all(o.db, ec);
  }
  return rc;
}

// A finite number of seconds from 0.1 to one day (CLI::Range lets NaN
// through: it fails no comparison).
CLI::Validator TimeoutSeconds() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || !(v >= 0.1 && v <= 86400.0)) {
          return "a timeout is a number of seconds from 0.1 to 86400, not '" + text + "'";
        }
        return std::string();
      },
      "SECONDS in [0.1, 86400]");
}

}  // namespace

void AddMigrateCommand(CLI::App& app, int* exit_code) {
  CLI::App* mig = app.add_subcommand("migrate", "Stream a VM's page state to another host, or receive one");
  mig->require_subcommand(1);

  auto s = std::make_shared<SendOptions>();
  CLI::App* send = mig->add_subcommand(
      "send",
      "Stream the committed state of a VM; with --trace, apply its conversions while\n"
      "streaming, spread over the pre-copy rounds, then stop-and-copy. The source\n"
      "commits its final state only after the destination acknowledges.\n"
      "Example: cvmstate migrate send --db src.db --vm guest1 --to 127.0.0.1:7000 --trace live.trace");
  send->add_option("--db", s->db, "Source store directory")->required();
  send->add_option("--vm", s->vm, "VM id to migrate")->required();
  CLI::Option* to = send->add_option("--to", s->to, "Destination HOST:PORT (TCP)");
  CLI::Option* to_file = send->add_option("--to-file", s->to_file, "Write the stream to FILE instead");
  to->excludes(to_file);
  send->add_option("--trace", s->trace, "Conversions the running guest makes during the migration");
  send->add_option("--psk-file", s->psk_file, "Authenticate every frame with a key derived from FILE (both sides)");
  send->add_option("--rounds", s->rounds, "Pre-copy rounds over which --trace is spread (default 3)")
      ->check(CLI::Range(1, 1000));
  send->add_option("--timeout", s->timeout,
                   "Seconds each write to the destination and each wait for its answer may\n"
                   "take (connect, challenge, every frame, the acknowledgement; default 30)")
      ->check(TimeoutSeconds());
  send->callback([s, exit_code, to, to_file] {
    if (to->count() + to_file->count() != 1) {
      std::fprintf(stderr, "cvmstate: usage error: migrate send needs --to HOST:PORT or --to-file FILE\n");
      *exit_code = 2;
      return;
    }
    *exit_code = RunSend(*s);
  });

  auto r = std::make_shared<RecvOptions>();
  CLI::App* recv = mig->add_subcommand(
      "recv",
      "Receive one migration: verify the whole stream, commit it under the VM id, replay\n"
      "shared runs to DMA mappings and private runs to memory attributes, then print\n"
      "'ready'. On any fault exit 1 with the store unchanged.\n"
      "Example: cvmstate migrate recv --listen 127.0.0.1:7000 --db dst.db");
  CLI::Option* listen = recv->add_option("--listen", r->listen, "HOST:PORT to listen on (port 0: any; printed)");
  CLI::Option* from = recv->add_option("--from-file", r->from_file, "Read a recorded stream from FILE");
  listen->excludes(from);
  recv->add_option("--db", r->db, "Destination store directory")->required();
  recv->add_option("--vm", r->vm, "Commit under this id instead of the stream's");
  recv->add_option("--psk-file", r->psk_file,
                   "Accept only streams authenticated with a key derived from FILE; without it\n"
                   "frames are checked for integrity only: listen on a trusted network");
  recv->add_option("--timeout", r->timeout, "Seconds to wait for the next frame (default 30)")
      ->check(TimeoutSeconds());
  recv->add_option("--max-runs", r->max_runs,
                   "The largest state accepted, in runs (default 4194304); it sets the memory\n"
                   "budget too: the state being received may take 64 bytes a run of it")
      ->check(CLI::Range(uint64_t{1}, MigrationDestination::kMaxMaxRuns));
  recv->callback([r, exit_code, listen, from] {
    if (listen->count() + from->count() != 1) {
      std::fprintf(stderr, "cvmstate: usage error: migrate recv needs --listen HOST:PORT or --from-file FILE\n");
      *exit_code = 2;
      return;
    }
    if (!r->vm.empty() && !IsValidVmId(r->vm)) {
      std::fprintf(stderr, "cvmstate: usage error: invalid --vm '%s'\n", r->vm.c_str());
      *exit_code = 2;
      return;
    }
    *exit_code = RunRecv(*r);
  });
}

}  // namespace cvmstate::tools

// cvmstate migrate send | recv (SPEC.md section 4).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "commands.h"
#include "cvmstate/checkpoint_store.h"
#include "cvmstate/kvm_attr_sim.h"
#include "cvmstate/migration.h"
#include "cvmstate/trace.h"
#include "cvmstate/vfio_sim.h"
#include "output.h"

namespace cvmstate::tools {
namespace {

struct SendOptions {
  std::string db, vm, to, to_file, trace, psk_file;
  int rounds = 3;
};

struct RecvOptions {
  std::string listen, from_file, db, vm, psk_file;
  double timeout = 30;
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

int RunSend(const SendOptions& o) {
  std::string key;
  if (!o.psk_file.empty()) {
    auto k = LoadPskFile(o.psk_file);
    if (!k.ok()) return Fail(k.status().message());
    key = std::move(k).value();
  }
  auto store = CheckpointStore::Open(o.db);
  if (!store.ok()) return Fail(store.status().message());
  CheckpointInfo info;
  auto vm = store.value()->Load(o.vm, &info);
  if (!vm.ok()) return Fail(vm.status().message());
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
    auto c = TcpConnect(o.to, 5);
    if (!c.ok()) return Fail(c.status().message());
    fd.fd = c.value();
  } else {
    fd.fd = open(o.to_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd.fd < 0) return Fail("cannot write '" + o.to_file + "': " + std::strerror(errno));
  }
  // Over a network the destination opens with a fresh nonce to answer.
  std::string nonce;
  {
    FdSource from(fd.fd, 30);
    auto n = o.to.empty() ? MigrationSource::NewNonce() : MigrationSource::ReadChallenge(&from);
    if (!n.ok()) return Fail("migration failed: " + n.status().message());
    nonce = std::move(n).value();
  }
  FdSink sink(fd.fd);
  MigrationSource src(&vm.value(), o.vm, &sink);
  src.SetKey(key);
  // A destination that refuses says why in its acknowledgement: read it
  // when our writes fail.
  auto failed = [&](const Status& s) {
    if (!o.to.empty() && s.code() == Status::Code::kIOError) {
      FdSource from(fd.fd, 2);
      Status ack = src.AwaitAck(&from);
      if (ack.code() == Status::Code::kRefused) return Fail("migration failed: " + ack.message());
    }
    return Fail("migration failed: " + s.message());
  };
  Status s = src.Begin(nonce);
  if (!s.ok()) return failed(s);
  PrintRound("send", src.rounds().back(), false);
  // The guest keeps converting: slice r of the trace runs during round r.
  const size_t n = conversions.size();
  for (int r = 0; r < o.rounds; ++r) {
    for (size_t i = n * r / o.rounds; i < n * (r + 1) / o.rounds; ++i) {
      const TraceDirective& d = conversions[i];
      s = vm->Find(d.name)->Convert(d.offset, d.size, d.state);
      if (!s.ok()) return Fail("conversion failed: " + s.message());
    }
    const bool last = r + 1 == o.rounds;
    auto round = last ? src.Finish() : src.SendRound();
    if (!round.ok()) return failed(round.status());
    PrintRound("send", round.value(), last);
  }
  if (!o.to.empty()) {
    FdSource from(fd.fd, 120);
    s = src.AwaitAck(&from);
    if (!s.ok()) return Fail("migration failed: " + s.message());
  } else if (fsync(fd.fd) != 0) {
    return Fail("cannot write '" + o.to_file + "': " + std::strerror(errno));
  }
  // Acknowledged: only now does the source record its final state.
  auto bytes = store.value()->CommitFull(o.vm, vm.value(), info.sequence + 1);
  if (!bytes.ok()) return Fail("the destination has the VM, but the source could not commit: " + bytes.status().message());
  uint64_t pages = 0;
  for (size_t i = 0; i < vm->num_blocks(); ++i) pages += vm->block(i).size() >> vm->block(i).page_shift();
  std::fprintf(stderr, "send: migrated VM %s: %" PRIu64 " bytes in %zu rounds (a 2-bit bitmap is %" PRIu64
               " bytes); source state committed (%" PRIu64 " bytes)\n",
               o.vm.c_str(), src.total_bytes(), src.rounds().size(), pages / 4, bytes.value());
  return 0;
}

int RunRecv(const RecvOptions& o) {
  MigrationDestination::Options opt;
  if (!o.psk_file.empty()) {
    auto k = LoadPskFile(o.psk_file);
    if (!k.ok()) return Fail(k.status().message());
    opt.key = std::move(k).value();
  }
  auto store = CheckpointStore::Open(o.db);
  if (!store.ok()) return Fail(store.status().message());
  std::string target;
  opt.accept_vm = [&](const std::string& id) -> Status {
    target = o.vm.empty() ? id : o.vm;
    auto has = store.value()->HasVm(target);
    if (!has.ok()) return has.status();
    if (has.value()) return Status::Refused("VM '" + target + "' already exists in '" + o.db + "'");
    return Status::OK();
  };
  ScopedFd listener, fd;
  if (!o.listen.empty()) {
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
    fd.fd = open(o.from_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd.fd < 0) return Fail("cannot read '" + o.from_file + "': " + std::strerror(errno));
  }
  FdSource in(fd.fd, o.timeout);
  FdSink back(fd.fd);
  const bool network = !o.listen.empty();
  if (network) {  // a fresh nonce the source must answer: no replays
    auto nonce = MigrationSource::NewNonce();
    if (!nonce.ok()) return Fail(nonce.status().message());
    opt.expected_nonce = nonce.value();
    Status s = MigrationDestination::SendChallenge(&back, nonce.value());
    if (!s.ok()) return Fail("migration failed: " + s.message());
  }
  MigrationDestination dest(opt);
  auto fail = [&](const std::string& why) {
    if (network && dest.SendAck(&back, false, why).ok()) {
      // Let the source read the reason: stop sending, and drain what it
      // still sends (closing with unread data would reset the connection
      // and discard the acknowledgement).
      shutdown(fd.fd, SHUT_WR);
      FdSource drain(fd.fd, 2);
      char sink[4096];
      while (drain.Read(sink, 1).ok()) {
      }
    }
    return Fail("migration failed: " + why);
  };
  std::string id;
  auto vm = dest.Receive(&in, &id);
  if (!vm.ok()) return fail(vm.status().message());
  if (!network) {
    char extra;
    if (in.Read(&extra, 1).ok()) return fail("trailing bytes after the end frame");
  }
  // Commit, then replay shared runs to the DMA-mapping listener and private
  // runs to the memory-attribute listener, then acknowledge.
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  const Clock::time_point verified = Clock::now();
  auto bytes = store.value()->CommitFull(target, vm.value(), 1);
  const Clock::time_point committed = Clock::now();
  if (!bytes.ok()) return fail(bytes.status().message());
  VfioContainer vfio(VfioContainer::Mode::kExtent, 0);
  std::vector<std::unique_ptr<DmaMappingListener>> dma;
  std::vector<std::unique_ptr<KvmAttributeSim>> kvm;
  uint64_t private_ranges = 0;
  for (size_t i = 0; i < vm->num_blocks(); ++i) {
    BlockTracker& b = vm->block(i);
    dma.push_back(vfio.MakeListener(b.name(), b.page_size()));
    kvm.push_back(std::make_unique<KvmAttributeSim>());
    Status s = b.RegisterListener(dma.back().get(), 0, b.size());
    if (s.ok()) s = b.RegisterListener(kvm.back().get(), 0, b.size());
    if (!s.ok()) {
      (void)store.value()->DeleteVm(target);
      return fail(s.message());
    }
    private_ranges += kvm.back()->ranges().size();
  }
  if (network && !dest.SendAck(&back, true, "ready").ok()) {
    (void)store.value()->DeleteVm(target);  // the source will not commit: neither do we
    return Fail("migration failed: cannot acknowledge to the source");
  }
  const Clock::time_point ready = Clock::now();
  const double downtime_ms = ms(dest.end_received(), ready);
  for (size_t r = 0; r < dest.rounds().size(); ++r) PrintRound("recv", dest.rounds()[r], r + 1 == dest.rounds().size());
  std::fprintf(stderr, "recv: VM %s committed as '%s' (%" PRIu64 " bytes); %" PRIu64 " DMA mappings, %" PRIu64
               " private ranges replayed; downtime %.1f ms (verify %.1f, commit %.1f, listeners and ack %.1f)\n",
               id.c_str(), target.c_str(), bytes.value(), vfio.stats().mappings, private_ranges, downtime_ms,
               ms(dest.end_received(), verified), ms(verified, committed), ms(committed, ready));
  std::fputs("ready\n", stdout);
  if (std::fflush(stdout) != 0) return Fail("cannot write to standard output");
  // Listeners are unregistered before they go away (their mappings stay:
  // the guest resumes on them).
  for (size_t i = 0; i < vm->num_blocks(); ++i) {
    (void)vm->block(i).UnregisterListener(dma[i].get());
    (void)vm->block(i).UnregisterListener(kvm[i].get());
  }
  return 0;
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
      ->check(CLI::Range(0.1, 86400.0));
  recv->callback([r, exit_code, listen, from] {
    if (listen->count() + from->count() != 1) {
      std::fprintf(stderr, "cvmstate: usage error: migrate recv needs --listen HOST:PORT or --from-file FILE\n");
      *exit_code = 2;
      return;
    }
    if (!r->vm.empty() && !CheckpointStore::IsValidVmId(r->vm)) {
      std::fprintf(stderr, "cvmstate: usage error: invalid --vm '%s'\n", r->vm.c_str());
      *exit_code = 2;
      return;
    }
    *exit_code = RunRecv(*r);
  });
}

}  // namespace cvmstate::tools

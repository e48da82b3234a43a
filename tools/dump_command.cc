// cvmstate dump --db DIR [--vm ID] [--format summary|runs|json] [--out FILE]
#include <algorithm>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>

#include "codec/state_digest.h"
#include "migration/byte_stream.h"
#include "migration/crc32c.h"
#include "migration/destination.h"
#include "migration/psk.h"
#include "migration/source.h"
#include "migration/tcp.h"
#include "store/checkpoint_store.h"
#include "text/listing.h"
#include "tools/commands.h"
#include "tools/human_bytes.h"
#include "tools/output.h"
#include "tools/svg_map.h"
#include "tracker/format.h"

namespace cvmstate::tools {
namespace {

struct DumpOptions {
  std::string stream;
  std::string db;
  std::string vm;
  std::string format = "summary";
  std::string out;
  uint64_t max_runs = MigrationDestination::kDefaultMaxRuns;
};

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o.push_back('\\');
    o.push_back(c);
  }
  return o;
}

void Summary(const VmState& vm, const CheckpointInfo& info, std::string* out) {
  char line[512];
  std::time_t t = static_cast<std::time_t>(info.unix_time);
  char when[64] = "unknown";
  std::tm tm{};
  if (gmtime_r(&t, &tm) != nullptr) std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
  if (info.unix_time == 0) {  // from a recorded migration stream
    std::snprintf(line, sizeof line, "VM %s: final state of a migration stream of %" PRIu64 " rounds, %zu block(s), %" PRIu64
                  " runs, digest %016" PRIx64 "\n\n", info.vm.c_str(), info.sequence, vm.num_blocks(),
                  info.total_runs, info.digest);
  } else {
    std::snprintf(line, sizeof line, "VM %s: checkpoint %" PRIu64 " committed %s, %zu block(s), %" PRIu64
                  " runs, digest %016" PRIx64 "\n\n", info.vm.c_str(), info.sequence, when, vm.num_blocks(),
                  info.total_runs, info.digest);
  }
  out->append(line);
  std::snprintf(line, sizeof line, "%-20s %10s %8s %18s %18s %18s %9s\n", "block", "size", "page", "shared", "private",
                "discarded", "runs");
  out->append(line);
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    auto cell = [&b](PageState s) {
      char c[64];
      std::snprintf(c, sizeof c, "%s %5.1f%%", HumanBytes(static_cast<double>(b.BytesIn(s))).c_str(),
                    100.0 * static_cast<double>(b.BytesIn(s)) / static_cast<double>(b.size()));
      return std::string(c);
    };
    std::snprintf(line, sizeof line, "%-20s %10s %8s %18s %18s %18s %9" PRIu64 "\n", b.name().c_str(),
                  HumanBytes(static_cast<double>(b.size())).c_str(), HumanBytes(static_cast<double>(b.page_size())).c_str(), cell(PageState::kShared).c_str(),
                  cell(PageState::kPrivate).c_str(), cell(PageState::kDiscarded).c_str(), b.CountRuns());
    out->append(line);
    // The largest shared runs: what a destination maps first.
    std::vector<ByteRun> top;
    b.ForEachRun([&top](const ByteRun& r) {
      if (r.state != PageState::kShared) return true;
      top.push_back(r);
      std::sort(top.begin(), top.end(), [](const ByteRun& x, const ByteRun& y) { return x.length > y.length; });
      if (top.size() > 3) top.pop_back();
      return true;
    });
    if (!top.empty()) {
      out->append("    largest shared runs:");
      for (const ByteRun& r : top) {
        out->append(" ");
        AppendHex(out, r.offset);
        out->append(" (" + HumanBytes(static_cast<double>(r.length)) + ")");
      }
      out->append("\n");
    }
  }
}

void Json(const VmState& vm, const CheckpointInfo& info, std::string* out) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "{\"vm\": \"%s\", \"sequence\": %" PRIu64 ", \"unix_time\": %" PRIu64
                ", \"digest\": \"%016" PRIx64 "\", \"blocks\": [", JsonEscape(info.vm).c_str(), info.sequence,
                info.unix_time, info.digest);
  out->append(buf);
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    std::snprintf(buf, sizeof buf,
                  "%s{\"name\": \"%s\", \"size\": %" PRIu64 ", \"page_size\": %" PRIu64 ", \"runs\": %" PRIu64
                  ", \"bytes\": {\"shared\": %" PRIu64 ", \"private\": %" PRIu64 ", \"discarded\": %" PRIu64 "}}",
                  i ? ", " : "", JsonEscape(b.name()).c_str(), b.size(), b.page_size(), b.CountRuns(),
                  b.BytesIn(PageState::kShared), b.BytesIn(PageState::kPrivate), b.BytesIn(PageState::kDiscarded));
    out->append(buf);
  }
  out->append("]}\n");
}

// The final state carried by a recorded migration stream.
Result<VmState> LoadStream(const std::string& path, uint64_t max_runs, CheckpointInfo* info) {
  ScopedFd fd;
  fd.fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd.fd < 0) return Status::IOError("cannot read '" + path + "': " + std::strerror(errno));
  FdSource in(fd.fd, 0);
  MigrationDestination::Options opt;
  opt.ignore_macs = true;  // inspection: integrity without the key
  opt.max_runs = max_runs;
  MigrationDestination dest(opt);
  std::string id;
  auto vm = dest.Receive(&in, &id);
  if (!vm.ok()) return Status::Corruption("stream '" + path + "': " + vm.status().message());
  info->vm = id;
  info->sequence = dest.rounds().size();
  info->digest = ComputeStateDigest(vm.value());
  for (size_t i = 0; i < vm->num_blocks(); ++i) info->total_runs += vm->block(i).CountRuns();
  return vm;
}

int Print(const DumpOptions& o, const VmState& vm, const CheckpointInfo& info);

int RunDump(const DumpOptions& o) {
  CheckpointInfo info;
  Result<VmState> vm = Status::NotFound("");
  if (!o.stream.empty()) {
    vm = LoadStream(o.stream, o.max_runs, &info);
    if (!vm.ok()) return Fail(vm.status().message());
    return Print(o, vm.value(), info);
  }
  auto store = CheckpointStore::Open(o.db, /*read_only=*/true);
  if (!store.ok()) return Fail(store.status().message());
  std::string vm_id = o.vm;
  if (vm_id.empty()) {
    auto vms = store.value()->ListVms();
    if (!vms.ok()) return Fail(vms.status().message());
    if (vms->empty()) return Fail("the store in '" + o.db + "' holds no VM");
    if (vms->size() > 1) {
      std::string list;
      for (const auto& v : vms.value()) list += (list.empty() ? "" : ", ") + v;
      return Fail("the store holds " + std::to_string(vms->size()) + " VMs; pick one with --vm: " + list);
    }
    vm_id = vms->front();
  }
  vm = store.value()->Load(vm_id, &info);
  if (!vm.ok()) return Fail(vm.status().message());
  return Print(o, vm.value(), info);
}

int Print(const DumpOptions& o, const VmState& vm, const CheckpointInfo& info) {
  std::FILE* f = o.out.empty() ? stdout : std::fopen(o.out.c_str(), "wb");
  if (f == nullptr) return Fail("cannot write '" + o.out + "'");
  OutputBuffer out(f);
  if (o.format == "runs") {
    for (size_t i = 0; i < vm.num_blocks(); ++i) {
      const BlockTracker& b = vm.block(i);
      b.ForEachRun([&](const ByteRun& r) {
        AppendListingLine(out.buffer(), b.name(), r.offset, r.length, r.state);
        out.MaybeFlush();
        return true;
      });
    }
  } else if (o.format == "svg") {
    RenderSvgMap(vm, "cvmstate memory map of VM " + info.vm, out.buffer());
  } else if (o.format == "json") {
    Json(vm, info, out.buffer());
  } else {
    Summary(vm, info, out.buffer());
  }
  bool ok = out.Flush();
  if (f != stdout && std::fclose(f) != 0) ok = false;
  if (!ok) return Fail("cannot write the dump" + (o.out.empty() ? std::string() : " to '" + o.out + "'"));
  return 0;
}

}  // namespace

void AddDumpCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<DumpOptions>();
  CLI::App* sub = app.add_subcommand(
      "dump",
      "Show the last committed state of a VM in a store, or the final state carried\n"
      "by a recorded migration stream.\n"
      "Examples:\n  cvmstate dump --db /var/lib/cvmstate --vm guest1\n"
      "  cvmstate dump --db /var/lib/cvmstate --vm guest1 --format runs > guest1.runs");
  CLI::Option* db = sub->add_option("--db", o->db, "Store directory (opened read-only)");
  CLI::Option* stream = sub->add_option("--stream", o->stream, "A recorded migration stream (migrate send --to-file)");
  db->excludes(stream);
  sub->add_option("--max-runs", o->max_runs,
                  "With --stream: the largest state read, in runs (default 4194304; as migrate recv)")
      ->check(CLI::Range(uint64_t{1}, MigrationDestination::kMaxMaxRuns));
  sub->add_option("--vm", o->vm, "VM id; may be omitted when the store holds one VM");
  sub->add_option("--format", o->format, "summary (default, for people), runs (canonical listing), json, svg (memory map)")
      ->check(CLI::IsMember({"summary", "runs", "json", "svg"}));
  sub->add_option("--out", o->out, "Write to FILE instead of standard output");
  sub->callback([o, exit_code, db, stream] {
    if (db->count() + stream->count() != 1) {
      std::fprintf(stderr, "cvmstate: usage error: dump needs --db DIR or --stream FILE\n");
      *exit_code = 2;
      return;
    }
    if (o->db.empty() && o->stream.empty()) {
      std::fprintf(stderr, "cvmstate: usage error: --db and --stream must name a directory or file\n");
      *exit_code = 2;
      return;
    }
    *exit_code = RunDump(*o);
  });
}

}  // namespace cvmstate::tools

// cvmstate demo [--dir DIR]: the main job end to end, with figures.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "cvmstate/listing.h"
#include "cvmstate/trace.h"
#include "cvmstate/vm_state.h"
#include "impls.h"
#include "output.h"
#include "workload.h"

namespace cvmstate::tools {
namespace {

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

int RunDemo(const DemoOptions& o) {
  constexpr uint64_t kGuest = uint64_t{256} << 30;
  constexpr uint64_t kOps = 50000;
  std::printf("cvmstate demo: a 256 GiB confidential VM boots, shares SWIOTLB and per-vCPU pages,\n"
              "then churns DMA buffers, reports free pages and plugs virtio-mem (%" PRIu64 " conversions).\n\n",
              kOps);
  std::string trace;
  Status s = GenerateWorkload("steady", kGuest, 7, kOps, &trace);
  if (!s.ok()) return Fail(s.message());
  if (!o.dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(o.dir, ec);
    std::string path = o.dir + "/demo.trace";
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(trace.data(), 1, trace.size(), f) != trace.size() || std::fclose(f) != 0) {
      return Fail("cannot write " + path);
    }
    std::printf("  the workload is in %s (replay it with: cvmstate replay %s)\n", path.c_str(), path.c_str());
  }

  // Replay into cvmstate and, independently, into a 2-bit bitmap.
  VmState vm;
  std::unique_ptr<bench::TrackerImpl> bitmap = bench::MakeImpl("bitmap");
  size_t heap0 = bench::HeapBytesInUse();
  uint64_t conversions = 0;
  auto t0 = std::chrono::steady_clock::now();
  size_t pos = 0, line_no = 0;
  while (pos < trace.size()) {
    size_t nl = trace.find('\n', pos);
    if (nl == std::string::npos) nl = trace.size();
    std::string_view line(trace.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    TraceDirective d;
    s = ParseTraceLine(line, &d);
    if (s.ok()) s = ApplyTraceDirective(d, &vm);
    if (!s.ok()) return Fail("demo trace line " + std::to_string(line_no) + ": " + s.message());
    if (d.kind == TraceDirective::Kind::kConvert) ++conversions;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  size_t heap = bench::HeapBytesInUse() - heap0;
  std::printf("  replayed %" PRIu64 " conversions in %.3f s (%.0f ns each)\n", conversions, secs,
              conversions ? secs * 1e9 / static_cast<double>(conversions) : 0.0);

  uint64_t guest = 0, runs = 0, pages = 0;
  std::printf("\n  %-16s %10s %10s %10s %10s %8s\n", "block", "size", "shared", "private", "discarded", "runs");
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    uint64_t r = b.CountRuns();
    std::printf("  %-16s %10s %10s %10s %10s %8" PRIu64 "\n", b.name().c_str(), Bytes(static_cast<double>(b.size())).c_str(),
                Bytes(static_cast<double>(b.BytesIn(PageState::kShared))).c_str(),
                Bytes(static_cast<double>(b.BytesIn(PageState::kPrivate))).c_str(),
                Bytes(static_cast<double>(b.BytesIn(PageState::kDiscarded))).c_str(), r);
    guest += b.size();
    runs += r;
    pages += b.size() >> b.page_shift();
    (void)bitmap->AddBlock(b.size() >> b.page_shift(), b.initial_state());
  }
  const double one_bit = static_cast<double>(pages) / 8, two_bit = static_cast<double>(pages) / 4;
  std::printf("\n  page-state memory for %s of guest RAM in %" PRIu64 " runs:\n", Bytes(static_cast<double>(guest)).c_str(), runs);
  std::printf("    cvmstate run map   %10s  (%.1f bytes a run)\n", Bytes(static_cast<double>(vm.MemoryBytes())).c_str(),
              static_cast<double>(vm.MemoryBytes()) / static_cast<double>(runs));
  std::printf("    1-bit bitmap       %10s  (QEMU's shared bitmap: cannot tell private from discarded)\n",
              Bytes(one_bit).c_str());
  std::printf("    2-bit bitmap       %10s  (%.0fx the run map)\n", Bytes(two_bit).c_str(),
              two_bit / static_cast<double>(vm.MemoryBytes()));
  std::printf("    heap growth during the replay: %s\n", Bytes(static_cast<double>(heap)).c_str());

  // Independent check: the same trace into the bitmap must give the same runs.
  pos = 0;
  while (pos < trace.size()) {
    size_t nl = trace.find('\n', pos);
    if (nl == std::string::npos) nl = trace.size();
    TraceDirective d;
    if (ParseTraceLine(std::string_view(trace.data() + pos, nl - pos), &d).ok() &&
        d.kind == TraceDirective::Kind::kConvert) {
      const BlockTracker* b = vm.Find(d.name);
      bitmap->Assign(static_cast<size_t>(vm.IndexOf(d.name)), d.offset >> b->page_shift(),
                     (d.offset + d.size) >> b->page_shift(), d.state);
    }
    pos = nl + 1;
  }
  std::string a, bm;
  AppendRunListing(vm, &a);
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    struct Ctx {
      std::string* out;
      const BlockTracker* b;
    } ctx{&bm, &vm.block(i)};
    bitmap->ForEachRun(i, [](void* p, uint64_t begin, uint64_t end, PageState st) {
      auto* c = static_cast<Ctx*>(p);
      unsigned sh = c->b->page_shift();
      AppendListingLine(c->out, c->b->name(), begin << sh, (end - begin) << sh, st);
    }, &ctx);
  }
  bool same = a == bm;
  std::printf("\n  verdict: %s\n", same ? "the run map equals an independent 2-bit bitmap replay, page for page: OK"
                                         : "MISMATCH between the run map and the bitmap replay");
  return same ? 0 : 1;
}

}  // namespace

void AddDemoCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<DemoOptions>();
  CLI::App* sub = app.add_subcommand("demo",
                                     "Show the main job end to end on a realistic confidential VM, with figures.\n"
                                     "Exits 0 only if the result checks out.\nExample: cvmstate demo");
  sub->add_option("--dir", o->dir, "Keep the demo's files in DIR instead of a temporary place");
  sub->callback([o, exit_code] { *exit_code = RunDemo(*o); });
}

}  // namespace cvmstate::tools

#include "tools/checkpoint_bench.h"

#include <stdlib.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "tracker/vm_state.h"

namespace cvmstate::tools {
namespace {

double ThreadCpuNs() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) * 1e9 + static_cast<double>(t.tv_nsec);
}

template <typename T>
T Median(std::vector<T> v) {
  if (v.empty()) return T{};
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

Status Apply(VmState* vm, const bench::ParsedTrace& trace, const bench::BenchOp& op) {
  const unsigned shift = trace.blocks[op.block].page_shift;
  return vm->block(op.block).Convert(op.begin << shift, (op.end - op.begin) << shift, op.state);
}

// A directory removed with everything in it when this goes away.
struct TempDir {
  std::string path;
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

Result<CheckpointFigures> MeasureCheckpoints(const bench::ParsedTrace& trace, uint64_t commits,
                                             uint64_t conversions_per_commit) {
  VmState vm;
  for (const bench::BenchBlock& b : trace.blocks) {
    Status s = vm.AddBlock(b.name, b.pages << b.page_shift, uint64_t{1} << b.page_shift, b.initial);
    if (!s.ok()) return s;
  }
  const uint64_t ops = trace.ops.size();
  const uint64_t tail = std::min(commits * conversions_per_commit, ops / 2);
  for (uint64_t i = 0; i < ops - tail; ++i) {
    Status s = Apply(&vm, trace, trace.ops[i]);
    if (!s.ok()) return s;
  }

  const char* tmp = getenv("TMPDIR");
  std::string tmpl =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/cvmstate-bench-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    return Status::IOError("cannot create a temporary directory for the checkpoint store in " +
                           tmpl);
  }
  TempDir dir{tmpl};
  auto store = CheckpointStore::Open(dir.path + "/db");
  if (!store.ok()) return store.status();
  CheckpointFigures f;
  f.conversions_per_commit = conversions_per_commit;
  {
    VmCheckpointer cp(store.value().get(), "bench");
    auto t0 = std::chrono::steady_clock::now();
    auto c = cp.CommitState(vm);
    if (!c.ok()) return c.status();
    f.full_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    f.full_bytes = c.value().bytes;
    for (size_t i = 0; i < vm.num_blocks(); ++i) f.runs += vm.block(i).CountRuns();

    std::vector<double> cpu, wall;
    std::vector<uint64_t> bytes;
    for (uint64_t i = ops - tail; i < ops;) {
      const uint64_t end = std::min(ops, i + conversions_per_commit);
      for (; i < end; ++i) {
        Status s = Apply(&vm, trace, trace.ops[i]);
        if (!s.ok()) return s;
      }
      const double c0 = ThreadCpuNs();
      t0 = std::chrono::steady_clock::now();
      c = cp.CommitState(vm);
      if (!c.ok()) return c.status();
      wall.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      cpu.push_back(ThreadCpuNs() - c0);
      bytes.push_back(c.value().bytes);
    }
    f.commits = cpu.size();
    f.incremental_cpu_ns = Median(cpu);
    f.incremental_ms = Median(wall);
    f.incremental_bytes = Median(bytes);
  }
  return f;
}

}  // namespace cvmstate::tools

// cvmstate bench TRACE [--json] [--repeat N]
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include "bench/harness.h"
#include "tools/checkpoint_bench.h"
#include "tools/commands.h"
#include "tools/output.h"

namespace cvmstate::tools {
namespace {

struct BenchOptions {
  std::string trace;
  bool json = false;
  int repeat = 3;
};

std::string JsonString(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o.push_back('\\');
      o.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o.push_back(c);
    }
  }
  return o + "\"";
}

double Ratio(double a, double b) { return b > 0 ? a / b : 0; }

int RunBenchCommand(const BenchOptions& o) {
  bench::ParsedTrace trace;
  Status s = bench::ParseTraceFile(o.trace, &trace);
  if (!s.ok()) return Fail(s.message());
  if (trace.skipped_lines > 0) {
    std::fprintf(stderr, "cvmstate: bench: skipped %" PRIu64 " invalid line(s), first at %s:%s\n",
                 trace.skipped_lines, o.trace.c_str(), trace.first_error.c_str());
  }
  auto run = bench::RunBench(trace, o.repeat);
  // Mirrors replay --impl, whose std::bad_alloc main reports as "out of memory".
  if (!run.ok()) return Fail(run.status().message());
  const bench::BenchReport& rep = run.value();
  // The store's side (cvmstate only): after the replays, on its own state.
  auto ckpt = MeasureCheckpoints(trace);
  if (!ckpt.ok()) return Fail("cannot measure checkpoints: " + ckpt.status().message());
  const CheckpointFigures& cf = ckpt.value();
  if (o.json) {
    std::string j = "{\"trace\": " + JsonString(o.trace) + ", \"ops\": " + std::to_string(rep.ops) +
                    ", \"repeat\": " + std::to_string(o.repeat) + ", \"impls\": {";
    bool first = true;
    for (const auto& r : rep.impls) {
      if (!r.supported) continue;
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s\"%s\": {\"bytes\": %" PRIu64 ", \"apply_ns\": %.2f, \"lookup_ns\": %.2f, "
                    "\"scan_shared_ns\": %.0f, \"runs\": %" PRIu64 ", \"shared_runs\": %" PRIu64,
                    first ? "" : ", ", r.name.c_str(), r.bytes, r.apply_ns, r.lookup_ns, r.scan_shared_ns, r.runs,
                    r.shared_runs);
      j += buf;
      if (&r == &rep.impls[0]) {
        std::snprintf(buf, sizeof buf, ", \"apply_listeners_ns\": %.2f, \"checkpoint_incremental_ns\": %.0f",
                      r.apply_listeners_ns, cf.incremental_cpu_ns);
        j += buf;
      }
      j += "}";
      first = false;
    }
    j += "}, \"agree\": " + std::string(rep.agree ? "true" : "false") + "}\n";
    std::fputs(j.c_str(), stdout);
  } else {
    std::printf("trace %s: %" PRIu64 " conversions, %zu block(s), median of %d run(s)\n", o.trace.c_str(),
                rep.ops, trace.blocks.size(), o.repeat);
    std::printf("%-9s %14s %8s %10s %10s %16s %10s %14s\n", "impl", "bytes", "B/run", "apply ns", "lookup ns",
                "scan-shared ns", "runs", "listeners ns");
    for (const auto& r : rep.impls) {
      if (!r.supported) {
        std::printf("%-9s (not run: %s)\n", r.name.c_str(), r.why_unsupported.c_str());
        continue;
      }
      std::printf("%-9s %14" PRIu64 " %8.2f %10.1f %10.1f %16.0f %10" PRIu64, r.name.c_str(), r.bytes,
                  r.runs ? static_cast<double>(r.bytes) / static_cast<double>(r.runs) : 0.0, r.apply_ns,
                  r.lookup_ns, r.scan_shared_ns, r.runs);
      if (&r == &rep.impls[0]) {
        std::printf(" %14.1f\n", r.apply_listeners_ns);
      } else {
        std::printf(" %14s\n", "-");
      }
    }
    std::printf("checkpoints (cvmstate, a store in TMPDIR): full %.1f ms, %" PRIu64 " bytes at %" PRIu64
                " runs; incremental every %" PRIu64 " conversions (median of %" PRIu64 "): %.1f us CPU, %.2f ms "
                "with sync, %" PRIu64 " bytes\n",
                cf.full_ms, cf.full_bytes, cf.runs, cf.conversions_per_commit, cf.commits,
                cf.incremental_cpu_ns / 1e3, cf.incremental_ms, cf.incremental_bytes);
    const bench::ImplResult& c = rep.impls[0];
    std::printf("cvmstate against each baseline (lower is better for cvmstate):\n");
    for (size_t i = 1; i < rep.impls.size(); ++i) {
      const auto& r = rep.impls[i];
      if (!r.supported) continue;
      std::printf("  vs %-8s bytes %.4f  apply %.3f  lookup %.3f  scan-shared %.4f\n", r.name.c_str(),
                  Ratio(static_cast<double>(c.bytes), static_cast<double>(r.bytes)), Ratio(c.apply_ns, r.apply_ns),
                  Ratio(c.lookup_ns, r.lookup_ns), Ratio(c.scan_shared_ns, r.scan_shared_ns));
    }
  }
  if (std::fflush(stdout) != 0) return Fail("cannot write to standard output");
  if (!rep.agree) return Fail("implementations disagree on the final state: " + rep.disagreement);
  return 0;
}

}  // namespace

void AddBenchCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* sub = app.add_subcommand(
      "bench",
      "Replay a trace into every implementation (cvmstate, bitmap, roaring, icl)\n"
      "and compare heap bytes, ns per conversion, ns per lookup and ns to\n"
      "enumerate the shared runs; for cvmstate also the listener path and\n"
      "checkpoints into a store in $TMPDIR. Fails if they disagree on the final state.\n"
      "Example: cvmstate gen --profile steady --size 1T --ops 200000 > s.trace && cvmstate bench s.trace");
  sub->add_option("TRACE", o->trace, "Trace file")->required();
  sub->add_flag("--json", o->json, "Print one JSON object instead of a table");
  sub->add_option("--repeat", o->repeat, "Replays per implementation; medians are reported (default 3)")
      ->check(CLI::Range(1, 100));
  sub->callback([o, exit_code] { *exit_code = RunBenchCommand(*o); });
}

}  // namespace cvmstate::tools

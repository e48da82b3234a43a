// The comparison behind `cvmstate bench`: a trace parsed once into
// operations, replayed into each implementation, measured the same way.
#ifndef CVMSTATE_BENCH_HARNESS_H_
#define CVMSTATE_BENCH_HARNESS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tracker/page_state.h"
#include "tracker/status.h"

namespace cvmstate::bench {

struct BenchBlock {
  std::string name;
  uint64_t pages;
  unsigned page_shift;
  PageState initial;
};

struct BenchOp {
  uint32_t block;
  PageState state;
  uint64_t begin, end;  // pages
};

// A validated trace: invalid lines are skipped and counted.
struct ParsedTrace {
  std::vector<BenchBlock> blocks;
  std::vector<BenchOp> ops;
  uint64_t skipped_lines = 0;
  std::string first_error;  // "LINE: REASON" of the first skipped line
};

// Reads and validates a trace with the same rules as `replay`.
Status ParseTraceFile(const std::string& path, ParsedTrace* out);

struct ImplResult {
  std::string name;
  bool supported = true;
  std::string why_unsupported;
  uint64_t bytes = 0;         // heap bytes held after the replay
  // Median over repeats of ns per conversion; a repeat is the mean of
  // replays into new blocks (20 ms of them, at most 16) after one untimed.
  double apply_ns = 0;
  double lookup_ns = 0;       // median ns per random state lookup
  double scan_shared_ns = 0;  // median ns to enumerate every shared run
  uint64_t runs = 0;          // maximal runs of the final state
  uint64_t shared_runs = 0;
  // cvmstate only (0 for the baselines): median ns per conversion through
  // the whole path a VMM runs, BlockTracker::Convert with the change
  // journal on, an extent-mode VFIO listener and a KVM memory-attribute
  // listener on every block (the simulations in sim/).
  double apply_listeners_ns = 0;
};

struct BenchReport {
  uint64_t ops = 0;
  std::vector<ImplResult> impls;
  bool agree = true;
  std::string disagreement;  // which implementation differs, and where
};

// Replays `trace` into every implementation `repeat` times (at least once).
// If an implementation cannot get its memory (std::bad_alloc while it is
// built on its own thread), stops there: Refused saying which, for example
// "out of memory in the bitmap baseline".
Result<BenchReport> RunBench(const ParsedTrace& trace, int repeat);

}  // namespace cvmstate::bench

#endif  // CVMSTATE_BENCH_HARNESS_H_

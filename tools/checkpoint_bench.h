// What checkpoints of a trace's state cost in a real store, for `cvmstate
// bench`: a full checkpoint of the state the trace builds up to its tail,
// then one incremental checkpoint after every few conversions of the tail.
#ifndef CVMSTATE_TOOLS_CHECKPOINT_BENCH_H_
#define CVMSTATE_TOOLS_CHECKPOINT_BENCH_H_

#include <cstdint>

#include "bench/harness.h"
#include "tracker/status.h"

namespace cvmstate::tools {

struct CheckpointFigures {
  uint64_t runs = 0;        // runs of the state at the full checkpoint
  uint64_t full_bytes = 0;  // keys plus values written
  double full_ms = 0;       // wall time, sync included
  uint64_t commits = 0;     // incremental checkpoints measured
  uint64_t conversions_per_commit = 0;
  // Medians over the incremental checkpoints.
  double incremental_cpu_ns = 0;  // CPU time of the committing thread (no fsync wait)
  double incremental_ms = 0;      // wall time, sync included
  uint64_t incremental_bytes = 0;
};

// Replays trace into a VmState, keeping back its last `commits` x
// `conversions_per_commit` conversions (or half of them, if the trace is
// shorter), commits the state to a new store in a temporary directory
// (TMPDIR, or /tmp), then applies the kept-back conversions committing
// after each `conversions_per_commit`; the directory is removed at the
// end. IOError if the store cannot be made or written.
Result<CheckpointFigures> MeasureCheckpoints(const bench::ParsedTrace& trace,
                                             uint64_t commits = 100,
                                             uint64_t conversions_per_commit = 10);

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_CHECKPOINT_BENCH_H_

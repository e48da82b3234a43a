// The page-state implementations that `cvmstate replay --impl` and
// `cvmstate bench` compare: cvmstate's RunMap and three baselines a VMM
// developer would otherwise pick. Baselines live here, never in the library.
#ifndef CVMSTATE_BENCH_IMPLS_H_
#define CVMSTATE_BENCH_IMPLS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tracker/page_state.h"
#include "tracker/run_map.h"
#include "tracker/status.h"

namespace cvmstate::bench {

// Receives runs [begin, end) of pages in `state`.
using RunSink = void (*)(void* ctx, uint64_t begin, uint64_t end, PageState state);

// Pages [begin, end): the run map's own batch element, so that its
// batches go to a sink uncopied.
using PageSpan = PageRange;
// Receives n runs, ascending: how a destination takes shared runs to map
// them, a buffer at a time (the way iovecs or KVM's range calls batch), so
// the scan is not priced by one indirect call per run.
using RunBatchSink = void (*)(void* ctx, const PageSpan* runs, size_t n);

// Calls walk(add), where add(begin, end) gathers a run, and hands the
// runs to sink 256 at a time and once more at the end. The buffer and its
// count are locals of one inlined frame, so the count stays in a register
// and a stored run cannot alias it.
template <typename Walk>
inline void HandOverRuns(RunBatchSink sink, void* ctx, Walk&& walk) {
  constexpr size_t kRuns = 256;
  PageSpan runs[kRuns];
  size_t n = 0;
  walk([&](uint64_t begin, uint64_t end) {
    runs[n++] = PageSpan{begin, end};
    if (n == kRuns) {
      sink(ctx, runs, n);
      n = 0;
    }
  });
  if (n != 0) sink(ctx, runs, n);
}

// One small interface for all implementations. Blocks are numbered in the
// order they were added; callers validate ranges before calling.
class TrackerImpl {
 public:
  virtual ~TrackerImpl() = default;
  virtual const char* name() const = 0;
  // Adds a block of `pages` pages in state `initial`. Fails if this
  // implementation cannot represent it (roaring: more than 2^32 pages).
  virtual Status AddBlock(uint64_t pages, PageState initial) = 0;
  // Sets pages [begin, end) of block to s (begin < end <= pages).
  virtual void Assign(size_t block, uint64_t begin, uint64_t end, PageState s) = 0;
  virtual PageState Get(size_t block, uint64_t page) const = 0;
  // Every maximal run of the block, ascending.
  virtual void ForEachRun(size_t block, RunSink sink, void* ctx) const = 0;
  // Only the maximal shared runs, in batches: what a destination walks to
  // rebuild DMA mappings, each implementation in its fastest way.
  virtual void ForEachSharedRun(size_t block, RunBatchSink sink, void* ctx) const = 0;
  // Called once after a replay, before memory is measured (roaring
  // run-optimizes its containers here).
  virtual void Finish() {}
};

// "cvmstate", "bitmap", "roaring", "icl".
const std::vector<std::string>& ImplNames();
// A new, empty implementation, or nullptr for an unknown name.
std::unique_ptr<TrackerImpl> MakeImpl(std::string_view name);

// Bytes the C/C++ heap has handed out right now (glibc mallinfo2), so every
// implementation is measured by the same counter, library code included.
size_t HeapBytesInUse();

}  // namespace cvmstate::bench

#endif  // CVMSTATE_BENCH_IMPLS_H_

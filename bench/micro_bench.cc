// Micro-benchmarks of the run map's hot paths, beside the bitmap baseline.
// Run: build/bench/cvmstate_micro_bench
#include <benchmark/benchmark.h>

#include <memory>

#include "bench/impls.h"

namespace cvmstate::bench {
namespace {

constexpr uint64_t kPages = uint64_t{1} << 28;  // 1 TiB of 4 KiB pages

uint64_t Next(uint64_t& x) {
  x ^= x << 13, x ^= x >> 7, x ^= x << 17;
  return x;
}

// A map fragmented by `runs` random single-page conversions.
std::unique_ptr<TrackerImpl> Fragmented(const char* name, uint64_t pages, int runs) {
  auto impl = MakeImpl(name);
  (void)impl->AddBlock(pages, PageState::kPrivate);
  uint64_t x = 88172645463325252ULL;
  for (int i = 0; i < runs; ++i) {
    uint64_t p = Next(x) % pages;
    impl->Assign(0, p, p + 1, static_cast<PageState>(Next(x) % 3));
  }
  impl->Finish();
  return impl;
}

void BM_ConvertPage(benchmark::State& st, const char* name) {
  auto impl = Fragmented(name, kPages, 100000);
  uint64_t x = 1;
  for (auto _ : st) {
    uint64_t p = Next(x) % kPages;
    impl->Assign(0, p, p + 1, static_cast<PageState>(p % 3));
  }
}

// Single pages on a 4 GiB map fragmented into dense chunks (the frag trace).
void BM_ConvertPageDense(benchmark::State& st, const char* name) {
  constexpr uint64_t kSmall = uint64_t{1} << 20;
  auto impl = Fragmented(name, kSmall, 300000);
  uint64_t x = 1;
  for (auto _ : st) {
    uint64_t r = Next(x);
    uint64_t p = r % kSmall;
    impl->Assign(0, p, p + 1, static_cast<PageState>((r >> 40) % 3));
  }
}

void BM_ConvertRange(benchmark::State& st, const char* name) {
  auto impl = Fragmented(name, kPages, 100000);
  const uint64_t len = static_cast<uint64_t>(st.range(0));
  uint64_t x = 1;
  for (auto _ : st) {
    uint64_t p = (Next(x) % (kPages - len)) & ~(len - 1);
    impl->Assign(0, p, p + len, static_cast<PageState>(p % 3));
  }
}

void BM_Lookup(benchmark::State& st, const char* name) {
  auto impl = Fragmented(name, kPages, 100000);
  uint64_t x = 1;
  for (auto _ : st) benchmark::DoNotOptimize(impl->Get(0, Next(x) % kPages));
}

void BM_ScanShared(benchmark::State& st, const char* name) {
  auto impl = Fragmented(name, kPages, 100000);
  for (auto _ : st) {
    uint64_t n = 0;
    impl->ForEachSharedRun(0, [](void* p, const PageSpan*, size_t k) { *static_cast<uint64_t*>(p) += k; }, &n);
    benchmark::DoNotOptimize(n);
  }
}

BENCHMARK_CAPTURE(BM_ConvertPage, cvmstate, "cvmstate");
BENCHMARK_CAPTURE(BM_ConvertPage, bitmap, "bitmap");
BENCHMARK_CAPTURE(BM_ConvertPageDense, cvmstate, "cvmstate");
BENCHMARK_CAPTURE(BM_ConvertPageDense, bitmap, "bitmap");
BENCHMARK_CAPTURE(BM_ConvertRange, cvmstate, "cvmstate")->Arg(512)->Arg(262144);
BENCHMARK_CAPTURE(BM_ConvertRange, bitmap, "bitmap")->Arg(512)->Arg(262144);
BENCHMARK_CAPTURE(BM_Lookup, cvmstate, "cvmstate");
BENCHMARK_CAPTURE(BM_Lookup, bitmap, "bitmap");
BENCHMARK_CAPTURE(BM_Lookup, roaring, "roaring");
BENCHMARK_CAPTURE(BM_ScanShared, cvmstate, "cvmstate");
BENCHMARK_CAPTURE(BM_ScanShared, bitmap, "bitmap");

}  // namespace
}  // namespace cvmstate::bench

BENCHMARK_MAIN();

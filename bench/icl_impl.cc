// Baseline: Boost.ICL interval_map with set semantics (last write wins).
// Values are state+1 so that no state is the identity element that a
// joining interval_map would absorb.
#include <boost/icl/interval_map.hpp>
#include <memory>
#include <vector>

#include "bench/impls.h"

namespace cvmstate::bench {

std::unique_ptr<TrackerImpl> MakeIclImpl();

namespace {

using Map = boost::icl::interval_map<uint64_t, unsigned>;
using Interval = boost::icl::interval<uint64_t>;

class IclImpl final : public TrackerImpl {
 public:
  const char* name() const override { return "icl"; }
  Status AddBlock(uint64_t pages, PageState initial) override {
    maps_.emplace_back();
    maps_.back().set(std::make_pair(Interval::right_open(0, pages), static_cast<unsigned>(initial) + 1));
    return Status::OK();
  }
  void Assign(size_t bi, uint64_t a, uint64_t e, PageState s) override {
    maps_[bi].set(std::make_pair(Interval::right_open(a, e), static_cast<unsigned>(s) + 1));
  }
  PageState Get(size_t bi, uint64_t p) const override {
    auto it = maps_[bi].find(p);
    return static_cast<PageState>(it->second - 1);
  }
  void ForEachRun(size_t bi, RunSink sink, void* ctx) const override {
    for (const auto& seg : maps_[bi]) {
      sink(ctx, boost::icl::first(seg.first), boost::icl::last(seg.first) + 1,
           static_cast<PageState>(seg.second - 1));
    }
  }
  void ForEachSharedRun(size_t bi, RunBatchSink sink, void* ctx) const override {
    HandOverRuns(sink, ctx, [&](auto&& add) {
      for (const auto& seg : maps_[bi]) {
        if (seg.second == 1) add(boost::icl::first(seg.first), boost::icl::last(seg.first) + 1);
      }
    });
  }

 private:
  std::vector<Map> maps_;
};

}  // namespace

std::unique_ptr<TrackerImpl> MakeIclImpl() { return std::make_unique<IclImpl>(); }

}  // namespace cvmstate::bench

#include <memory>
#include <vector>

#include "bench/impls.h"
#include "tracker/run_map.h"

namespace cvmstate::bench {

std::unique_ptr<TrackerImpl> MakeRunMapImpl();

namespace {

class RunMapImpl final : public TrackerImpl {
 public:
  const char* name() const override { return "cvmstate"; }
  Status AddBlock(uint64_t pages, PageState initial) override {
    maps_.push_back(std::make_unique<RunMap>(pages, initial));
    return Status::OK();
  }
  void Assign(size_t b, uint64_t begin, uint64_t end, PageState s) override { maps_[b]->Assign(begin, end, s); }
  PageState Get(size_t b, uint64_t page) const override { return maps_[b]->Get(page); }
  void ForEachRun(size_t b, RunSink sink, void* ctx) const override {
    maps_[b]->ForEachRun([&](const Run& r) {
      sink(ctx, r.begin, r.end, r.state);
      return true;
    });
  }
  void ForEachSharedRun(size_t b, RunBatchSink sink, void* ctx) const override {
    const RunMap& m = *maps_[b];
    m.ForEachRunBatchOf(PageState::kShared, 0, m.pages(), [&](const PageRange* runs, size_t n) { sink(ctx, runs, n); });
  }

 private:
  std::vector<std::unique_ptr<RunMap>> maps_;
};

}  // namespace

std::unique_ptr<TrackerImpl> MakeRunMapImpl() { return std::make_unique<RunMapImpl>(); }

}  // namespace cvmstate::bench

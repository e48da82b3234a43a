// Baseline: CRoaring bitmaps, one per non-default state, run-optimized.
// 32-bit page indices, so a block may hold at most 2^32 pages (16 TiB).
#include <roaring/roaring.h>

#include <memory>
#include <vector>

#include "bench/impls.h"

namespace cvmstate::bench {

std::unique_ptr<TrackerImpl> MakeRoaringImpl();

namespace {

struct Coalescer {
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  static bool Add(uint32_t v, void* p) {
    auto* c = static_cast<Coalescer*>(p);
    if (!c->runs.empty() && c->runs.back().second == v) {
      ++c->runs.back().second;
    } else {
      c->runs.emplace_back(v, uint64_t{v} + 1);
    }
    return true;
  }
};

class RoaringImpl final : public TrackerImpl {
 public:
  ~RoaringImpl() override {
    for (Block& b : blocks_) {
      roaring_bitmap_free(b.bm[0]);
      roaring_bitmap_free(b.bm[1]);
    }
  }
  const char* name() const override { return "roaring"; }
  Status AddBlock(uint64_t pages, PageState initial) override {
    if (pages > (uint64_t{1} << 32)) {
      return Status::InvalidArgument("roaring: a block over 2^32 pages does not fit 32-bit bitmaps");
    }
    Block b;
    b.pages = pages;
    b.def = initial;
    int k = 0;
    for (int s = 0; s < kNumPageStates; ++s) {
      if (s == static_cast<int>(initial)) continue;
      b.st[k] = static_cast<PageState>(s);
      b.bm[k++] = roaring_bitmap_create();
    }
    blocks_.push_back(b);
    return Status::OK();
  }
  void Assign(size_t bi, uint64_t a, uint64_t e, PageState s) override {
    Block& b = blocks_[bi];
    for (int k = 0; k < 2; ++k) {
      if (b.st[k] == s) {
        roaring_bitmap_add_range(b.bm[k], a, e);
      } else {
        roaring_bitmap_remove_range(b.bm[k], a, e);
      }
    }
  }
  PageState Get(size_t bi, uint64_t p) const override {
    const Block& b = blocks_[bi];
    if (roaring_bitmap_contains(b.bm[0], static_cast<uint32_t>(p))) return b.st[0];
    if (roaring_bitmap_contains(b.bm[1], static_cast<uint32_t>(p))) return b.st[1];
    return b.def;
  }
  void ForEachRun(size_t bi, RunSink sink, void* ctx) const override {
    const Block& b = blocks_[bi];
    Coalescer c[2];
    roaring_iterate(b.bm[0], &Coalescer::Add, &c[0]);
    roaring_iterate(b.bm[1], &Coalescer::Add, &c[1]);
    // Merge the two sorted run lists; gaps are in the default state.
    size_t i = 0, j = 0;
    uint64_t pos = 0;
    while (pos < b.pages) {
      const std::pair<uint64_t, uint64_t>* next = nullptr;
      PageState st = b.def;
      if (i < c[0].runs.size() && (j >= c[1].runs.size() || c[0].runs[i].first < c[1].runs[j].first)) {
        next = &c[0].runs[i];
        st = b.st[0];
      } else if (j < c[1].runs.size()) {
        next = &c[1].runs[j];
        st = b.st[1];
      }
      if (next == nullptr || next->first > pos) {
        uint64_t end = next == nullptr ? b.pages : next->first;
        sink(ctx, pos, end, b.def);
        pos = end;
        continue;
      }
      sink(ctx, next->first, next->second, st);
      pos = next->second;
      if (st == b.st[0] && next == &c[0].runs[i]) ++i; else ++j;
    }
  }
  void ForEachSharedRun(size_t bi, RunBatchSink sink, void* ctx) const override {
    const Block& b = blocks_[bi];
    HandOverRuns(sink, ctx, [&](auto&& add) {
      if (b.def != PageState::kShared) {
        Coalescer c;
        roaring_iterate(b.bm[b.st[0] == PageState::kShared ? 0 : 1], &Coalescer::Add, &c);
        for (auto& r : c.runs) add(r.first, r.second);
        return;
      }
      using Add = std::remove_reference_t<decltype(add)>;
      ForEachRun(bi, [](void* p, uint64_t a, uint64_t e, PageState s) {
        if (s == PageState::kShared) (*static_cast<Add*>(p))(a, e);
      }, &add);
    });
  }
  void Finish() override {
    for (Block& b : blocks_) {
      roaring_bitmap_run_optimize(b.bm[0]);
      roaring_bitmap_run_optimize(b.bm[1]);
    }
  }

 private:
  struct Block {
    uint64_t pages = 0;
    PageState def = PageState::kPrivate;
    PageState st[2] = {};
    roaring_bitmap_t* bm[2] = {nullptr, nullptr};
  };
  std::vector<Block> blocks_;
};

}  // namespace

std::unique_ptr<TrackerImpl> MakeRoaringImpl() { return std::make_unique<RoaringImpl>(); }

}  // namespace cvmstate::bench

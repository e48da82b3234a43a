// Baseline: a dense 2-bit-per-page map with word-at-a-time scans, the way
// QEMU's RamBlockAttributes keeps its 1-bit shared bitmap, extended to
// three states.
#include <algorithm>
#include <bit>
#include <memory>
#include <vector>

#include "bench/impls.h"

namespace cvmstate::bench {

std::unique_ptr<TrackerImpl> MakeBitmapImpl();

namespace {

constexpr uint64_t kLo = 0x5555555555555555ULL;

class BitmapImpl final : public TrackerImpl {
 public:
  const char* name() const override { return "bitmap"; }
  Status AddBlock(uint64_t pages, PageState initial) override {
    if (pages > (uint64_t{1} << 33)) {
      return Status::InvalidArgument("bitmap: a block over 2^33 pages would need more than 2 GiB of bitmap");
    }
    Block b;
    b.pages = pages;
    b.words.assign((pages + 31) / 32, kLo * static_cast<uint64_t>(initial));
    blocks_.push_back(std::move(b));
    return Status::OK();
  }
  void Assign(size_t bi, uint64_t a, uint64_t e, PageState s) override {
    uint64_t* w = blocks_[bi].words.data();
    const uint64_t pat = kLo * static_cast<uint64_t>(s);
    uint64_t wa = a >> 5, we = (e - 1) >> 5;
    uint64_t ma = ~uint64_t{0} << (2 * (a & 31));
    uint64_t me = ~uint64_t{0} >> (62 - 2 * ((e - 1) & 31));
    if (wa == we) {
      uint64_t m = ma & me;
      w[wa] = (w[wa] & ~m) | (pat & m);
      return;
    }
    w[wa] = (w[wa] & ~ma) | (pat & ma);
    std::fill(w + wa + 1, w + we, pat);
    w[we] = (w[we] & ~me) | (pat & me);
  }
  PageState Get(size_t bi, uint64_t p) const override {
    return static_cast<PageState>((blocks_[bi].words[p >> 5] >> (2 * (p & 31))) & 3);
  }
  void ForEachRun(size_t bi, RunSink sink, void* ctx) const override {
    const Block& b = blocks_[bi];
    uint64_t p = 0;
    while (p < b.pages) {
      unsigned st = static_cast<unsigned>(Get(bi, p));
      uint64_t q = NextNot(b, p + 1, kLo * st);
      sink(ctx, p, q, static_cast<PageState>(st));
      p = q;
    }
  }
  void ForEachSharedRun(size_t bi, RunBatchSink sink, void* ctx) const override {
    const Block& b = blocks_[bi];
    const uint64_t* w = b.words.data();
    const uint64_t nw = b.words.size(), pages = b.pages;
    HandOverRuns(sink, ctx, [&](auto&& add) {
      uint64_t p = 0;
      while (p < pages) {
        // Find the next shared page: a group with both bits clear.
        uint64_t wi = p >> 5;
        uint64_t x = w[wi];
        uint64_t shared = ~(x | (x >> 1)) & kLo & (~uint64_t{0} << (2 * (p & 31)));
        while (shared == 0 && ++wi < nw) {
          x = w[wi];
          shared = ~(x | (x >> 1)) & kLo;
        }
        if (shared == 0) break;
        uint64_t start = (wi << 5) + (std::countr_zero(shared) >> 1);
        if (start >= pages) break;
        uint64_t end = NextNot(b, start + 1, 0);
        add(start, end);
        p = end;
      }
    });
  }

 private:
  struct Block {
    uint64_t pages = 0;
    std::vector<uint64_t> words;
  };
  // First page >= p whose group differs from pattern pat; pages if none.
  static uint64_t NextNot(const Block& b, uint64_t p, uint64_t pat) {
    const uint64_t* w = b.words.data();
    const uint64_t nw = b.words.size();
    if (p >= b.pages) return b.pages;
    uint64_t wi = p >> 5;
    uint64_t t = w[wi] ^ pat;
    uint64_t nz = (t | (t >> 1)) & kLo & (~uint64_t{0} << (2 * (p & 31)));
    while (nz == 0 && ++wi < nw) {
      t = w[wi] ^ pat;
      nz = (t | (t >> 1)) & kLo;
    }
    if (nz == 0) return b.pages;
    return std::min(b.pages, (wi << 5) + (std::countr_zero(nz) >> 1));
  }
  std::vector<Block> blocks_;
};

}  // namespace

std::unique_ptr<TrackerImpl> MakeBitmapImpl() { return std::make_unique<BitmapImpl>(); }

}  // namespace cvmstate::bench

#include "codec/state_digest.h"

#include <array>

#include "codec/chunk_walk.h"

namespace cvmstate {
namespace {

using namespace digest_math;

inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The base of the chunk powers: any value other than 0 and 1 would do; a
// fixed one keeps digests comparable between processes.
constexpr uint64_t kBase = 0x0d1b54a32d192ed0ULL % kPrime;

uint64_t PowMod(uint64_t b, uint64_t e) {
  uint64_t r = 1;
  while (e != 0) {
    if (e & 1) r = MulMod(r, b);
    b = MulMod(b, b);
    e >>= 1;
  }
  return r;
}

struct Constants {
  uint64_t inv_base_minus_1;                  // 1 / (R - 1)
  std::array<uint64_t, kNumPageStates> full;  // hash of a whole chunk of one state
};

const Constants& Consts() {
  static const Constants c = [] {
    Constants k{};
    k.inv_base_minus_1 = PowMod(kBase - 1, kPrime - 2);  // Fermat
    for (int s = 0; s < kNumPageStates; ++s) {
      k.full[s] = ChunkRunsHash({{uint64_t{1} << kDigestChunkShift, static_cast<PageState>(s)}});
    }
    return k;
  }();
  return c;
}

}  // namespace

uint64_t digest_math::MulMod(uint64_t a, uint64_t b) {
  const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
  const uint64_t r = (static_cast<uint64_t>(p) & kPrime) + static_cast<uint64_t>(p >> 61);
  return r >= kPrime ? r - kPrime : r;
}

void StateDigest::Add(uint64_t x) {
  ++n_;
  a_ = Mix(a_ ^ x) + n_;
  b_ = Mix(b_ + x * 0x9e3779b97f4a7c15ULL) ^ a_;
}

void StateDigest::Add(std::string_view s) {
  Add(s.size());
  uint64_t w = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    w = (w << 8) | static_cast<unsigned char>(s[i]);
    if (i % 8 == 7) Add(w), w = 0;
  }
  Add(w);
}

uint64_t StateDigest::Finish() const { return Mix(a_ ^ Mix(b_ ^ n_)); }

uint64_t ChunkRunsHash(const std::vector<ChunkRun>& runs) {
  StateDigest d;
  d.Add(runs.size());
  for (const ChunkRun& r : runs) d.Add(r.pages << 2 | static_cast<uint64_t>(r.state));
  return d.Finish() % kPrime;
}

uint64_t ChunkTerm(uint64_t c, uint64_t h) { return MulMod(h, PowMod(kBase, c)); }

uint64_t UniformTerms(uint64_t pages, uint64_t a, uint64_t z, PageState s) {
  if (a >= z) return 0;
  uint64_t sum = 0;
  const uint64_t short_pages = pages & ((uint64_t{1} << kDigestChunkShift) - 1);
  if (short_pages != 0 && z == ChunkCount(pages, kDigestChunkShift)) {
    // The block's last chunk is short: its hash is of fewer pages.
    --z;
    sum = ChunkTerm(z, ChunkRunsHash({{short_pages, s}}));
  }
  if (a < z) {
    const Constants& k = Consts();
    // h * (R^a + ... + R^(z-1)) = h * R^a * (R^(z-a) - 1) / (R - 1)
    const uint64_t series =
        MulMod(MulMod(PowMod(kBase, a), SubMod(PowMod(kBase, z - a), 1)), k.inv_base_minus_1);
    sum = AddMod(sum, MulMod(k.full[static_cast<int>(s)], series));
  }
  return sum;
}

uint64_t BlockDigestSum(const BlockTracker& b) {
  const uint64_t pages = BlockPages(b);
  uint64_t sum = 0;
  ForEachChunk(
      b, kDigestChunkShift, 0, ChunkCount(pages, kDigestChunkShift),
      [&](uint64_t a, uint64_t z, PageState s) { sum = AddMod(sum, UniformTerms(pages, a, z, s)); },
      [&](uint64_t c, const std::vector<ChunkRun>& runs) {
        sum = AddMod(sum, ChunkTerm(c, ChunkRunsHash(runs)));
      });
  return sum;
}

uint64_t CombineStateDigest(const VmState& vm, const std::vector<uint64_t>& sums) {
  StateDigest d;
  d.Add(vm.num_blocks());
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    d.Add(b.name());
    d.Add(b.size());
    d.Add(b.page_size());
    d.Add(i < sums.size() ? sums[i] : 0);
  }
  return d.Finish();
}

uint64_t ComputeStateDigest(const VmState& vm) {
  std::vector<uint64_t> sums;
  sums.reserve(vm.num_blocks());
  for (size_t i = 0; i < vm.num_blocks(); ++i) sums.push_back(BlockDigestSum(vm.block(i)));
  return CombineStateDigest(vm, sums);
}

uint64_t ComputeRunListDigest(const VmState& vm) {
  StateDigest d;
  d.Add(vm.num_blocks());
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    const BlockTracker& b = vm.block(i);
    d.Add(b.name());
    d.Add(b.size());
    d.Add(b.page_size());
    b.map().ForEachRun([&d](const Run& r) {
      d.Add(r.begin);
      d.Add(r.end);
      d.Add(static_cast<uint64_t>(r.state));
      return true;
    });
  }
  return d.Finish();
}

}  // namespace cvmstate

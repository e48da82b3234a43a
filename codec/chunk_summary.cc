#include "codec/chunk_summary.h"

#include <iterator>

#include "codec/chunk_walk.h"
#include "codec/state_digest.h"

namespace cvmstate {
namespace {

using namespace digest_math;

}  // namespace

void ChunkSummary::Rebuild(const BlockTracker& b) {
  pieces_.clear();
  pages_ = BlockPages(b);
  chunks_ = ChunkCount(pages_, kDigestChunkShift);
  sum_ = 0;
  Read(b, 0, chunks_);
  runs_ = LocalRuns(0, chunks_);
  ++stretch_version_;
}

void ChunkSummary::Update(const BlockTracker& b, uint64_t c0, uint64_t c1) {
  if (pages_ != BlockPages(b) || pieces_.empty()) return Rebuild(b);
  c1 = std::min(c1, chunks_);
  if (c0 >= c1) return;
  // Only pieces meeting [x, y) can change; the joins with the pieces
  // around them stay, since their outer pages keep their states.
  const uint64_t x = c0 == 0 ? 0 : c0 - 1, y = std::min(chunks_, c1 + 1);
  const uint64_t before = LocalRuns(x, y);
  SplitAt(c0);
  if (c1 < chunks_) SplitAt(c1);
  // Stretches change only if a uniform piece goes or comes: detailed
  // chunks that stay detailed are one stretch kind whatever their runs.
  bool uniform = false;
  for (auto it = pieces_.find(c0); it != pieces_.end() && it->first < c1;) {
    uniform |= it->second.kind != kDetailed;
    sum_ = SubMod(sum_, Terms(it));
    it = pieces_.erase(it);
  }
  uniform |= Read(b, c0, c1);
  if (uniform) ++stretch_version_;
  if (c1 < chunks_) JoinAt(c1);
  if (c0 > 0) JoinAt(c0);
  runs_ += LocalRuns(x, y) - before;  // modulo 2^64: the result is the count
}

void ChunkSummary::UpdatePages(const BlockTracker& b, uint64_t begin, uint64_t end) {
  if (begin < end) Update(b, begin >> kDigestChunkShift, ((end - 1) >> kDigestChunkShift) + 1);
}

bool ChunkSummary::Read(const BlockTracker& b, uint64_t c0, uint64_t c1) {
  // [c0, c1) holds no piece now; each new one goes before the piece at c1.
  const auto next = pieces_.lower_bound(c1);
  bool uniform = false;
  ForEachChunk(
      b, kDigestChunkShift, c0, c1,
      [&](uint64_t a, uint64_t z, PageState s) {
        const uint8_t k = static_cast<uint8_t>(s);
        uniform = true;
        pieces_.emplace_hint(next, a, Piece{z, 0, 0, k, k, k});
        sum_ = AddMod(sum_, UniformTerms(pages_, a, z, s));
      },
      [&](uint64_t c, const std::vector<ChunkRun>& runs) {
        const uint64_t term = ChunkTerm(c, ChunkRunsHash(runs));
        pieces_.emplace_hint(next, c,
                             Piece{c + 1, term, static_cast<uint32_t>(runs.size()), kDetailed,
                                   static_cast<uint8_t>(runs.front().state),
                                   static_cast<uint8_t>(runs.back().state)});
        sum_ = AddMod(sum_, term);
      });
  return uniform;
}

uint64_t ChunkSummary::Terms(const Map::const_iterator& it) const {
  const Piece& p = it->second;
  if (p.kind == kDetailed) return p.term;
  return UniformTerms(pages_, it->first, p.end, static_cast<PageState>(p.kind));
}

uint64_t ChunkSummary::LocalRuns(uint64_t x, uint64_t y) const {
  auto it = pieces_.upper_bound(x);
  if (it == pieces_.begin()) return 0;
  --it;
  uint64_t n = 0;
  bool have_prev = false;
  uint8_t prev_last = 0;
  for (; it != pieces_.end() && it->first < y; ++it) {
    const Piece& p = it->second;
    n += p.kind == kDetailed ? p.runs : 1;
    if (have_prev && prev_last == p.first) --n;
    have_prev = true;
    prev_last = p.last;
  }
  return n;
}

void ChunkSummary::SplitAt(uint64_t c) {
  auto it = pieces_.upper_bound(c);
  --it;  // pieces cover [0, chunks_): one starts at or before c
  if (it->first == c) return;
  // Only a uniform stretch spans more than one chunk.
  Piece right = it->second;
  it->second.end = c;
  pieces_.emplace_hint(std::next(it), c, right);
}

void ChunkSummary::JoinAt(uint64_t c) {
  auto it = pieces_.find(c);
  if (it == pieces_.end() || it == pieces_.begin()) return;
  auto prev = std::prev(it);
  if (prev->second.kind == kDetailed || prev->second.kind != it->second.kind) return;
  prev->second.end = it->second.end;
  pieces_.erase(it);
}

}  // namespace cvmstate

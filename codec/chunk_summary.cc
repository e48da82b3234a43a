#include "codec/chunk_summary.h"

#include <iterator>
#include <utility>
#include <vector>

#include "codec/chunk_walk.h"
#include "codec/state_digest.h"

namespace cvmstate {
namespace {

using namespace digest_math;

}  // namespace

void ChunkSummary::Rebuild(const BlockTracker& b) {
  pieces_.clear();
  codes_.clear();
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
  if (c1 == c0 + 1 && UpdateDetailed(b, c0)) return;
  // Only pieces meeting [x, y) can change; the joins with the pieces
  // around them stay, since their outer pages keep their states.
  const uint64_t x = c0 == 0 ? 0 : c0 - 1, y = std::min(chunks_, c1 + 1);
  const uint64_t before = LocalRuns(x, y);
  // The pieces that change start in [start of the piece holding x, y):
  // their segments' codes go.
  {
    auto it = pieces_.upper_bound(x);
    --it;
    codes_.erase(codes_.lower_bound(it->first >> kSegmentShift),
                 codes_.upper_bound((y - 1) >> kSegmentShift));
  }
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

bool ChunkSummary::UpdateDetailed(const BlockTracker& b, uint64_t c) {
  // The usual change between checkpoints: a chunk with several runs that
  // still has several. Its piece is replaced in place, the stretches stay
  // and the run count moves by the difference, joins with the neighbours
  // included: one search of the pieces instead of the general path's
  // several, which at 64 TiB (a piece per 512 MiB chunk) cost a few
  // microseconds each.
  const auto it = pieces_.find(c);
  if (it == pieces_.end() || it->second.kind != kDetailed) return false;
  Piece& p = it->second;
  const Piece old = p;
  bool detailed = false;
  ForEachChunk(
      b, kDigestChunkShift, c, c + 1, [](uint64_t, uint64_t, PageState) {},
      [&](uint64_t, const std::vector<ChunkRun>& runs) {
        detailed = true;
        p = DetailedPiece(c, runs);
      });
  if (!detailed) return false;  // turned uniform: the general path
  sum_ = AddMod(SubMod(sum_, old.term), p.term);
  // runs_ counts maximal runs: a piece's first run joins the previous
  // piece's last when their states match (a uniform piece's first and
  // last are its state), and likewise at its end. Modulo 2^64.
  uint64_t delta = uint64_t{p.runs} - old.runs;
  if (it != pieces_.begin()) {
    const uint8_t prev_last = std::prev(it)->second.last;
    delta += uint64_t{prev_last == old.first} - uint64_t{prev_last == p.first};
  }
  if (const auto next = std::next(it); next != pieces_.end()) {
    const uint8_t next_first = next->second.first;
    delta += uint64_t{next_first == old.last} - uint64_t{next_first == p.last};
  }
  runs_ += delta;
  return true;
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
        const Piece p = DetailedPiece(c, runs);
        pieces_.emplace_hint(next, c, p);
        sum_ = AddMod(sum_, p.term);
      });
  return uniform;
}

ChunkSummary::Piece ChunkSummary::DetailedPiece(uint64_t c, const std::vector<ChunkRun>& runs) {
  return Piece{c + 1, ChunkTerm(c, ChunkRunsHash(runs)), static_cast<uint32_t>(runs.size()), kDetailed,
               static_cast<uint8_t>(runs.front().state), static_cast<uint8_t>(runs.back().state)};
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

ChunkSummary::SegmentCode ChunkSummary::Encode(Map::const_iterator it) const {
  const uint64_t end = ((it->first >> kSegmentShift) + 1) << kSegmentShift;
  std::vector<std::pair<uint64_t, uint8_t>> v;
  for (; it != pieces_.end() && it->first < end; ++it) {
    const uint64_t n = it->second.end - it->first;
    if (!v.empty() && v.back().second == it->second.kind) {
      v.back().first += n;
    } else {
      v.push_back({n, it->second.kind});
    }
  }
  SegmentCode sc;
  sc.stretches = static_cast<uint32_t>(v.size());
  sc.first_chunks = v.front().first, sc.first_kind = v.front().second;
  sc.last_chunks = v.back().first, sc.last_kind = v.back().second;
  for (size_t i = 1; i + 1 < v.size(); ++i) {
    PutVarint(&sc.middle, v[i].first);
    sc.middle.push_back(static_cast<char>(v[i].second));
  }
  return sc;
}

void ChunkSummary::EncodeStretches(std::string* raw, uint32_t* count) const {
  raw->clear();
  *count = 0;
  bool have = false;  // a stretch waiting: the next may extend it
  uint64_t chunks = 0;
  uint8_t kind = 0;
  auto write = [&] {
    PutVarint(raw, chunks);
    raw->push_back(static_cast<char>(kind));
    ++*count;
  };
  for (auto it = pieces_.cbegin(); it != pieces_.cend();) {
    const uint64_t g = it->first >> kSegmentShift;
    auto code = codes_.find(g);
    if (code == codes_.end()) code = codes_.emplace(g, Encode(it)).first;
    const SegmentCode& sc = code->second;
    if (have && kind == sc.first_kind) {
      chunks += sc.first_chunks;
    } else {
      if (have) write();
      have = true, chunks = sc.first_chunks, kind = sc.first_kind;
    }
    if (sc.stretches >= 2) {
      write();
      raw->append(sc.middle);
      *count += sc.stretches - 2;
      chunks = sc.last_chunks, kind = sc.last_kind;
    }
    it = pieces_.lower_bound((g + 1) << kSegmentShift);
  }
  if (have) write();
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

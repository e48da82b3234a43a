// The walk that cuts a block into fixed-size chunks of pages, as the store's
// records and manifests see it (internal).
#ifndef CVMSTATE_CODEC_CHUNK_WALK_H_
#define CVMSTATE_CODEC_CHUNK_WALK_H_

#include <algorithm>
#include <cstdint>
#include <vector>

#include "codec/chunk_codec.h"
#include "tracker/block_tracker.h"

namespace cvmstate {

// Chunks of 2^shift pages needed to cover `pages` pages.
inline uint64_t ChunkCount(uint64_t pages, unsigned shift) {
  return (pages >> shift) + ((pages & ((uint64_t{1} << shift) - 1)) != 0 ? 1 : 0);
}
// Pages of a block, and the pages of its chunk c (the last may be short).
inline uint64_t BlockPages(const BlockTracker& b) { return b.size() >> b.page_shift(); }
inline uint64_t ChunkPagesAt(uint64_t pages, unsigned shift, uint64_t c) {
  return std::min(pages - (c << shift), uint64_t{1} << shift);
}

// Walks chunks [c0, c1) of a block cut into chunks of 2^shift pages:
// calls uniform(first_chunk, end_chunk, state) for each stretch of chunks
// that hold one state, and detailed(chunk, runs) for each chunk with more
// than one run, in ascending order. O(runs + stretches).
template <typename Uniform, typename Detailed>
void ForEachChunk(const BlockTracker& b, unsigned shift, uint64_t c0, uint64_t c1, Uniform&& uniform,
                  Detailed&& detailed) {
  const uint64_t pages = b.size() >> b.page_shift();
  const uint64_t begin = c0 << shift, end = std::min(pages, c1 << shift);
  if (begin >= end) return;
  std::vector<ChunkRun> cur;  // runs of the chunk being assembled
  uint64_t cur_chunk = c0;
  bool have_stretch = false;
  uint64_t st_begin = 0, st_end = 0;
  PageState st_state = PageState::kShared;
  auto flush_stretch = [&] {
    if (have_stretch) uniform(st_begin, st_end, st_state);
    have_stretch = false;
  };
  auto add_uniform = [&](uint64_t a, uint64_t z, PageState s) {  // chunks [a, z)
    if (have_stretch && st_end == a && st_state == s) {
      st_end = z;
      return;
    }
    flush_stretch();
    have_stretch = true;
    st_begin = a, st_end = z, st_state = s;
  };
  auto finish_chunk = [&] {
    if (cur.size() == 1) {
      add_uniform(cur_chunk, cur_chunk + 1, cur[0].state);
    } else if (!cur.empty()) {
      flush_stretch();
      detailed(cur_chunk, static_cast<const std::vector<ChunkRun>&>(cur));
    }
    cur.clear();
  };
  b.map().ForEachRun(begin, end, [&](const Run& r) {
    uint64_t p = r.begin;
    while (p < r.end) {
      const uint64_t c = p >> shift;
      if (c != cur_chunk) {
        finish_chunk();
        cur_chunk = c;
      }
      const uint64_t chunk_end = std::min(pages, (c + 1) << shift);
      // A run that covers whole chunks from a chunk start is a stretch.
      if (cur.empty() && (p & ((uint64_t{1} << shift) - 1)) == 0) {
        const uint64_t whole_end = std::min(r.end, pages) >> shift;
        const uint64_t last = (r.end == pages) ? ((pages + (uint64_t{1} << shift) - 1) >> shift) : whole_end;
        if (last > c) {
          add_uniform(c, last, r.state);
          p = std::min(r.end, last << shift);
          cur_chunk = last;
          continue;
        }
      }
      const uint64_t q = std::min(r.end, chunk_end);
      cur.push_back({q - p, r.state});
      p = q;
    }
    return true;
  });
  finish_chunk();
  flush_stretch();
}

}  // namespace cvmstate

#endif  // CVMSTATE_CODEC_CHUNK_WALK_H_

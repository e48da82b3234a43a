// The compact encoding of a chunk's runs shared by the store and the
// migration stream, and the walk that cuts a block into chunks.
//
// Raw form: varint run count, the states packed four to a byte, then one
// varint length (in pages) per run; compressed as one zstd frame with its
// checksum. Decoding treats every byte as hostile: sizes are capped before
// zstd runs, the window is capped, the output is counted, and the runs must
// be maximal, valid and cover the chunk exactly.
#ifndef CVMSTATE_CHUNK_CODEC_H_
#define CVMSTATE_CHUNK_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "cvmstate/block_tracker.h"
#include "cvmstate/page_state.h"
#include "cvmstate/status.h"

namespace cvmstate {

struct ChunkRun {
  uint64_t pages;
  PageState state;
};

// LEB128 varints. GetVarint consumes from *in; false if truncated or over
// 64 bits.
void PutVarint(std::string* out, uint64_t v);
bool GetVarint(std::string_view* in, uint64_t* v);

// Compresses raw into one zstd frame with checksum and content size.
Status ZstdCompress(std::string_view raw, std::string* out);
// Decompresses a frame that must hold exactly `size` bytes (size <= cap is
// checked first), with its checksum, and a capped window.
Status ZstdDecompressExact(std::string_view frame, size_t size, size_t cap, std::string* out);

// Appends the raw form of runs (count, packed states, lengths).
void AppendRuns(const std::vector<ChunkRun>& runs, std::string* raw);
// Consumes one raw run list from *in that must cover exactly `pages` pages
// with at most max_runs maximal runs. Corruption with a reason otherwise.
Status ParseRuns(std::string_view* in, uint64_t pages, uint64_t max_runs, std::vector<ChunkRun>* runs);

// Largest raw encoding of a chunk of `chunk_pages` pages.
size_t MaxRawChunkBytes(uint64_t chunk_pages);

// Encodes runs (maximal, covering the chunk) and compresses them into *out.
Status EncodeChunk(const std::vector<ChunkRun>& runs, std::string* out, uint32_t* raw_size);

// Decompresses and checks a payload; *runs gets exactly `expected_runs`
// maximal runs covering `chunk_pages` pages. Corruption (with a reason)
// otherwise; the caller adds which VM, block and chunk.
Status DecodeChunk(std::string_view payload, uint32_t raw_size, uint64_t chunk_pages, uint32_t expected_runs,
                   std::vector<ChunkRun>* runs);

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

#endif  // CVMSTATE_CHUNK_CODEC_H_

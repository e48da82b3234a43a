// ChunkSummary: what a checkpoint's manifest says of one block (its digest
// sum, its run count, its stretches of uniform chunks), kept up to date
// chunk range by chunk range, so that a checkpoint after k conversions
// costs the runs of the chunks they touched, not the whole state (internal).
// Not thread-safe, not even its const calls (EncodeStretches fills a
// cache): one owner at a time, as the VmState it describes.
#ifndef CVMSTATE_CODEC_CHUNK_SUMMARY_H_
#define CVMSTATE_CODEC_CHUNK_SUMMARY_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "codec/chunk_codec.h"
#include "tracker/block_tracker.h"

namespace cvmstate {

class ChunkSummary {
 public:
  // The stretch state of chunks with more than one run (in the manifest's
  // stretch list, beside the PageState values of uniform stretches).
  static constexpr uint8_t kDetailed = 3;

  // Summarises every chunk of b (chunks of 2^kDigestChunkShift pages).
  // O(runs + stretches).
  void Rebuild(const BlockTracker& b);
  // Reads chunks [c0, c1) of b again. Requires that no other chunk of b
  // changed since the last Rebuild or Update (a superset of the changed
  // chunks is fine). O(runs in them + pieces in them + log pieces).
  void Update(const BlockTracker& b, uint64_t c0, uint64_t c1);
  // Update for the chunks holding pages [begin, end) (none if empty).
  void UpdatePages(const BlockTracker& b, uint64_t begin, uint64_t end);

  // BlockDigestSum(b) of the block as last read.
  uint64_t digest_sum() const { return sum_; }
  // b.CountRuns() of the block as last read.
  uint64_t runs() const { return runs_; }
  // Calls fn(chunks, state) for each maximal stretch of chunks that are
  // all uniform of one state, or all detailed (state kDetailed), in order.
  template <typename Fn>
  void ForEachStretch(Fn&& fn) const;
  // The manifest's raw stretch list: "varint chunks | u8 state" for each
  // stretch ForEachStretch reports, into *raw (replacing it), and their
  // number. Keeps the encoding of each segment of 2^kSegmentShift chunks
  // (by where its pieces start) until an update touches it, so that it
  // costs O(segments + bytes) rather than a walk of every piece.
  void EncodeStretches(std::string* raw, uint32_t* count) const;
  // Changes whenever the stretches ForEachStretch reports may have
  // changed (a chunk turned uniform or detailed, or a uniform chunk changed
  // state); a writer can keep them encoded until then.
  uint64_t stretch_version() const { return stretch_version_; }
  // Pieces held (memory is O(pieces)), for tests.
  size_t pieces() const { return pieces_.size(); }

 private:
  // A stretch of uniform chunks of one state, or one detailed chunk.
  struct Piece {
    uint64_t end;         // chunk after the last
    uint64_t term;        // detailed: the chunk's digest term
    uint32_t runs;        // detailed: runs cut at the chunk's edges
    uint8_t kind;         // PageState value, or kDetailed
    uint8_t first, last;  // detailed: states of the first and last page
  };
  using Map = std::map<uint64_t, Piece>;  // by first chunk; covers [0, chunks_)
  static constexpr unsigned kSegmentShift = 10;
  // The stretches of the pieces starting in one segment, neighbours of one
  // kind merged: the first and last stand apart (they may merge with the
  // segments around), the others are encoded.
  struct SegmentCode {
    uint64_t first_chunks = 0, last_chunks = 0;
    uint8_t first_kind = 0, last_kind = 0;
    uint32_t stretches = 0;
    std::string middle;
  };

  // The runs pieces meeting chunks [x, y) contribute, less their joins
  // (adjacent pieces among them whose touching pages share a state).
  uint64_t LocalRuns(uint64_t x, uint64_t y) const;
  // The code of the segment whose first piece is *it.
  SegmentCode Encode(Map::const_iterator it) const;
  // Cuts the piece holding chunk c so that a piece starts at c.
  void SplitAt(uint64_t c);
  // Merges the piece starting at c with the one before, if both are
  // uniform of one state.
  void JoinAt(uint64_t c);
  // The piece of detailed chunk c, whose runs (two or more) are `runs`.
  static Piece DetailedPiece(uint64_t c, const std::vector<ChunkRun>& runs);
  uint64_t Terms(const Map::const_iterator& it) const;
  // Adds the pieces of chunks [c0, c1), which hold none; true if any is
  // uniform.
  bool Read(const BlockTracker& b, uint64_t c0, uint64_t c1);
  // Update of chunk c alone when its piece is detailed and it still has
  // several runs; false (nothing changed) otherwise.
  bool UpdateDetailed(const BlockTracker& b, uint64_t c);

  Map pieces_;
  mutable std::map<uint64_t, SegmentCode> codes_;  // by segment; only those of a pieces' start
  uint64_t pages_ = 0, chunks_ = 0;
  uint64_t sum_ = 0, runs_ = 0;
  uint64_t stretch_version_ = 0;
};

template <typename Fn>
void ChunkSummary::ForEachStretch(Fn&& fn) const {
  uint64_t n = 0;
  uint8_t kind = 0;
  for (const auto& [begin, p] : pieces_) {
    if (n != 0 && p.kind != kind) {
      fn(n, kind);
      n = 0;
    }
    kind = p.kind;
    n += p.end - begin;
  }
  if (n != 0) fn(n, kind);
}

}  // namespace cvmstate

#endif  // CVMSTATE_CODEC_CHUNK_SUMMARY_H_

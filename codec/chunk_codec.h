// The compact encoding of a chunk's runs shared by the store and the
// migration stream (internal: not a public interface).
//
// Raw form: varint run count, the states packed four to a byte, then one
// varint length (in pages) per run; compressed as one zstd frame with its
// checksum. Decoding treats every byte as hostile: sizes are capped before
// zstd runs, the window is capped, the output is counted, and the runs must
// be maximal, valid and cover the chunk exactly.
#ifndef CVMSTATE_CODEC_CHUNK_CODEC_H_
#define CVMSTATE_CODEC_CHUNK_CODEC_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tracker/page_state.h"
#include "tracker/status.h"

namespace cvmstate {

struct ChunkRun {
  uint64_t pages;
  PageState state;
};

// LEB128 varints. GetVarint consumes from *in; false if truncated or over
// 64 bits.
void PutVarint(std::string* out, uint64_t v);
bool GetVarint(std::string_view* in, uint64_t* v);

// Compresses raw into one zstd frame with checksum and content size (level
// 3, or -1 for inputs under 256 bytes: see chunk_codec.cc).
Status ZstdCompress(std::string_view raw, std::string* out);
// Decompresses a frame that must hold exactly `size` bytes (size <= cap is
// checked first), with its checksum, and a capped window.
Status ZstdDecompressExact(std::string_view frame, size_t size, size_t cap, std::string* out);

// Decompresses one zstd frame in pieces of at most kPieceBytes, so that
// memory never depends on what the frame claims: the frame must declare a
// content size equal to `size`, carry a checksum and fit a window of at
// most 8 MiB; the output is counted (more than `size` bytes fails at once)
// and the checksum is checked when the frame ends. One reader may be
// Reset for many frames (it keeps its context, about 100 KiB plus the
// window). Not thread-safe.
class ZstdStreamReader {
 public:
  static constexpr size_t kPieceBytes = size_t{64} << 10;
  ZstdStreamReader();
  ~ZstdStreamReader();
  ZstdStreamReader(const ZstdStreamReader&) = delete;
  ZstdStreamReader& operator=(const ZstdStreamReader&) = delete;

  // Starts on `frame` (which must outlive the reads). Corruption if its
  // header is not that of a checksummed frame of `size` bytes.
  [[nodiscard]] Status Reset(std::string_view frame, size_t size);
  // Sets *piece to the next decoded bytes (valid until the next call). An
  // empty piece means the frame ended with exactly `size` bytes, a good
  // checksum and nothing after it. Corruption (with a reason) otherwise.
  [[nodiscard]] Status Next(std::string_view* piece);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

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

}  // namespace cvmstate

#endif  // CVMSTATE_CODEC_CHUNK_CODEC_H_

#include "codec/chunk_codec.h"

#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_getFrameHeader, to check a frame before decoding
#include <zstd.h>

#include <memory>

namespace cvmstate {
namespace {

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

// Inputs under kSmallFrameBytes are compressed at zstd's level -1, the
// rest at level 3. A chunk changed by a few conversions is a frame of a
// hundred or two bytes: level 3 spends 4-6 us on it (mostly building
// Huffman tables for its literals) to save 5-10% of it, and sometimes
// makes it larger; level -1 takes under 1.5 us. A commit or a stream round
// writes one such frame per changed chunk, so this is most of their cost.
constexpr size_t kSmallFrameBytes = 256;
constexpr int kLevel = 3, kSmallLevel = -1;

// One compression and one decompression context per thread, reused, with
// the level it was last set to.
ZSTD_CCtx* CCtx(size_t input_bytes) {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> c;
  thread_local int level = 0;
  if (!c) {
    c.reset(ZSTD_createCCtx());
    if (!c) return nullptr;
    ZSTD_CCtx_setParameter(c.get(), ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(c.get(), ZSTD_c_contentSizeFlag, 1);
    level = 0;
  }
  const int want = input_bytes < kSmallFrameBytes ? kSmallLevel : kLevel;
  if (want != level) {
    if (ZSTD_isError(ZSTD_CCtx_setParameter(c.get(), ZSTD_c_compressionLevel, want))) return nullptr;
    level = want;
  }
  return c.get();
}

ZSTD_DCtx* DCtx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> d;
  if (!d) {
    d.reset(ZSTD_createDCtx());
    // Payloads are at most a few MiB: no frame may ask for a larger window.
    if (d) ZSTD_DCtx_setParameter(d.get(), ZSTD_d_windowLogMax, 23);
  }
  return d.get();
}

}  // namespace

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(std::string_view* in, uint64_t* v) {
  uint64_t r = 0;
  for (unsigned shift = 0; shift < 64 && !in->empty(); shift += 7) {
    const uint8_t byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    if (shift == 63 && byte > 1) return false;  // over 64 bits
    r |= uint64_t{byte & 0x7fu} << shift;
    if (!(byte & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

size_t MaxRawChunkBytes(uint64_t chunk_pages) {
  // count + packed states + a varint (at most 10 bytes) per run
  return 10 + (chunk_pages + 3) / 4 + chunk_pages * 10;
}

void AppendRuns(const std::vector<ChunkRun>& runs, std::string* raw) {
  PutVarint(raw, runs.size());
  for (size_t i = 0; i < runs.size(); i += 4) {
    uint8_t packed = 0;
    for (size_t k = 0; k < 4 && i + k < runs.size(); ++k) packed |= static_cast<uint8_t>(runs[i + k].state) << (2 * k);
    raw->push_back(static_cast<char>(packed));
  }
  for (const ChunkRun& r : runs) PutVarint(raw, r.pages);
}

Status EncodeChunk(const std::vector<ChunkRun>& runs, std::string* out, uint32_t* raw_size) {
  std::string raw;
  raw.reserve(10 + runs.size() * 3);
  AppendRuns(runs, &raw);
  *raw_size = static_cast<uint32_t>(raw.size());
  return ZstdCompress(raw, out);
}

Status ZstdCompress(std::string_view raw, std::string* out) {
  ZSTD_CCtx* c = CCtx(raw.size());
  if (c == nullptr) return Status::IOError("zstd: cannot create or set up a compression context");
  out->resize(ZSTD_compressBound(raw.size()));
  const size_t n = ZSTD_compress2(c, out->data(), out->size(), raw.data(), raw.size());
  if (ZSTD_isError(n)) return Status::IOError(std::string("zstd: ") + ZSTD_getErrorName(n));
  out->resize(n);
  return Status::OK();
}

Status ZstdDecompressExact(std::string_view frame, size_t size, size_t cap, std::string* out) {
  if (size > cap) return Status::Corruption("declared size " + std::to_string(size) + " over the cap");
  ZSTD_frameHeader h;
  if (ZSTD_getFrameHeader(&h, frame.data(), frame.size()) != 0 || h.frameType != ZSTD_frame) {
    return Status::Corruption("not a zstd frame");
  }
  if (!h.checksumFlag) return Status::Corruption("zstd frame without checksum");
  if (h.frameContentSize != size) return Status::Corruption("zstd content size differs from the declared size");
  ZSTD_DCtx* d = DCtx();
  if (d == nullptr) return Status::IOError("zstd: cannot create a decompression context");
  out->assign(size, '\0');
  // Writing into a buffer of exactly `size` bytes counts the output: zstd
  // stops with an error rather than write more.
  const size_t n = ZSTD_decompressDCtx(d, out->data(), out->size(), frame.data(), frame.size());
  if (ZSTD_isError(n)) return Status::Corruption(std::string("zstd: ") + ZSTD_getErrorName(n));
  if (n != size) return Status::Corruption("zstd output size differs from the declared size");
  return Status::OK();
}

struct ZstdStreamReader::Impl {
  std::unique_ptr<ZSTD_DCtx, DCtxFree> d;
  std::unique_ptr<char[]> buf;
  ZSTD_inBuffer in{nullptr, 0, 0};
  size_t size = 0;      // declared content size
  size_t produced = 0;  // bytes handed out so far
  bool started = false;
  bool done = false;
};

ZstdStreamReader::ZstdStreamReader() : impl_(std::make_unique<Impl>()) {}
ZstdStreamReader::~ZstdStreamReader() = default;

Status ZstdStreamReader::Reset(std::string_view frame, size_t size) {
  Impl& m = *impl_;
  m.started = false;
  ZSTD_frameHeader h;
  if (ZSTD_getFrameHeader(&h, frame.data(), frame.size()) != 0 || h.frameType != ZSTD_frame) {
    return Status::Corruption("not a zstd frame");
  }
  if (!h.checksumFlag) return Status::Corruption("zstd frame without checksum");
  if (h.frameContentSize != size) return Status::Corruption("zstd content size differs from the declared size");
  if (!m.d) {
    m.d.reset(ZSTD_createDCtx());
    if (!m.d) return Status::IOError("zstd: cannot create a decompression context");
    // The same cap as ZstdDecompressExact: the window zstd allocates for a
    // stream is at most 8 MiB whatever the frame asks for.
    ZSTD_DCtx_setParameter(m.d.get(), ZSTD_d_windowLogMax, 23);
    m.buf = std::make_unique<char[]>(kPieceBytes);
  }
  ZSTD_DCtx_reset(m.d.get(), ZSTD_reset_session_only);
  m.in = {frame.data(), frame.size(), 0};
  m.size = size;
  m.produced = 0;
  m.done = false;
  m.started = true;
  return Status::OK();
}

Status ZstdStreamReader::Next(std::string_view* piece) {
  Impl& m = *impl_;
  *piece = {};
  if (!m.started) return Status::Corruption("zstd: no frame");
  while (!m.done) {
    ZSTD_outBuffer out{m.buf.get(), kPieceBytes, 0};
    const size_t in_before = m.in.pos;
    const size_t r = ZSTD_decompressStream(m.d.get(), &out, &m.in);
    if (ZSTD_isError(r)) return Status::Corruption(std::string("zstd: ") + ZSTD_getErrorName(r));
    if (out.pos > m.size - m.produced) return Status::Corruption("zstd output exceeds the declared size");
    m.produced += out.pos;
    if (r == 0) {  // the frame ended, its checksum checked
      m.done = true;
      if (m.in.pos != m.in.size) return Status::Corruption("trailing bytes after the zstd frame");
      if (m.produced != m.size) return Status::Corruption("zstd output size differs from the declared size");
    }
    if (out.pos > 0) {
      *piece = std::string_view(m.buf.get(), out.pos);
      return Status::OK();
    }
    if (!m.done && m.in.pos == m.in.size) return Status::Corruption("truncated zstd frame");
    if (!m.done && m.in.pos == in_before) return Status::Corruption("zstd makes no progress");
  }
  return Status::OK();
}

Status DecodeChunk(std::string_view payload, uint32_t raw_size, uint64_t chunk_pages, uint32_t expected_runs,
                   std::vector<ChunkRun>* runs) {
  runs->clear();
  if (expected_runs < 2 || expected_runs > chunk_pages) {
    return Status::Corruption("run count " + std::to_string(expected_runs) + " impossible for a chunk of " +
                              std::to_string(chunk_pages) + " pages");
  }
  if (raw_size == 0) return Status::Corruption("empty payload");
  std::string raw;
  Status zs = ZstdDecompressExact(payload, raw_size, MaxRawChunkBytes(chunk_pages), &raw);
  if (!zs.ok()) return zs;
  std::string_view in(raw);
  Status s = ParseRuns(&in, chunk_pages, expected_runs, runs);
  if (!s.ok()) return s;
  if (runs->size() != expected_runs) return Status::Corruption("run count differs from the record's");
  if (!in.empty()) return Status::Corruption("trailing bytes after the runs");
  return Status::OK();
}

Status ParseRuns(std::string_view* in, uint64_t pages, uint64_t max_runs, std::vector<ChunkRun>* runs) {
  runs->clear();
  uint64_t count;
  if (!GetVarint(in, &count) || count == 0 || count > max_runs || count > pages) {
    return Status::Corruption("bad run count");
  }
  const size_t packed = (count + 3) / 4;
  if (in->size() < packed) return Status::Corruption("truncated states");
  // Every length takes a byte at least: what is reserved below is bounded
  // by the input, never by the count it claims.
  if (in->size() - packed < count) return Status::Corruption("truncated run lengths");
  std::string_view states = in->substr(0, packed);
  in->remove_prefix(packed);
  runs->reserve(count);
  uint64_t total = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const unsigned s = (static_cast<uint8_t>(states[i / 4]) >> (2 * (i % 4))) & 3;
    if (!IsValidPageStateValue(s)) return Status::Corruption("invalid state value " + std::to_string(s));
    uint64_t len;
    if (!GetVarint(in, &len) || len == 0 || len > pages - total) {
      return Status::Corruption("run " + std::to_string(i) + " has a bad length");
    }
    if (i > 0 && static_cast<unsigned>(runs->back().state) == s) {
      return Status::Corruption("runs " + std::to_string(i - 1) + " and " + std::to_string(i) + " are not maximal");
    }
    total += len;
    runs->push_back({len, static_cast<PageState>(s)});
  }
  // Unused state bits must be zero.
  if (count % 4 != 0 && (static_cast<uint8_t>(states[packed - 1]) >> (2 * (count % 4))) != 0) {
    return Status::Corruption("stray state bits");
  }
  if (total != pages) {
    return Status::Corruption("runs cover " + std::to_string(total) + " of " + std::to_string(pages) + " pages");
  }
  return Status::OK();
}

}  // namespace cvmstate

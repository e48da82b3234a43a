// Frame framing shared by the two sides: u32 length, u32 CRC-32C, body
// (docs/stream-format.md). Internal to migration/.
#ifndef CVMSTATE_MIGRATION_FRAMES_H_
#define CVMSTATE_MIGRATION_FRAMES_H_

#include <flatbuffers/flatbuffers.h>

#include <cstring>
#include <string>

#include "cvmstate/schema/migration_generated.h"
#include "migration/auth.h"
#include "migration/byte_stream.h"
#include "migration/crc32c.h"
#include "migration/raw_frame.h"

namespace cvmstate::migration_internal {

constexpr uint64_t kMagic = 0x4356'4d53'5441'5445ULL;  // "CVMSTATE"
// 2: the chunk-sum digest (codec/state_digest.h); 1 sent the run-list digest.
constexpr uint32_t kFormatVersion = 2;
constexpr size_t kHeaderBytes = 8;
constexpr size_t kMaxSectionRuns = 1 << 16;   // runs a section carries at most
constexpr size_t kMaxFrameRaw = size_t{4} << 20;  // raw bytes a Sections frame carries at most
// What the stream format carries at most (docs/stream-format.md, section
// 5): the source refuses a VM beyond these before it sends anything.
constexpr uint64_t kMaxBlocks = 4096;
constexpr uint64_t kMaxGuestBytes = uint64_t{1} << 46;  // 64 TiB over all blocks
// Tables the FlatBuffers verifier may meet in one frame: a hello has one
// per block plus two (its default of 1,024 refused VMs of 1,023 blocks).
constexpr size_t kMaxFrameTables = kMaxBlocks + 16;

inline void PutU32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline uint32_t GetU32(const unsigned char* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

constexpr uint32_t kKeyedBit = 0x8000'0000u;

// Writes one finished Frame buffer with its header, and its MAC when key is
// not empty; adds the bytes written to *bytes.
inline Status WriteFrame(ByteSink* sink, const flatbuffers::FlatBufferBuilder& fb, uint64_t seq, const std::string& key,
                         uint64_t* bytes) {
  const std::string_view body(reinterpret_cast<const char*>(fb.GetBufferPointer()), fb.GetSize());
  const std::string mac = key.empty() ? std::string() : FrameMac(key, seq, body);
  std::string out(kHeaderBytes, '\0');
  PutU32(out.data(), static_cast<uint32_t>(body.size()) | (key.empty() ? 0 : kKeyedBit));
  PutU32(out.data() + 4, Crc32c(body.data(), body.size()));
  out += mac;
  out += body;
  *bytes += out.size();
  return sink->Write(out);
}

// Reads one frame: the length is checked against max before anything is
// allocated, then the body, its CRC, the verifier and the identifier. The
// MAC, if any, is returned for the caller to check.
inline Status ReadFrame(ByteSource* in, size_t max, uint64_t index, RawFrame* f, uint64_t* bytes) {
  unsigned char h[kHeaderBytes];
  Status s = in->Read(h, sizeof h);
  if (!s.ok()) return s.WithPrefix("frame " + std::to_string(index) + ": ");
  const bool keyed = GetU32(h) & kKeyedBit;
  const uint32_t len = GetU32(h) & ~kKeyedBit, crc = GetU32(h + 4);
  if (len < 8 || len > max) {
    return Status::Corruption("frame " + std::to_string(index) + ": length " + std::to_string(len) +
                              " is outside [8, " + std::to_string(max) + "]");
  }
  f->mac.assign(keyed ? kMacBytes : 0, '\0');
  if (keyed) {
    s = in->Read(f->mac.data(), kMacBytes);
    if (!s.ok()) return s.WithPrefix("frame " + std::to_string(index) + ": ");
  }
  f->body.resize(len);
  s = in->Read(f->body.data(), len);
  if (!s.ok()) return s.WithPrefix("frame " + std::to_string(index) + ": ");
  *bytes += kHeaderBytes + f->mac.size() + len;
  if (Crc32c(f->body.data(), len) != crc) return Status::Corruption("frame " + std::to_string(index) + ": checksum mismatch");
  auto* p = reinterpret_cast<const uint8_t*>(f->body.data());
  flatbuffers::Verifier v(p, len, 16, kMaxFrameTables);
  if (!schema::FrameBufferHasIdentifier(p) || !schema::VerifyFrameBuffer(v)) {
    return Status::Corruption("frame " + std::to_string(index) + ": fails verification");
  }
  return Status::OK();
}

// Checks a frame's MAC against key (empty key: the frame must carry none,
// unless ignore_macs).
inline Status CheckMac(const RawFrame& f, const std::string& key, uint64_t seq, bool ignore_macs) {
  if (key.empty()) {
    if (f.mac.empty() || ignore_macs) return Status::OK();
    return Status::Refused("the stream is authenticated: give this side the --psk-file it was sent with");
  }
  if (f.mac.empty()) return Status::Refused("the peer does not authenticate its frames (no --psk-file on its side?)");
  if (!ConstantTimeEqual(f.mac, FrameMac(key, seq, f.body))) {
    return Status::Refused("frame " + std::to_string(seq) + ": authentication failed (wrong key, or an altered or replayed stream)");
  }
  return Status::OK();
}

}  // namespace cvmstate::migration_internal

#endif  // CVMSTATE_MIGRATION_FRAMES_H_

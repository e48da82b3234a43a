// Frame framing shared by the two sides: u32 length, u32 CRC-32C, body.
#ifndef CVMSTATE_MIGRATION_FRAMES_H_
#define CVMSTATE_MIGRATION_FRAMES_H_

#include <flatbuffers/flatbuffers.h>

#include <cstring>
#include <string>

#include "cvmstate/migration.h"
#include "cvmstate/schema/migration_generated.h"

namespace cvmstate::migration_internal {

constexpr uint64_t kMagic = 0x4356'4d53'5441'5445ULL;  // "CVMSTATE"
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 8;
constexpr size_t kMaxSectionRuns = 1 << 16;   // runs a section carries at most
constexpr size_t kMaxFrameRaw = size_t{4} << 20;  // raw bytes a Sections frame carries at most

inline void PutU32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
inline uint32_t GetU32(const unsigned char* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

// Writes one finished Frame buffer with its header; adds to *bytes.
inline Status WriteFrame(ByteSink* sink, const flatbuffers::FlatBufferBuilder& fb, uint64_t* bytes) {
  std::string out(kHeaderBytes + fb.GetSize(), '\0');
  PutU32(out.data(), static_cast<uint32_t>(fb.GetSize()));
  PutU32(out.data() + 4, Crc32c(fb.GetBufferPointer(), fb.GetSize()));
  std::memcpy(out.data() + kHeaderBytes, fb.GetBufferPointer(), fb.GetSize());
  *bytes += out.size();
  return sink->Write(out);
}

// Reads one frame: length checked against max before anything is
// allocated, then the body, its CRC, the verifier and the identifier.
inline Status ReadFrame(ByteSource* in, size_t max, uint64_t index, std::string* body, uint64_t* bytes) {
  unsigned char h[kHeaderBytes];
  Status s = in->Read(h, sizeof h);
  if (!s.ok()) return Status::IOError("frame " + std::to_string(index) + ": " + s.message());
  const uint32_t len = GetU32(h), crc = GetU32(h + 4);
  if (len < 8 || len > max) {
    return Status::Corruption("frame " + std::to_string(index) + ": length " + std::to_string(len) +
                              " is outside [8, " + std::to_string(max) + "]");
  }
  body->resize(len);
  s = in->Read(body->data(), len);
  if (!s.ok()) return Status::IOError("frame " + std::to_string(index) + ": " + s.message());
  *bytes += kHeaderBytes + len;
  if (Crc32c(body->data(), len) != crc) return Status::Corruption("frame " + std::to_string(index) + ": checksum mismatch");
  auto* p = reinterpret_cast<const uint8_t*>(body->data());
  flatbuffers::Verifier v(p, len, 16, 1024);
  if (!schema::FrameBufferHasIdentifier(p) || !schema::VerifyFrameBuffer(v)) {
    return Status::Corruption("frame " + std::to_string(index) + ": fails verification");
  }
  return Status::OK();
}

}  // namespace cvmstate::migration_internal

#endif  // CVMSTATE_MIGRATION_FRAMES_H_

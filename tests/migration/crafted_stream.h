// Builds migration streams frame by frame, valid in framing (length, CRC,
// FlatBuffers) but saying whatever a test wants: a hostile sender's tool.
#ifndef CVMSTATE_TESTS_MIGRATION_CRAFTED_STREAM_H_
#define CVMSTATE_TESTS_MIGRATION_CRAFTED_STREAM_H_

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <string>
#include <vector>

#include "codec/chunk_codec.h"
#include "migration/frames.h"
#include "string_stream.h"
#include "tracker/page_state.h"

namespace cvmstate::testing {

struct CraftedBlock {
  std::string name;
  uint64_t size = 0;
  uint64_t page_size = 4096;
  PageState initial = PageState::kDiscarded;
};

class CraftedStream {
 public:
  // Frame 0: the answer to a challenge (a file stream's own nonce).
  CraftedStream() {
    flatbuffers::FlatBufferBuilder fb;
    const std::string nonce(32, 'n');
    auto c = schema::CreateChallenge(fb, fb.CreateVector(reinterpret_cast<const uint8_t*>(nonce.data()), nonce.size()));
    Finish(fb, schema::Body::Challenge, c.Union());
  }

  // Frame 1.
  void Hello(const std::string& vm, const std::vector<CraftedBlock>& blocks, uint64_t total_runs,
             uint32_t version = migration_internal::kFormatVersion) {
    flatbuffers::FlatBufferBuilder fb;
    std::vector<flatbuffers::Offset<schema::BlockDesc>> descs;
    for (const CraftedBlock& b : blocks) {
      descs.push_back(schema::CreateBlockDesc(fb, fb.CreateString(b.name), b.size, b.page_size,
                                              static_cast<uint8_t>(b.initial)));
    }
    auto h = schema::CreateHello(fb, migration_internal::kMagic, version, fb.CreateString(vm), fb.CreateVector(descs),
                                 total_runs);
    Finish(fb, schema::Body::Hello, h.Union());
  }

  // Appends one section of `runs` starting at page `begin` (at or after
  // the end of the frame's previous section).
  void Section(uint64_t begin, const std::vector<ChunkRun>& runs) {
    uint64_t len = 0;
    for (const ChunkRun& r : runs) len += r.pages;
    PutVarint(&raw_, begin - prev_end_);
    PutVarint(&raw_, len);
    prev_end_ = begin + len;
    AppendRuns(runs, &raw_);
    ++sections_;
    runs_ += static_cast<uint32_t>(runs.size());
  }

  // Sends the sections appended so far as one Sections frame; claimed_runs
  // overrides the frame's run count (0: the true one).
  void FlushSections(uint32_t round, uint32_t block, uint32_t claimed_runs = 0) {
    std::string z;
    if (!ZstdCompress(raw_, &z).ok()) std::abort();
    flatbuffers::FlatBufferBuilder fb;
    auto s = schema::CreateSections(fb, round, block, sections_, claimed_runs ? claimed_runs : runs_,
                                    static_cast<uint32_t>(raw_.size()),
                                    fb.CreateVector(reinterpret_cast<const uint8_t*>(z.data()), z.size()));
    Finish(fb, schema::Body::Sections, s.Union());
    round_frames_ += 1;
    round_runs_ += runs_;
    raw_.clear();
    sections_ = runs_ = 0;
    prev_end_ = 0;
  }

  void RoundEnd(uint32_t round) {
    flatbuffers::FlatBufferBuilder fb;
    Finish(fb, schema::Body::RoundEnd, schema::CreateRoundEnd(fb, round, round_frames_, round_runs_).Union());
    round_frames_ = 0;
    round_runs_ = 0;
  }

  void End(uint32_t rounds, uint64_t digest, uint64_t total_runs) {
    flatbuffers::FlatBufferBuilder fb;
    Finish(fb, schema::Body::End, schema::CreateEnd(fb, rounds, digest, total_runs).Union());
  }

  const std::string& bytes() const { return sink_.data; }
  uint64_t frames() const { return seq_; }
  size_t raw_bytes() const { return raw_.size(); }

 private:
  template <typename T>
  void Finish(flatbuffers::FlatBufferBuilder& fb, schema::Body type, flatbuffers::Offset<T> body) {
    schema::FinishFrameBuffer(fb, schema::CreateFrame(fb, seq_, type, body));
    uint64_t bytes = 0;
    if (!migration_internal::WriteFrame(&sink_, fb, seq_, std::string(), &bytes).ok()) std::abort();
    ++seq_;
  }

  StringSink sink_;
  uint64_t seq_ = 0;
  std::string raw_;
  uint64_t prev_end_ = 0;  // sections' gaps count from here; 0 in a new frame
  uint32_t sections_ = 0, runs_ = 0, round_frames_ = 0;
  uint64_t round_runs_ = 0;
};

// `n` alternating single-page runs (shared, private, shared, ...).
inline std::vector<ChunkRun> AlternatingRuns(size_t n) {
  std::vector<ChunkRun> runs(n);
  for (size_t i = 0; i < n; ++i) runs[i] = {1, i % 2 ? PageState::kPrivate : PageState::kShared};
  return runs;
}

}  // namespace cvmstate::testing

#endif  // CVMSTATE_TESTS_MIGRATION_CRAFTED_STREAM_H_

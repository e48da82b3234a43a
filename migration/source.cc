#include "migration/source.h"

#include <algorithm>

#include "codec/chunk_codec.h"
#include "codec/state_digest.h"
#include "migration/auth.h"
#include "migration/frames.h"

namespace cvmstate {

using namespace migration_internal;
namespace fbs = cvmstate::schema;

MigrationSource::MigrationSource(VmState* vm, std::string vm_id, ByteSink* sink)
    : vm_(vm), id_(std::move(vm_id)), sink_(sink) {}

Result<std::string> MigrationSource::ReadChallenge(ByteSource* from) {
  RawFrame f;
  uint64_t ignored = 0;
  Status s = ReadFrame(from, 1 << 12, 0, &f, &ignored);
  if (!s.ok()) return s.WithPrefix("no challenge from the destination: ");
  const fbs::Frame* frame = fbs::GetFrame(f.body.data());
  const fbs::Challenge* c = frame->body_as_Challenge();
  if (frame->seq() != 0 || c == nullptr || c->nonce() == nullptr || c->nonce()->size() != kNonceBytes) {
    return Status::Corruption("the destination did not open with a challenge");
  }
  return std::string(reinterpret_cast<const char*>(c->nonce()->data()), c->nonce()->size());
}

Result<std::string> MigrationSource::NewNonce() { return RandomNonce(); }

Status MigrationSource::CheckStreamable(const VmState& vm) {
  if (vm.num_blocks() > kMaxBlocks) {
    return Status::InvalidArgument("the VM has " + std::to_string(vm.num_blocks()) +
                                   " blocks; a migration stream carries at most " + std::to_string(kMaxBlocks));
  }
  uint64_t guest = 0;
  for (size_t i = 0; i < vm.num_blocks(); ++i) {
    guest += vm.block(i).size();
    if (guest > kMaxGuestBytes || guest < vm.block(i).size()) {
      return Status::InvalidArgument("the VM's blocks hold more than 64 TiB; a migration stream carries at most that");
    }
  }
  return Status::OK();
}

Status MigrationSource::Open(std::string_view nonce) {
  if (opened()) return Status::InvalidArgument("the migration has already begun");
  if (nonce.size() != kNonceBytes) return Status::InvalidArgument("a nonce has 32 bytes");
  Status ok = CheckStreamable(*vm_);
  if (!ok.ok()) return ok;
  if (!key_.empty()) {
    SessionKeys k = DeriveSessionKeys(key_, nonce);
    send_key_ = std::move(k.source_to_destination);
    ack_key_ = std::move(k.destination_to_source);
  }
  {
    flatbuffers::FlatBufferBuilder fb;
    auto c = fbs::CreateChallenge(fb, fb.CreateVector(reinterpret_cast<const uint8_t*>(nonce.data()), nonce.size()));
    fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::Challenge, c.Union()));
    Status s = WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
    if (!s.ok()) return s;
  }
  Status s = SendHello();
  if (!s.ok()) return s;
  journal_.Attach(vm_);  // changes from here on belong to round 1
  StartRound(/*full=*/true);
  return Status::OK();
}

Status MigrationSource::Begin(std::string_view nonce) {
  Status s = Open(nonce);
  if (!s.ok()) return s;
  auto r = SendRound();
  return r.ok() ? Status::OK() : r.status();
}

// Frame 1: the VM id and its blocks.
Status MigrationSource::SendHello() {
  flatbuffers::FlatBufferBuilder fb;
  std::vector<flatbuffers::Offset<fbs::BlockDesc>> blocks;
  uint64_t runs = 0;
  for (size_t i = 0; i < vm_->num_blocks(); ++i) {
    const BlockTracker& b = vm_->block(i);
    blocks.push_back(fbs::CreateBlockDesc(fb, fb.CreateString(b.name()), b.size(), b.page_size(),
                                          static_cast<uint8_t>(b.initial_state())));
    runs += b.CountRuns();
  }
  blocks_ = vm_->num_blocks();
  auto hello = fbs::CreateHello(fb, kMagic, kFormatVersion, fb.CreateString(id_), fb.CreateVector(blocks), runs);
  fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::Hello, hello.Union()));
  return WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
}

Status MigrationSource::CheckBlocks() const {
  if (!journal_.attached()) return Status::InvalidArgument("the migration has not begun");
  if (vm_->num_blocks() != blocks_) {
    return Status::InvalidArgument("the VM gained blocks during its migration; the destination does not know them");
  }
  return Status::OK();
}

void MigrationSource::StartRound(bool full) {
  RoundCursor c;
  c.stats.round = static_cast<uint32_t>(rounds_.size());
  c.bytes0 = bytes_;
  // Ranges to send per block: everything, or what changed since last round.
  c.todo.resize(vm_->num_blocks());
  summaries_.resize(vm_->num_blocks());
  for (size_t i = 0; i < vm_->num_blocks(); ++i) {
    const BlockTracker& b = vm_->block(i);
    c.todo[i] = full ? std::vector<PageRange>{{0, b.size() >> b.page_shift()}} : journal_.Changed(b);
    if (full) {
      summaries_[i].Rebuild(b);
    } else {
      for (const PageRange& r : c.todo[i]) summaries_[i].UpdatePages(b, r.begin, r.end);
    }
  }
  journal_.Advance();
  round_ = std::move(c);
}

namespace {

// The smallest frame a step with little budget left still makes (raw bytes).
constexpr size_t kMinStepFrameRaw = 256;
// Bytes a Sections frame adds to its raw sections at most in practice: the
// header, the FlatBuffers table, and zstd's frame header and checksum (the
// MAC comes on top).
constexpr uint64_t kSectionsFrameOverhead = kHeaderBytes + 96;
constexpr uint64_t kSmallFrameBytes = kHeaderBytes + 64;  // a RoundEnd, a challenge answer

// Appends one section to *raw: the runs of block pages [a, end), at most
// max_runs of them, after the previous section ending at prev_end. Returns
// the page where it stops; *runs gets its runs.
uint64_t AppendSection(const BlockTracker& b, uint64_t a, uint64_t end, size_t max_runs, uint64_t prev_end,
                       std::vector<ChunkRun>* runs, std::string* raw) {
  runs->clear();
  uint64_t z = a;
  b.map().ForEachRun(a, end, [&](const Run& run) {
    runs->push_back({run.end - run.begin, run.state});
    z = run.end;
    return runs->size() < max_runs;
  });
  PutVarint(raw, a - prev_end);
  PutVarint(raw, z - a);
  AppendRuns(*runs, raw);
  return z;
}

// Whether a frame holding raw bytes and runs is full.
bool FrameFull(size_t raw, size_t runs, size_t raw_limit) { return raw > raw_limit || runs > 4 * kMaxSectionRuns; }

}  // namespace

Result<MigrationSource::StepResult> MigrationSource::Step(uint64_t max_bytes) {
  Status ok = CheckBlocks();
  if (!ok.ok()) return ok;
  if (!round_) StartRound(/*full=*/false);
  RoundCursor& c = *round_;
  const uint64_t start = bytes_;
  auto spent = [&] { return bytes_ - start; };
  std::vector<ChunkRun> runs;
  std::string raw, section, z;
  while (c.block < c.todo.size()) {
    if (spent() > 0 && spent() >= max_bytes) return StepResult{spent(), false};
    const BlockTracker& b = vm_->block(c.block);
    const std::vector<PageRange>& ranges = c.todo[c.block];
    // One frame of this block, sized to what the step has left.
    const uint64_t left = max_bytes - std::min(max_bytes, spent());
    const size_t raw_limit = static_cast<size_t>(std::clamp<uint64_t>(left, kMinStepFrameRaw, kMaxFrameRaw / 2));
    raw.clear();
    uint32_t sections = 0, runs_in_frame = 0;
    uint64_t prev_end = 0;
    while (c.range < ranges.size() && raw.size() < raw_limit && runs_in_frame <= 4 * kMaxSectionRuns) {
      const PageRange& r = ranges[c.range];
      const uint64_t a = std::max(r.begin, c.page);
      // A run takes a few bytes: at most a quarter of the room in runs.
      const size_t max_runs = std::clamp<size_t>((raw_limit - raw.size()) / 4, 16, kMaxSectionRuns);
      section.clear();
      const uint64_t end = AppendSection(b, a, r.end, max_runs, prev_end, &runs, &section);
      // A section that does not fit starts the next frame (read again then).
      if (sections > 0 && raw.size() + section.size() > raw_limit) break;
      raw += section;
      ++sections;
      runs_in_frame += static_cast<uint32_t>(runs.size());
      prev_end = end;
      if (end >= r.end) {
        ++c.range;
        c.page = 0;
      } else {
        c.page = end;
      }
    }
    if (sections > 0) {
      Status s = ZstdCompress(raw, &z);
      if (!s.ok()) return s;
      flatbuffers::FlatBufferBuilder fb(z.size() + 128);
      auto sec = fbs::CreateSections(fb, c.stats.round, static_cast<uint32_t>(c.block), sections, runs_in_frame,
                                     static_cast<uint32_t>(raw.size()),
                                     fb.CreateVector(reinterpret_cast<const uint8_t*>(z.data()), z.size()));
      fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::Sections, sec.Union()));
      s = WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
      if (!s.ok()) return s;
      ++c.stats.frames;
      c.stats.sections += sections;
      c.stats.runs += runs_in_frame;
    }
    if (c.range >= ranges.size()) {
      ++c.block;
      c.range = 0;
      c.page = 0;
    }
  }
  flatbuffers::FlatBufferBuilder fb;
  auto end = fbs::CreateRoundEnd(fb, c.stats.round, static_cast<uint32_t>(c.stats.frames), c.stats.runs);
  fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::RoundEnd, end.Union()));
  Status s = WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
  if (!s.ok()) return s;
  c.stats.bytes = bytes_ - c.bytes0;
  rounds_.push_back(c.stats);
  round_.reset();
  return StepResult{spent(), true};
}

uint64_t MigrationSource::PendingBytes() const {
  const uint64_t mac = key_.empty() ? 0 : kMacBytes;
  uint64_t total = 0;
  std::vector<ChunkRun> runs;
  std::string scratch;
  // The bytes of the frames carrying `ranges` of b, from page `from` on.
  auto measure = [&](const BlockTracker& b, const std::vector<PageRange>& ranges, size_t first, uint64_t from) {
    size_t raw = 0, runs_in_frame = 0;
    uint64_t prev_end = 0;
    bool any = false;
    for (size_t k = first; k < ranges.size(); ++k) {
      uint64_t a = k == first ? std::max(ranges[k].begin, from) : ranges[k].begin;
      while (a < ranges[k].end) {
        scratch.clear();
        const uint64_t z = AppendSection(b, a, ranges[k].end, kMaxSectionRuns, prev_end, &runs, &scratch);
        raw += scratch.size();
        runs_in_frame += runs.size();
        any = true;
        prev_end = a = z;
        if (FrameFull(raw, runs_in_frame, kMaxFrameRaw / 2)) {
          total += raw + kSectionsFrameOverhead + mac;
          raw = runs_in_frame = prev_end = 0;
          any = false;
        }
      }
    }
    if (any) total += raw + kSectionsFrameOverhead + mac;
  };
  if (!opened()) {
    // The challenge answer, the hello, then every page.
    total += 2 * (kSmallFrameBytes + mac) + kNonceBytes + id_.size();
    for (size_t i = 0; i < vm_->num_blocks(); ++i) {
      const BlockTracker& b = vm_->block(i);
      total += 48 + b.name().size();
      measure(b, {{0, b.size() >> b.page_shift()}}, 0, 0);
    }
  } else {
    if (round_) {
      for (size_t i = round_->block; i < round_->todo.size() && i < vm_->num_blocks(); ++i) {
        measure(vm_->block(i), round_->todo[i], i == round_->block ? round_->range : 0,
                i == round_->block ? round_->page : 0);
      }
    }
    for (size_t i = 0; i < vm_->num_blocks(); ++i) measure(vm_->block(i), journal_.Changed(vm_->block(i)), 0, 0);
  }
  return total + kSmallFrameBytes + mac;  // the round's end
}

Result<RoundStats> MigrationSource::SendRound() {
  // Step checks the blocks itself, on every call.
  for (;;) {
    auto r = Step(UINT64_MAX);
    if (!r.ok()) return r.status();
    if (r->round_done) return rounds_.back();
  }
}

Result<RoundStats> MigrationSource::Finish() {
  if (round_) {
    auto rest = SendRound();
    if (!rest.ok()) return rest;
  }
  auto last = SendRound();
  if (!last.ok()) return last;
  // The digest of the state as it is now (a conversion after the last
  // round began, which that round may not carry, makes the destination
  // refuse): the summaries plus what changed since that round began.
  Status blocks = CheckBlocks();
  if (!blocks.ok()) return blocks;
  uint64_t runs = 0;
  std::vector<uint64_t> sums;
  for (size_t i = 0; i < vm_->num_blocks(); ++i) {
    const BlockTracker& b = vm_->block(i);
    for (const PageRange& r : journal_.Changed(b)) summaries_[i].UpdatePages(b, r.begin, r.end);
    runs += summaries_[i].runs();
    sums.push_back(summaries_[i].digest_sum());
  }
  flatbuffers::FlatBufferBuilder fb;
  auto end = fbs::CreateEnd(fb, static_cast<uint32_t>(rounds_.size()), CombineStateDigest(*vm_, sums), runs);
  fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::End, end.Union()));
  uint64_t before = bytes_;
  Status s = WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
  if (!s.ok()) return s;
  rounds_.back().bytes += bytes_ - before;
  return rounds_.back();
}

Status MigrationSource::AwaitAck(ByteSource* from) {
  RawFrame f;
  uint64_t ignored = 0;
  Status s = ReadFrame(from, 1 << 16, 1, &f, &ignored);
  if (!s.ok()) return s.WithPrefix("no acknowledgement from the destination: ");
  const fbs::Frame* frame = fbs::GetFrame(f.body.data());
  const fbs::Ack* ack = frame->body_as_Ack();
  if (frame->seq() != 1 || ack == nullptr) {
    return Status::Corruption("the destination answered with something else than an acknowledgement");
  }
  const std::string reason = ack->reason() ? ack->reason()->str() : std::string("no reason given");
  // A refusal needs no proof (failing is safe); "ready" must be authentic.
  if (!ack->ok()) return Status::Refused("the destination refused the migration: " + reason);
  s = CheckMac(f, ack_key_, 1, false);
  if (!s.ok()) return Status::Refused("the acknowledgement is not authentic: " + s.message());
  return Status::OK();
}

}  // namespace cvmstate

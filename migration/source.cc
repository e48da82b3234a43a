#include "migration/source.h"

#include "codec/chunk_codec.h"
#include "migration/auth.h"
#include "migration/frames.h"
#include "tracker/state_digest.h"

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

Status MigrationSource::Begin(std::string_view nonce) {
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
  auto r = SendSections(/*full=*/true);
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

Result<RoundStats> MigrationSource::SendRound() { return SendSections(/*full=*/false); }

Result<RoundStats> MigrationSource::SendSections(bool full) {
  if (!journal_.attached()) return Status::InvalidArgument("the migration has not begun");
  if (vm_->num_blocks() != blocks_) {
    return Status::InvalidArgument("the VM gained blocks during its migration; the destination does not know them");
  }
  RoundStats st;
  st.round = static_cast<uint32_t>(rounds_.size());
  const uint64_t bytes0 = bytes_;
  // Ranges to send per block: everything, or what changed since last round.
  std::vector<std::vector<PageRange>> todo(vm_->num_blocks());
  for (size_t i = 0; i < vm_->num_blocks(); ++i) {
    const BlockTracker& b = vm_->block(i);
    todo[i] = full ? std::vector<PageRange>{{0, b.size() >> b.page_shift()}} : journal_.Changed(b);
  }
  journal_.Advance();
  for (size_t i = 0; i < vm_->num_blocks(); ++i) {
    const BlockTracker& b = vm_->block(i);
    std::string raw;
    uint32_t sections = 0, runs_in_frame = 0;
    uint64_t prev_end = 0;
    auto flush = [&]() -> Status {
      if (sections == 0) return Status::OK();
      std::string z;
      Status s = ZstdCompress(raw, &z);
      if (!s.ok()) return s;
      flatbuffers::FlatBufferBuilder fb(z.size() + 128);
      auto sec = fbs::CreateSections(fb, st.round, static_cast<uint32_t>(i), sections, runs_in_frame,
                                     static_cast<uint32_t>(raw.size()),
                                     fb.CreateVector(reinterpret_cast<const uint8_t*>(z.data()), z.size()));
      fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::Sections, sec.Union()));
      s = WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
      if (!s.ok()) return s;
      ++st.frames;
      st.sections += sections;
      st.runs += runs_in_frame;
      raw.clear();
      sections = runs_in_frame = 0;
      prev_end = 0;
      return Status::OK();
    };
    std::vector<ChunkRun> runs;
    for (const PageRange& r : todo[i]) {
      uint64_t a = r.begin;
      while (a < r.end) {
        // A section: the runs of [a, z), at most kMaxSectionRuns of them.
        runs.clear();
        uint64_t z = a;
        b.map().ForEachRun(a, r.end, [&](const Run& run) {
          runs.push_back({run.end - run.begin, run.state});
          z = run.end;
          return runs.size() < kMaxSectionRuns;
        });
        PutVarint(&raw, a - prev_end);
        PutVarint(&raw, z - a);
        AppendRuns(runs, &raw);
        ++sections;
        runs_in_frame += static_cast<uint32_t>(runs.size());
        prev_end = z;
        a = z;
        if (raw.size() > kMaxFrameRaw / 2 || runs_in_frame > 4 * kMaxSectionRuns) {
          Status s = flush();
          if (!s.ok()) return s;
        }
      }
    }
    Status s = flush();
    if (!s.ok()) return s;
  }
  flatbuffers::FlatBufferBuilder fb;
  auto end = fbs::CreateRoundEnd(fb, st.round, static_cast<uint32_t>(st.frames), st.runs);
  fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, seq_, fbs::Body::RoundEnd, end.Union()));
  Status s = WriteFrame(sink_, fb, seq_++, send_key_, &bytes_);
  if (!s.ok()) return s;
  st.bytes = bytes_ - bytes0;
  rounds_.push_back(st);
  return st;
}

Result<RoundStats> MigrationSource::Finish() {
  auto last = SendSections(/*full=*/false);
  if (!last.ok()) return last;
  uint64_t runs = 0;
  for (size_t i = 0; i < vm_->num_blocks(); ++i) runs += vm_->block(i).CountRuns();
  flatbuffers::FlatBufferBuilder fb;
  auto end = fbs::CreateEnd(fb, static_cast<uint32_t>(rounds_.size()), ComputeStateDigest(*vm_), runs);
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

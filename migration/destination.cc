#include "cvmstate/chunk_codec.h"
#include "cvmstate/checkpoint_store.h"
#include "cvmstate/state_digest.h"
#include "auth.h"
#include "frames.h"

namespace cvmstate {

using namespace migration_internal;
namespace fbs = cvmstate::schema;

MigrationDestination::MigrationDestination(Options options) : opt_(std::move(options)) {}

Status MigrationDestination::SendChallenge(ByteSink* out, std::string_view nonce) {
  flatbuffers::FlatBufferBuilder fb;
  auto c = fbs::CreateChallenge(fb, fb.CreateVector(reinterpret_cast<const uint8_t*>(nonce.data()), nonce.size()));
  fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, 0, fbs::Body::Challenge, c.Union()));
  uint64_t bytes = 0;
  return WriteFrame(out, fb, 0, std::string(), &bytes);
}

Status MigrationDestination::SendAck(ByteSink* out, bool ok, const std::string& reason) {
  flatbuffers::FlatBufferBuilder fb;
  auto ack = fbs::CreateAck(fb, ok, fb.CreateString(reason.substr(0, 4096)));
  fbs::FinishFrameBuffer(fb, fbs::CreateFrame(fb, 1, fbs::Body::Ack, ack.Union()));
  uint64_t bytes = 0;
  return WriteFrame(out, fb, 1, ack_key_, &bytes);
}

Result<VmState> MigrationDestination::Receive(ByteSource* in, std::string* vm_id) {
  RawFrame raw_frame;
  std::string& body = raw_frame.body;
  uint64_t seq = 0;
  auto where = [&seq](const char* type) { return "frame " + std::to_string(seq) + " (" + type + "): "; };

  // The answer to the challenge: small, and checked before anything large
  // is read or allocated.
  Status s = ReadFrame(in, 4096, seq, &raw_frame, &bytes_);
  if (!s.ok()) return s;
  const fbs::Frame* f = fbs::GetFrame(body.data());
  const fbs::Challenge* challenge = f->body_as_Challenge();
  if (f->seq() != 0 || challenge == nullptr || challenge->nonce() == nullptr || challenge->nonce()->size() != kNonceBytes) {
    return Status::Corruption("frame 0: the stream does not open with the answer to a challenge");
  }
  const std::string nonce(reinterpret_cast<const char*>(challenge->nonce()->data()), challenge->nonce()->size());
  if (!opt_.expected_nonce.empty() && !ConstantTimeEqual(nonce, opt_.expected_nonce)) {
    return Status::Refused("frame 0: the stream answers another challenge (a replayed or misdirected stream)");
  }
  std::string recv_key;
  if (!opt_.key.empty()) {
    SessionKeys k = DeriveSessionKeys(opt_.key, nonce);
    recv_key = std::move(k.source_to_destination);
    ack_key_ = std::move(k.destination_to_source);
  }
  s = CheckMac(raw_frame, recv_key, seq, opt_.ignore_macs);
  if (!s.ok()) return s;
  ++seq;

  // The hello.
  s = ReadFrame(in, std::min<size_t>(opt_.max_frame_bytes, 1 << 20), seq, &raw_frame, &bytes_);
  if (!s.ok()) return s;
  s = CheckMac(raw_frame, recv_key, seq, opt_.ignore_macs);
  if (!s.ok()) return s;
  f = fbs::GetFrame(body.data());
  const fbs::Hello* hello = f->body_as_Hello();
  if (hello == nullptr) return Status::Corruption("frame 1: no hello after the challenge");
  if (f->seq() != seq) return Status::Corruption("frame 1: sequence " + std::to_string(f->seq()) + ", expected 1");
  if (hello->magic() != kMagic) return Status::Corruption("frame 1: not a cvmstate migration stream (bad magic)");
  if (hello->format_version() != kFormatVersion) {
    return Status::Corruption("frame 1: stream format version " + std::to_string(hello->format_version()) +
                              ", this cvmstate reads version " + std::to_string(kFormatVersion));
  }
  if (hello->vm() == nullptr || !CheckpointStore::IsValidVmId(hello->vm()->str())) {
    return Status::Corruption("frame 1: invalid VM id");
  }
  *vm_id = hello->vm()->str();
  if (opt_.accept_vm) {
    s = opt_.accept_vm(*vm_id);
    if (!s.ok()) return s;
  }
  if (hello->blocks() == nullptr || hello->blocks()->size() == 0 || hello->blocks()->size() > opt_.max_blocks) {
    return Status::Corruption("frame 1: bad block list");
  }
  VmState vm;
  uint64_t guest = 0;
  for (const fbs::BlockDesc* d : *hello->blocks()) {
    if (d->name() == nullptr || !IsValidPageStateValue(d->initial())) return Status::Corruption("frame 1: bad block");
    s = vm.AddBlock(d->name()->str(), d->size(), d->page_size(), static_cast<PageState>(d->initial()));
    if (!s.ok()) return Status::Corruption("frame 1: " + s.message());
    guest += d->size();
    if (guest > opt_.max_guest_bytes || guest < d->size()) {
      return Status::Refused("frame 1: the guest is larger than this destination accepts");
    }
  }
  ++seq;

  // Rounds, then the end.
  uint32_t round = 0;
  uint64_t frames_in_round = 0, runs_in_round = 0, runs_total = 0;
  bool round_open = false;  // a Sections frame arrived since the last RoundEnd
  std::vector<ChunkRun> runs;
  std::string raw;
  RoundStats cur;
  for (;;) {
    const uint64_t bytes_before = bytes_;
    s = ReadFrame(in, opt_.max_frame_bytes, seq, &raw_frame, &bytes_);
    if (!s.ok()) return s;
    s = CheckMac(raw_frame, recv_key, seq, opt_.ignore_macs);
    if (!s.ok()) return s;
    cur.bytes += bytes_ - bytes_before;
    f = fbs::GetFrame(body.data());
    if (f->seq() != seq) {
      return Status::Corruption("frame " + std::to_string(seq) + ": sequence " + std::to_string(f->seq()) +
                                " out of order");
    }
    switch (f->body_type()) {
      case fbs::Body::Sections: {
        const fbs::Sections* sec = f->body_as_Sections();
        if (sec->round() != round) return Status::Corruption(where("sections") + "belongs to round " + std::to_string(sec->round()) + ", expected " + std::to_string(round));
        if (sec->block_index() >= vm.num_blocks()) return Status::Corruption(where("sections") + "no such block");
        if (sec->payload() == nullptr || sec->raw_size() == 0) return Status::Corruption(where("sections") + "empty");
        runs_total += sec->runs();
        if (runs_total > 4 * opt_.max_runs) {
          return Status::Refused(where("sections") + "the stream carries more runs than this destination accepts");
        }
        s = ZstdDecompressExact(std::string_view(reinterpret_cast<const char*>(sec->payload()->data()), sec->payload()->size()),
                                sec->raw_size(), kMaxFrameRaw, &raw);
        if (!s.ok()) return Status::Corruption(where("sections") + s.message());
        BlockTracker& b = vm.block(sec->block_index());
        const uint64_t pages = b.size() >> b.page_shift();
        std::string_view p(raw);
        uint64_t prev_end = 0, runs_seen = 0;
        for (uint32_t k = 0; k < sec->sections(); ++k) {
          uint64_t gap, len;
          if (!GetVarint(&p, &gap) || !GetVarint(&p, &len) || len == 0 || gap > pages - prev_end ||
              len > pages - prev_end - gap) {
            return Status::Corruption(where("sections") + "section " + std::to_string(k) + " is outside block '" + b.name() + "'");
          }
          const uint64_t begin = prev_end + gap;
          s = ParseRuns(&p, len, sec->runs() - runs_seen, &runs);
          if (!s.ok()) return Status::Corruption(where("sections") + "section " + std::to_string(k) + ": " + s.message());
          runs_seen += runs.size();
          uint64_t at = begin;
          for (const ChunkRun& r : runs) {
            s = b.Convert(at << b.page_shift(), r.pages << b.page_shift(), r.state);
            if (!s.ok()) return Status::Corruption(where("sections") + s.message());
            at += r.pages;
          }
          prev_end = begin + len;
        }
        if (!p.empty() || runs_seen != sec->runs()) return Status::Corruption(where("sections") + "counts do not match the payload");
        ++frames_in_round;
        runs_in_round += runs_seen;
        cur.sections += sec->sections();
        round_open = true;
        break;
      }
      case fbs::Body::RoundEnd: {
        const fbs::RoundEnd* e = f->body_as_RoundEnd();
        if (e->round() != round || e->frames() != frames_in_round || e->runs() != runs_in_round) {
          return Status::Corruption(where("round end") + "does not match the round received");
        }
        if (round >= 10000) return Status::Refused(where("round end") + "too many rounds");
        cur.round = round;
        cur.frames = frames_in_round;
        cur.runs = runs_in_round;
        rounds_.push_back(cur);
        cur = RoundStats{};
        ++round;
        frames_in_round = runs_in_round = 0;
        round_open = false;
        break;
      }
      case fbs::Body::End: {
        end_received_ = std::chrono::steady_clock::now();
        const fbs::End* e = f->body_as_End();
        if (round == 0 || round_open || e->rounds() != round) {
          return Status::Corruption(where("end") + "arrives before its rounds are complete");
        }
        if (!rounds_.empty()) rounds_.back().bytes += cur.bytes;
        if (ComputeStateDigest(vm) != e->digest()) {
          return Status::Corruption(where("end") + "state digest mismatch: the rebuilt state differs from the source's");
        }
        return vm;
      }
      default:
        return Status::Corruption("frame " + std::to_string(seq) + ": unexpected frame type");
    }
    ++seq;
  }
}

}  // namespace cvmstate

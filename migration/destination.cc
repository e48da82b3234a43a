#include "migration/destination.h"

#include <algorithm>

#include "codec/chunk_codec.h"
#include "codec/state_digest.h"
#include "migration/auth.h"
#include "migration/frames.h"
#include "tracker/names.h"

namespace cvmstate {

using namespace migration_internal;
namespace fbs = cvmstate::schema;

namespace {

std::string Where(uint64_t seq, const char* type) { return "frame " + std::to_string(seq) + " (" + type + "): "; }

}  // namespace

MigrationDestination::MigrationDestination(Options options) : opt_(std::move(options)) {
  // Keeps the budget arithmetic (64 x, 4 x max_runs) far from overflow.
  opt_.max_runs = std::min<uint64_t>(opt_.max_runs, kMaxMaxRuns);
}

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

Status MigrationDestination::ReadFrameAt(ByteSource* in, size_t max, uint64_t seq) {
  Status s = ReadFrame(in, max, seq, &frame_, &bytes_);
  if (!s.ok()) return s;
  return CheckMac(frame_, recv_key_, seq, opt_.ignore_macs);
}

// Frame 0, the answer to the challenge: small, and checked before anything
// large is read or allocated. Derives the session keys.
Status MigrationDestination::ReadChallengeAnswer(ByteSource* in) {
  Status s = ReadFrame(in, 4096, 0, &frame_, &bytes_);
  if (!s.ok()) return s;
  const fbs::Frame* f = fbs::GetFrame(frame_.body.data());
  const fbs::Challenge* challenge = f->body_as_Challenge();
  if (f->seq() != 0 || challenge == nullptr || challenge->nonce() == nullptr ||
      challenge->nonce()->size() != kNonceBytes) {
    return Status::Corruption("frame 0: the stream does not open with the answer to a challenge");
  }
  const std::string nonce(reinterpret_cast<const char*>(challenge->nonce()->data()), challenge->nonce()->size());
  if (!opt_.expected_nonce.empty() && !ConstantTimeEqual(nonce, opt_.expected_nonce)) {
    return Status::Refused("frame 0: the stream answers another challenge (a replayed or misdirected stream)");
  }
  if (!opt_.key.empty()) {
    SessionKeys k = DeriveSessionKeys(opt_.key, nonce);
    recv_key_ = std::move(k.source_to_destination);
    ack_key_ = std::move(k.destination_to_source);
  }
  return CheckMac(frame_, recv_key_, 0, opt_.ignore_macs);
}

// Frame 1, the hello: the VM id (offered to accept_vm) and its blocks.
Result<VmState> MigrationDestination::ReadHello(ByteSource* in, std::string* vm_id) {
  Status s = ReadFrameAt(in, std::min<size_t>(opt_.max_frame_bytes, 1 << 20), 1);
  if (!s.ok()) return s;
  const fbs::Frame* f = fbs::GetFrame(frame_.body.data());
  const fbs::Hello* hello = f->body_as_Hello();
  if (hello == nullptr) return Status::Corruption("frame 1: no hello after the challenge");
  if (f->seq() != 1) return Status::Corruption("frame 1: sequence " + std::to_string(f->seq()) + ", expected 1");
  if (hello->magic() != kMagic) return Status::Corruption("frame 1: not a cvmstate migration stream (bad magic)");
  // Version 1 differs only in End's digest (the run-list digest).
  if (hello->format_version() != kFormatVersion && hello->format_version() != 1) {
    return Status::Corruption("frame 1: stream format version " + std::to_string(hello->format_version()) +
                              ", this cvmstate reads versions 1 and " + std::to_string(kFormatVersion));
  }
  run_list_digest_ = hello->format_version() == 1;
  if (hello->vm() == nullptr || !IsValidVmId(hello->vm()->str())) return Status::Corruption("frame 1: invalid VM id");
  *vm_id = hello->vm()->str();
  if (opt_.accept_vm) {
    s = opt_.accept_vm(*vm_id);
    if (!s.ok()) return s;
  }
  // A VM with no blocks is a VM too (the store keeps it; an absent vector
  // is an empty one).
  const uint64_t nblocks = hello->blocks() == nullptr ? 0 : hello->blocks()->size();
  if (nblocks > opt_.max_blocks) {
    return Status::Refused("frame 1: " + std::to_string(nblocks) + " blocks, more than this destination accepts (" +
                           std::to_string(opt_.max_blocks) + ")");
  }
  if (hello->total_runs() > opt_.max_runs) {
    return Status::Refused("frame 1: the source holds " + std::to_string(hello->total_runs()) +
                           " runs, more runs than this destination accepts (max_runs " +
                           std::to_string(opt_.max_runs) + ")");
  }
  VmState vm;
  uint64_t guest = 0, chunks = 0;
  for (uint64_t i = 0; i < nblocks; ++i) {
    const fbs::BlockDesc* d = hello->blocks()->Get(static_cast<flatbuffers::uoffset_t>(i));
    if (d->name() == nullptr || !IsValidPageStateValue(d->initial())) return Status::Corruption("frame 1: bad block");
    guest += d->size();
    if (guest > opt_.max_guest_bytes || guest < d->size()) {
      return Status::Refused("frame 1: the guest is larger than this destination accepts");
    }
    s = vm.AddBlock(d->name()->str(), d->size(), d->page_size(), static_cast<PageState>(d->initial()));
    if (!s.ok()) return Status::Corruption("frame 1: " + s.message());
    chunks += vm.block(vm.num_blocks() - 1).map().num_chunks();
  }
  state_bytes_ = vm.MemoryBytes();
  state_budget_ = state_bytes_ + kStateBytesPerRun * opt_.max_runs + kStateBytesPerChunk * chunks;
  grown_since_compaction_ = state_budget_;  // the first time over, compact at once
  return vm;
}

// One Sections frame of the current round, applied to vm.
Status MigrationDestination::ApplySections(const fbs::Sections& sec, uint64_t seq, VmState* vm) {
  const std::string where = Where(seq, "sections");
  if (sec.round() != round_.index) {
    return Status::Corruption(where + "belongs to round " + std::to_string(sec.round()) + ", expected " +
                              std::to_string(round_.index));
  }
  if (sec.block_index() >= vm->num_blocks()) return Status::Corruption(where + "no such block");
  if (sec.payload() == nullptr || sec.raw_size() == 0) return Status::Corruption(where + "empty");
  round_.runs_total += sec.runs();
  // Bounded work, not memory: a small max_runs must not refuse a small VM
  // whose pages churn over many rounds.
  if (round_.runs_total > 4 * std::max(opt_.max_runs, kDefaultMaxRuns)) {
    return Status::Refused(where + "the stream carries more runs than this destination accepts");
  }
  std::string raw;
  Status s = ZstdDecompressExact(
      std::string_view(reinterpret_cast<const char*>(sec.payload()->data()), sec.payload()->size()), sec.raw_size(),
      kMaxFrameRaw, &raw);
  if (!s.ok()) return Status::Corruption(where + s.message());
  BlockTracker& b = vm->block(sec.block_index());
  const uint64_t pages = b.size() >> b.page_shift();
  std::string_view p(raw);
  std::vector<ChunkRun> runs;
  uint64_t prev_end = 0, runs_seen = 0;
  for (uint32_t k = 0; k < sec.sections(); ++k) {
    const std::string swhere = where + "section " + std::to_string(k);
    uint64_t gap, len;
    if (!GetVarint(&p, &gap) || !GetVarint(&p, &len) || len == 0 || gap > pages - prev_end ||
        len > pages - prev_end - gap) {
      return Status::Corruption(swhere + " is outside block '" + b.name() + "'");
    }
    const uint64_t begin = prev_end + gap;
    // At most one section's runs are in flight (a source starts a new
    // section after kMaxSectionRuns).
    s = ParseRuns(&p, len, std::min<uint64_t>(sec.runs() - runs_seen, kMaxSectionRuns), &runs);
    if (!s.ok()) return Status::Corruption(swhere + ": " + s.message());
    runs_seen += runs.size();
    const uint64_t bytes_before = b.MemoryBytes();
    uint64_t at = begin;
    for (const ChunkRun& r : runs) {
      s = b.Convert(at << b.page_shift(), r.pages << b.page_shift(), r.state);
      // The range is checked above: only a listener registered by
      // on_round_end refuses a conversion (a refusal, or a run that does
      // not fit its granularity), and its code is kept.
      if (!s.ok()) return s.WithPrefix(swhere + ": ");
      at += r.pages;
    }
    // Once read whole, the summary follows each section.
    if (!summaries_.empty()) summaries_[sec.block_index()].UpdatePages(b, begin, at);
    const uint64_t bytes_after = b.MemoryBytes();
    state_bytes_ = state_bytes_ - bytes_before + bytes_after;
    if (bytes_after > bytes_before) grown_since_compaction_ += bytes_after - bytes_before;
    // Over the budget: first give back what chunks thinned out over the
    // rounds still hold. A pass scans every dense chunk, so it runs again
    // only after the state grew by an eighth of the budget: a stream can
    // buy at most a few dozen passes with all the runs it may carry.
    if (state_bytes_ > state_budget_ && grown_since_compaction_ >= state_budget_ / 8) {
      for (size_t i = 0; i < vm->num_blocks(); ++i) vm->block(i).CompactMemory();
      state_bytes_ = vm->MemoryBytes();
      grown_since_compaction_ = 0;
    }
    if (state_bytes_ > state_budget_) {
      const std::string budget = state_budget_ >= (uint64_t{1} << 20) ? std::to_string(state_budget_ >> 20) + " MiB"
                                                                       : std::to_string(state_budget_ >> 10) + " KiB";
      return Status::Refused(swhere + ": the state being received needs more memory than this destination's budget (" +
                             budget + " for max_runs " + std::to_string(opt_.max_runs) + ")");
    }
    prev_end = begin + len;
  }
  if (!p.empty() || runs_seen != sec.runs()) return Status::Corruption(where + "counts do not match the payload");
  ++round_.frames;
  round_.runs += runs_seen;
  round_.stats.sections += sec.sections();
  round_.open = true;
  return Status::OK();
}

Result<VmState> MigrationDestination::Receive(ByteSource* in, std::string* vm_id) {
  if (state_) return Status::InvalidArgument("a destination receives one stream");
  Status s = ReceiveState(in, vm_id);
  if (!s.ok()) {
    // Kept only for what on_round_end may have registered on it.
    if (!opt_.on_round_end) state_.reset();
    return s;
  }
  VmState vm = std::move(*state_);
  state_.reset();
  return vm;
}

Status MigrationDestination::ReceiveState(ByteSource* in, std::string* vm_id) {
  Status s = ReadChallengeAnswer(in);
  if (!s.ok()) return s;
  auto hello = ReadHello(in, vm_id);
  if (!hello.ok()) return hello.status();
  state_.emplace(std::move(hello).value());
  VmState& vm = *state_;
  // Rounds, then the end.
  for (uint64_t seq = 2;; ++seq) {
    const uint64_t bytes_before = bytes_;
    s = ReadFrameAt(in, opt_.max_frame_bytes, seq);
    if (!s.ok()) return s;
    round_.stats.bytes += bytes_ - bytes_before;
    const fbs::Frame* f = fbs::GetFrame(frame_.body.data());
    if (f->seq() != seq) {
      return Status::Corruption("frame " + std::to_string(seq) + ": sequence " + std::to_string(f->seq()) +
                                " out of order");
    }
    switch (f->body_type()) {
      case fbs::Body::Sections:
        s = ApplySections(*f->body_as_Sections(), seq, &vm);
        if (!s.ok()) return s;
        break;
      case fbs::Body::RoundEnd: {
        const fbs::RoundEnd* e = f->body_as_RoundEnd();
        if (e->round() != round_.index || e->frames() != round_.frames || e->runs() != round_.runs) {
          return Status::Corruption(Where(seq, "round end") + "does not match the round received");
        }
        if (round_.index >= 10000) return Status::Refused(Where(seq, "round end") + "too many rounds");
        const uint32_t ended = round_.index;
        if (summaries_.empty()) {
          summaries_.resize(vm.num_blocks());
          for (size_t i = 0; i < vm.num_blocks(); ++i) summaries_[i].Rebuild(vm.block(i));
        }
        round_.stats.round = round_.index;
        round_.stats.frames = round_.frames;
        round_.stats.runs = round_.runs;
        rounds_.push_back(round_.stats);
        round_ = Round{round_.index + 1, 0, 0, round_.runs_total, false, RoundStats{}};
        if (opt_.on_round_end) {
          s = opt_.on_round_end(&vm, ended);
          if (!s.ok()) return s.WithPrefix(Where(seq, "round end"));
        }
        break;
      }
      case fbs::Body::End: {
        end_received_ = std::chrono::steady_clock::now();
        const fbs::End* e = f->body_as_End();
        if (round_.index == 0 || round_.open || e->rounds() != round_.index) {
          return Status::Corruption(Where(seq, "end") + "arrives before its rounds are complete");
        }
        if (e->total_runs() > opt_.max_runs) {
          return Status::Refused(Where(seq, "end") + "the state holds " + std::to_string(e->total_runs()) +
                                 " runs, more runs than this destination accepts (max_runs " +
                                 std::to_string(opt_.max_runs) + ")");
        }
        if (!rounds_.empty()) rounds_.back().bytes += round_.stats.bytes;
        uint64_t digest = 0;
        if (run_list_digest_) {
          digest = ComputeRunListDigest(vm);
        } else {
          std::vector<uint64_t> sums;
          for (const ChunkSummary& cs : summaries_) sums.push_back(cs.digest_sum());
          digest = CombineStateDigest(vm, sums);
        }
        if (digest != e->digest()) {
          return Status::Corruption(Where(seq, "end") +
                                    "state digest mismatch: the rebuilt state differs from the source's");
        }
        return Status::OK();
      }
      default:
        return Status::Corruption("frame " + std::to_string(seq) + ": unexpected frame type");
    }
  }
}

}  // namespace cvmstate

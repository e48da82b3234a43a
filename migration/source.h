// MigrationSource: streams a VM's page state while the guest keeps
// converting pages: round 0 carries the full state, every later round the
// ranges changed since the previous one, the last round (stop-and-copy)
// ends with the state digest. Frames are described in
// docs/stream-format.md.
//
// Thread-safety: one thread at a time; the VmState must not be used by
// another thread while a call runs.
#ifndef CVMSTATE_MIGRATION_SOURCE_H_
#define CVMSTATE_MIGRATION_SOURCE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "migration/byte_stream.h"
#include "migration/round_stats.h"
#include "codec/chunk_summary.h"
#include "tracker/journal_reader.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

class MigrationSource {
 public:
  // vm must outlive the source and must not gain blocks while it streams;
  // the source reads its change journal (as a JournalReader).
  MigrationSource(VmState* vm, std::string vm_id, ByteSink* sink);

  // Authenticates every frame with keys derived from `key` (see
  // LoadPskFile) and the stream's nonce. Call before Begin.
  void SetKey(std::string key) { key_ = std::move(key); }
  // InvalidArgument if the stream format cannot carry `vm` (more than 4,096
  // blocks, more than 64 TiB in all): Begin refuses it before sending
  // anything, so a source never commits a state no destination can read.
  [[nodiscard]] static Status CheckStreamable(const VmState& vm);
  // Over a network: reads the destination's challenge, the nonce to answer.
  static Result<std::string> ReadChallenge(ByteSource* from);
  // For a stream with no live destination (a file): a fresh nonce.
  static Result<std::string> NewNonce();

  // Sends the answer to the challenge (`nonce`) and the hello, and starts
  // round 0 (the full state) for Step to send.
  [[nodiscard]] Status Open(std::string_view nonce);
  bool opened() const { return journal_.attached(); }

  // What one Step sent.
  struct StepResult {
    uint64_t bytes = 0;
    bool round_done = false;  // the round's last frame (its RoundEnd) went
  };
  // Sends part of the current round (a new one, of what changed since the
  // previous round, if none is in progress) and returns: each frame's raw
  // sections are cut to what is left of max_bytes (256 bytes at least), and the
  // step stops once it sent max_bytes, so it goes past max_bytes by at most
  // one frame's overhead (header, MAC, table, zstd: about 200 bytes) or a
  // frame of 256 raw bytes. Every step sends at least one frame. The
  // guest may convert pages between steps: a range is read when its frame
  // is made, and changes made after the round began go in the next round.
  Result<StepResult> Step(uint64_t max_bytes);
  bool round_in_progress() const { return round_.has_value(); }
  // An estimate of the bytes the next round would send now (before Open:
  // the challenge answer, the hello and the full state; during a round:
  // what the round has left plus what changed since it began). Computed
  // from the runs to send without compressing them, so it is above the
  // truth but for zstd's expansion of incompressible frames, never by more
  // than one frame. Costs O(runs to send).
  uint64_t PendingBytes() const;

  // Open, then round 0 in one go.
  [[nodiscard]] Status Begin(std::string_view nonce);
  // Sends a pre-copy round in one go: the rest of the round in progress,
  // or a new one of the ranges changed since the previous round.
  Result<RoundStats> SendRound();
  // Sends the rest of a round in progress, then the final round
  // (stop-and-copy: the guest is paused, so what changed last goes now) and
  // the end frame with the state digest.
  Result<RoundStats> Finish();
  // Waits for the destination's acknowledgement: OK once it is ready, or
  // the error it reported (Refused) or met (IOError, TimedOut, Corruption).
  [[nodiscard]] Status AwaitAck(ByteSource* from);

  const std::vector<RoundStats>& rounds() const { return rounds_; }
  uint64_t total_bytes() const { return bytes_; }

 private:
  // A round being sent: the ranges it carries and how far it got.
  struct RoundCursor {
    RoundStats stats;
    uint64_t bytes0 = 0;  // bytes_ when it began
    std::vector<std::vector<PageRange>> todo;  // per block
    size_t block = 0, range = 0;
    uint64_t page = 0;  // where the next section starts within todo[block][range]
  };
  void StartRound(bool full);
  [[nodiscard]] Status CheckBlocks() const;
  [[nodiscard]] Status SendHello();


  VmState* vm_;
  std::string id_;
  std::string key_;                 // derived from the pre-shared key; empty: none
  std::string send_key_, ack_key_;  // per-direction session keys
  ByteSink* sink_;
  JournalReader journal_;
  // Each block's digest sum and run count, read whole at round 0 and kept
  // up to date from the ranges each round sends: the end frame costs what
  // changed last, not a pass over every run while the guest is paused.
  std::vector<ChunkSummary> summaries_;
  uint64_t seq_ = 0;
  uint64_t bytes_ = 0;
  size_t blocks_ = 0;  // blocks announced in the hello
  std::vector<RoundStats> rounds_;
  std::optional<RoundCursor> round_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_SOURCE_H_

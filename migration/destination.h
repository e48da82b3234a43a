// MigrationDestination: reads one migration stream, verifies every frame
// (length caps before allocation, CRC-32C, FlatBuffers verifier, MAC when
// keyed, sequence, meaning), rebuilds the state and proves it equal to the
// source's with its digest. It only receives: committing the state,
// replaying it to listeners and acknowledging is the incoming migration
// sequence (session/incoming.h).
//
// Thread-safety: one thread at a time.
#ifndef CVMSTATE_MIGRATION_DESTINATION_H_
#define CVMSTATE_MIGRATION_DESTINATION_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codec/chunk_summary.h"
#include "migration/byte_stream.h"
#include "migration/raw_frame.h"
#include "migration/round_stats.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

namespace schema {
struct Sections;
}  // namespace schema

class MigrationDestination {
 public:
  static constexpr uint64_t kDefaultMaxRuns = uint64_t{1} << 22;  // 4,194,304
  static constexpr uint64_t kMaxMaxRuns = uint64_t{1} << 32;      // larger values are taken as this
  // What a run map may take a run in the worst legitimate state (a dense
  // chunk of 16 KiB holding 257 runs before it turns back into a list),
  // and a chunk of the guest (directory entry, key, smallest list).
  static constexpr uint64_t kStateBytesPerRun = 64;
  static constexpr uint64_t kStateBytesPerChunk = 96;

  struct Options {
    size_t max_frame_bytes = size_t{8} << 20;      // larger frames end the migration
    uint64_t max_guest_bytes = uint64_t{1} << 46;  // 64 TiB over all blocks
    uint64_t max_blocks = 4096;
    // The largest state accepted, in runs, and with it the memory budget:
    // the hello's run count above it is refused at once; the state being
    // built may take at most kStateBytesPerRun bytes a run of max_runs plus
    // kStateBytesPerChunk a run-map chunk of the guest (checked after every
    // section, so one section of at most 65,536 runs is all it can
    // overshoot; when over, dense chunks thinned out over the rounds are
    // first turned back into lists); the stream may carry at most
    // 4 x max(max_runs, kDefaultMaxRuns) runs in all (bounded work); the end
    // frame's run count above it is refused. At most kMaxMaxRuns.
    uint64_t max_runs = kDefaultMaxRuns;
    // Called with the VM id from the hello; a non-OK status refuses it
    // (for example because the id already exists in the store).
    std::function<Status(const std::string&)> accept_vm;
    // The key derived from the pre-shared key file: every frame must be
    // authenticated with it. Empty: frames must carry no MAC.
    std::string key;
    // Over a network: the nonce this side sent; the stream must answer it.
    // Empty (a file): the stream's own nonce is taken.
    std::string expected_nonce;
    // Inspection only (dump --stream): read authenticated streams without
    // the key, checking integrity but not authenticity.
    bool ignore_macs = false;
    // Called when a round has arrived whole (round 0 is the bulk of the
    // state; later rounds carry what changed since), with the round's
    // index and the state as it stands, before any later frame is read.
    // Later sections change the state through BlockTracker::Convert, so
    // listeners registered at round 0 are told every change: the bulk is
    // replayed to them while the source's guest still runs, not in its
    // downtime (and its records can be staged then). A non-OK status ends
    // the receive with it. A listener that refuses a later change ends it
    // too (its code kept, the frame named).
    std::function<Status(VmState*, uint32_t round)> on_round_end;
  };
  explicit MigrationDestination(Options options);

  // Reads one whole stream (hello, rounds, end), verifying everything, and
  // returns the rebuilt state, whose digest equals the source's. *vm_id gets
  // the stream's VM id. Any fault ends it with an error naming it.
  Result<VmState> Receive(ByteSource* in, std::string* vm_id);

  // After Receive failed, with on_round_end set: the state as far as it
  // was built (null if the hello was not read), kept so that listeners
  // registered on it by on_round_end can be unregistered before it goes,
  // with this object. Null without on_round_end (freed at once).
  VmState* partial_state() { return state_ ? &*state_ : nullptr; }

  // Over a network, before Receive: sends the challenge the source must
  // answer (a fresh nonce; put it in Options::expected_nonce).
  [[nodiscard]] static Status SendChallenge(ByteSink* out, std::string_view nonce);

  // Sends the acknowledgement: ready, or an error with its reason
  // (authenticated when the stream was).
  [[nodiscard]] Status SendAck(ByteSink* out, bool ok, const std::string& reason);

  const std::vector<RoundStats>& rounds() const { return rounds_; }
  uint64_t total_bytes() const { return bytes_; }
  // After Receive returned a state: each block's summary of it (digest sum,
  // run count, stretches), against which the end frame's digest was
  // checked.
  const std::vector<ChunkSummary>& summaries() const { return summaries_; }
  // When the end frame was verified: the start of the guest's downtime.
  std::chrono::steady_clock::time_point end_received() const { return end_received_; }

 private:
  // Receive's work: builds the state in state_.
  [[nodiscard]] Status ReceiveState(ByteSource* in, std::string* vm_id);
  // The steps of Receive, in stream order.
  [[nodiscard]] Status ReadChallengeAnswer(ByteSource* in);
  Result<VmState> ReadHello(ByteSource* in, std::string* vm_id);
  [[nodiscard]] Status ApplySections(const schema::Sections& sec, uint64_t seq, VmState* vm);
  [[nodiscard]] Status ReadFrameAt(ByteSource* in, size_t max, uint64_t seq);

  Options opt_;
  std::string recv_key_;  // session key of the stream, once known
  std::string ack_key_;   // session key of the answer, once known
  migration_internal::RawFrame frame_;  // the frame being read
  bool run_list_digest_ = false;  // a format 1 stream: End carries the run-list digest
  // Read whole at the first round's end, then kept up to date section by
  // section, so that verifying the end frame costs O(blocks). At most a
  // piece per 512 MiB chunk of the (capped) guest.
  std::vector<ChunkSummary> summaries_;
  std::vector<RoundStats> rounds_;
  std::optional<VmState> state_;  // being built; moved out when Receive succeeds
  // The round being received.
  struct Round {
    uint32_t index = 0;
    uint64_t frames = 0, runs = 0, runs_total = 0;
    bool open = false;  // a Sections frame arrived since the last RoundEnd
    RoundStats stats;
  } round_;
  uint64_t bytes_ = 0;
  uint64_t state_bytes_ = 0;   // the run maps being built (RunMap::MemoryBytes)
  uint64_t state_budget_ = 0;  // set from max_runs and the hello's blocks
  uint64_t grown_since_compaction_ = 0;  // bytes the maps grew by since they were last compacted
  std::chrono::steady_clock::time_point end_received_{};
};

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_DESTINATION_H_

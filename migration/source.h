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
#include <string>
#include <string_view>
#include <vector>

#include "migration/byte_stream.h"
#include "migration/round_stats.h"
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

  // Sends the answer to the challenge (`nonce`), the hello and round 0:
  // the full state.
  [[nodiscard]] Status Begin(std::string_view nonce);
  // Sends a pre-copy round: the ranges changed since the previous round.
  Result<RoundStats> SendRound();
  // Sends the final round (stop-and-copy: the guest is paused, so what
  // changed last goes now) and the end frame with the state digest.
  Result<RoundStats> Finish();
  // Waits for the destination's acknowledgement: OK once it is ready, or
  // the error it reported (Refused) or met (IOError, TimedOut, Corruption).
  [[nodiscard]] Status AwaitAck(ByteSource* from);

  const std::vector<RoundStats>& rounds() const { return rounds_; }
  uint64_t total_bytes() const { return bytes_; }

 private:
  Result<RoundStats> SendSections(bool full);
  [[nodiscard]] Status SendHello();

  VmState* vm_;
  std::string id_;
  std::string key_;                 // derived from the pre-shared key; empty: none
  std::string send_key_, ack_key_;  // per-direction session keys
  ByteSink* sink_;
  JournalReader journal_;
  uint64_t seq_ = 0;
  uint64_t bytes_ = 0;
  size_t blocks_ = 0;  // blocks announced in the hello
  std::vector<RoundStats> rounds_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_MIGRATION_SOURCE_H_

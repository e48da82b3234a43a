// OutgoingMigration: the source's side of a live migration, the sequence a
// VMM runs while its guest keeps converting pages:
//   1. over a live channel, read the destination's challenge (a recorded
//      stream draws its own nonce);
//   2. round 0: the full state;
//   3. rounds 1 .. rounds-1: what changed since the previous round, with
//      the guest running (between_rounds lets it convert);
//   4. the last round, stop-and-copy, with the guest paused, then the end
//      frame with the state digest;
//   5. wait for the destination's acknowledgement;
//   6. only then commit the source's final state to its store, if it has one
//      (so a failed migration leaves the source's checkpoint as it was).
// A destination that refuses says why in its acknowledgement; when a write
// fails the sequence still reads it, so the error names the real reason.
//
// Thread-safety: one thread at a time, and the VmState only from it.
#ifndef CVMSTATE_SESSION_OUTGOING_H_
#define CVMSTATE_SESSION_OUTGOING_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "migration/byte_stream.h"
#include "migration/round_stats.h"
#include "store/checkpoint_store.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

struct OutgoingOptions {
  // Rounds after round 0; the last one is the stop-and-copy. At least 1.
  int rounds = 3;
  // Derived from the pre-shared key file (LoadPskFile); empty: none.
  std::string key;
  // The channel from the destination (not owned): its challenge and its
  // acknowledgement arrive there, each read within the ByteSource's own
  // deadline. Null: a recorded stream (no challenge, no acknowledgement).
  ByteSource* replies = nullptr;
  // If a write fails, the source to read the destination's reason from
  // (with a short deadline). Null: use `replies`.
  ByteSource* refusal = nullptr;
  // Called once the stream is complete and, over a live channel,
  // acknowledged (a recorded stream: once its bytes are durable), before
  // the source commits. Null: nothing.
  std::function<Status()> on_complete;
  // Commit the final state here, under `commit_id` with `commit_sequence`,
  // once the destination is ready. Null: no commit.
  CheckpointStore* commit_to = nullptr;
  std::string commit_id;
  uint64_t commit_sequence = 1;
};

// Called before round r (1 .. rounds) is sent: the guest keeps converting.
// `last` is true for the stop-and-copy round (the guest is paused after
// this call returns). A non-OK status ends the migration with it.
using BetweenRounds = std::function<Status(int round, bool last)>;

struct OutgoingReport {
  std::vector<RoundStats> rounds;
  uint64_t total_bytes = 0;
  uint64_t commit_bytes = 0;  // the source's final commit, if any
};

// Runs the whole sequence; on error nothing was committed on this side.
Status RunOutgoingMigration(VmState* vm, const std::string& vm_id, ByteSink* sink, const OutgoingOptions& options,
                            const BetweenRounds& between_rounds, OutgoingReport* report);

}  // namespace cvmstate

#endif  // CVMSTATE_SESSION_OUTGOING_H_

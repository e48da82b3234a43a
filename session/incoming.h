// IncomingMigration: the destination's side of a live migration, the whole
// sequence a VMM runs before the guest resumes on this host:
//   1. Receive: answer nothing until the source answers our challenge, then
//      read and verify the whole stream (MigrationDestination). With a
//      store, the stream's VM id is held from the hello on (AlreadyExists
//      if the store has it or another migration holds it: a migration
//      never overwrites) and each round's records are staged as the round
//      ends (VmCheckpointer::StageState);
//   2. Commit: store the state under its VM id in one synced batch: what
//      changed since the last stage, and the manifest, not the state;
//   3. Replay: register the destination's listeners on every block, which
//      replays the shared runs to DMA-mapping listeners and the private runs
//      to memory-attribute listeners;
//   4. Acknowledge: tell the source "ready"; only then may it commit.
// Run() registers the listeners in step 1 instead, as soon as the first
// round (the bulk of the state) has arrived: replaying it costs O(runs)
// (a mapping per shared run), and done then it overlaps the pre-copy
// rounds, while the source's guest still runs; later rounds reach the
// listeners as conversions. The guest's downtime then holds the checks,
// the commit of the last round and the acknowledgement: what changed, not
// the state.
// If a step fails, Run() takes back what the earlier ones did (listeners
// unregistered, what was staged or committed deleted), tells the source
// why over a live channel, and returns the error; the store is as it was
// (a process killed midway leaves staged records no reader sees, which
// the id's next commit replaces). The steps are public for callers that
// run them one by one (the C API's v0 calls); they must be called in
// order. Destroyed after a failure without Abort, it takes back what was
// not committed, without telling the source.
//
// Thread-safety: one thread at a time.
#ifndef CVMSTATE_SESSION_INCOMING_H_
#define CVMSTATE_SESSION_INCOMING_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "migration/byte_stream.h"
#include "migration/destination.h"
#include "migration/round_stats.h"
#include "store/checkpoint_store.h"
#include "store/vm_checkpointer.h"
#include "tracker/listener.h"
#include "tracker/status.h"
#include "tracker/vm_state.h"

namespace cvmstate {

struct IncomingOptions {
  // Caps and key of the stream. accept_vm and expected_nonce are set by the
  // sequence itself.
  MigrationDestination::Options stream;
  // Commit under this id instead of the stream's (empty: the stream's).
  std::string commit_as;
  // The channel back to the source (not owned). Null: a recorded stream,
  // read without a challenge and never acknowledged; bytes after its end
  // frame are refused.
  ByteSink* reply = nullptr;
  // After a failure over a live channel, once the refusal is sent: reads and
  // drops what the source still sends, within a deadline, so that it gets
  // to read the reason (closing with unread data would reset the
  // connection and discard it). Null: nothing is drained.
  std::function<void()> drain;
};

// The listeners (not owned) to register on the whole of `block`: at the
// first round's end (Run, or Receive given them) or after the commit
// (Replay). They stay registered on the returned VmState after a
// successful Run(): the caller unregisters them before it destroys them.
using DestinationListeners = std::function<std::vector<StateListener*>(const BlockTracker& block)>;

// What the sequence did, for reports. Times are milliseconds; the
// downtime's parts are the work on the last round as it ended (the
// stop-and-copy round: the source's guest is paused by then) and what
// follows the end frame.
struct IncomingReport {
  std::string vm_id;         // as the stream named it
  std::string committed_as;  // the id in the store
  uint64_t commit_bytes = 0;
  uint64_t stream_bytes = 0;
  std::vector<RoundStats> rounds;
  uint64_t dma_listeners = 0, attribute_listeners = 0, other_listeners = 0;
  double verify_ms = 0;  // end frame -> verified (digest, trailing bytes)
  double commit_ms = 0;  // the synced commit
  double replay_ms = 0;  // listener registration and replay in step 3
  double ack_ms = 0;     // sending the acknowledgement
  double last_stage_ms = 0;  // staging the last round's records, before the end frame
  double downtime_ms() const {
    // A stream of one round is all stop-and-copy: its registration too.
    return (rounds.size() == 1 ? early_replay_ms : 0) + last_stage_ms + verify_ms + commit_ms + replay_ms + ack_ms;
  }
  // Listener registration and replay at the first round's end (Run(), or
  // Receive given listeners): before the end frame, outside the downtime.
  double early_replay_ms = 0;
  // Staging each round's records as it ended, all rounds (before the end
  // frame; the last one's is last_stage_ms too).
  double stage_ms = 0;
  uint64_t staged_bytes = 0;
};

class IncomingMigration {
 public:
  // store (not owned) must outlive the migration. Null: the caller commits
  // elsewhere (the C API's v0 calls); Commit and Replay then fail, and
  // Acknowledge needs only Receive.
  IncomingMigration(CheckpointStore* store, IncomingOptions options);
  ~IncomingMigration();

  // Steps 1 to 4; each requires the previous one to have succeeded.
  // Given listeners (not null; it must outlive the call), Receive registers
  // them once the first round has arrived and Replay is then refused; if
  // Receive then fails, call Abort to withdraw them (Run does).
  [[nodiscard]] Status Receive(ByteSource* in, const DestinationListeners* listeners = nullptr);
  [[nodiscard]] Status Commit();
  [[nodiscard]] Status Replay(const DestinationListeners& listeners);
  [[nodiscard]] Status Acknowledge();
  // Takes back what the steps did (unregisters the listeners registered,
  // deletes what was staged or committed), tells the source `why` over a
  // live channel and drains it; returns why.
  Status Abort(const Status& why);

  // The four steps, the listeners registered during Receive, or Abort on
  // the first failure. On success the returned state carries the
  // registered listeners.
  Result<VmState> Run(ByteSource* in, const DestinationListeners& listeners);

  // The received state (after Receive), and what happened so far. A
  // state changed before Commit is committed as it is then (the change
  // journal tells the commit which chunks changed since the last stage).
  VmState* vm() { return vm_ ? &*vm_ : nullptr; }
  // Moves the received state out, with the listeners registered on it
  // (Commit, Replay and Abort's withdrawal are then impossible; records
  // staged for the commit are deleted).
  std::optional<VmState> TakeState();
  const IncomingReport& report() const { return report_; }

 private:
  using Clock = std::chrono::steady_clock;

  // Registers listeners(block) on the whole of every block of vm.
  [[nodiscard]] Status RegisterListeners(VmState* vm, const DestinationListeners& listeners);
  // At the end of each round: registers the listeners (round 0, if
  // given), stages the round's records (with a store).
  [[nodiscard]] Status EndOfRound(VmState* vm, uint32_t round, const DestinationListeners* listeners);
  // Unregisters the listeners registered here and deletes what was staged
  // or committed here.
  void Withdraw();

  CheckpointStore* store_;
  IncomingOptions opt_;
  std::optional<MigrationDestination> dest_;  // made in Receive, once the nonce is drawn
  std::optional<VmState> vm_;
  bool received_ = false;
  bool committed_ = false;
  bool acknowledged_ = false;
  bool listeners_in_receive_ = false;
  bool staged_records_ = false;  // a stage succeeded: the store holds records of target_
  bool aborted_ = false;
  std::string target_;     // the id to commit under, from the hello on
  std::vector<std::pair<BlockTracker*, StateListener*>> registered_;
  IncomingReport report_;
  // Holds target_ in the store from the hello to the acknowledgement and
  // stages the rounds. Declared last, destroyed first: it reads the
  // journal of the state in vm_ or dest_.
  std::optional<VmCheckpointer> staged_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_SESSION_INCOMING_H_

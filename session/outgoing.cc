#include "session/outgoing.h"

#include "migration/source.h"

namespace cvmstate {
namespace {

// Adds the destination's own reason when a write failed because it refused.
Status WithDestinationReason(const Status& failed, MigrationSource* src, const OutgoingOptions& o) {
  ByteSource* from = o.refusal != nullptr ? o.refusal : o.replies;
  if (from == nullptr || failed.code() != Status::Code::kIOError) return failed;
  Status ack = src->AwaitAck(from);
  return ack.code() == Status::Code::kRefused ? ack : failed;
}

}  // namespace

Status RunOutgoingMigration(VmState* vm, const std::string& vm_id, ByteSink* sink, const OutgoingOptions& o,
                            const BetweenRounds& between_rounds, OutgoingReport* report) {
  if (o.rounds < 1) return Status::InvalidArgument("a migration needs at least one round after the full state");
  Status streamable = MigrationSource::CheckStreamable(*vm);
  if (!streamable.ok()) return streamable;
  auto nonce = o.replies != nullptr ? MigrationSource::ReadChallenge(o.replies) : MigrationSource::NewNonce();
  if (!nonce.ok()) return nonce.status();
  MigrationSource src(vm, vm_id, sink);
  src.SetKey(o.key);
  auto finish_report = [&] {
    report->rounds = src.rounds();
    report->total_bytes = src.total_bytes();
  };
  Status s = src.Begin(nonce.value());
  for (int r = 1; s.ok() && r <= o.rounds; ++r) {
    const bool last = r == o.rounds;
    if (between_rounds) s = between_rounds(r, last);
    if (!s.ok()) break;
    auto round = last ? src.Finish() : src.SendRound();
    if (!round.ok()) s = round.status();
  }
  if (!s.ok()) {
    finish_report();
    return WithDestinationReason(s, &src, o);
  }
  if (o.replies != nullptr) s = src.AwaitAck(o.replies);
  if (s.ok() && o.on_complete) s = o.on_complete();
  finish_report();
  if (!s.ok()) return s;
  if (o.commit_to != nullptr) {
    // Acknowledged: only now does the source record its final state.
    auto bytes = o.commit_to->CommitFull(o.commit_id, *vm, o.commit_sequence);
    if (!bytes.ok()) {
      return bytes.status().WithPrefix("the destination has the VM, but the source could not commit: ");
    }
    report->commit_bytes = bytes.value();
  }
  return Status::OK();
}

}  // namespace cvmstate

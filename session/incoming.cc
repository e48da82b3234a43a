#include "session/incoming.h"

#include "migration/source.h"
#include "tracker/format.h"

namespace cvmstate {

IncomingMigration::IncomingMigration(CheckpointStore* store, IncomingOptions options)
    : store_(store), opt_(std::move(options)) {}

IncomingMigration::~IncomingMigration() {
  // A failure the caller did not Abort: take back what was not committed.
  if (!aborted_ && !acknowledged_ && !committed_) Withdraw();
}

namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Status IncomingMigration::EndOfRound(VmState* vm, uint32_t round, const DestinationListeners* listeners) {
  if (round == 0 && listeners != nullptr) {
    const Clock::time_point t0 = Clock::now();
    Status s = RegisterListeners(vm, *listeners);
    report_.early_replay_ms = MsSince(t0);
    if (!s.ok()) return s;
  }
  if (!staged_) return Status::OK();
  // Each round's records are written as it ends, so the commit in the
  // downtime writes only what the last round changed.
  const Clock::time_point t0 = Clock::now();
  auto c = staged_->StageState(*vm);
  report_.last_stage_ms = MsSince(t0);
  report_.stage_ms += report_.last_stage_ms;
  if (!c.ok()) return c.status();
  staged_records_ = true;
  report_.staged_bytes += c.value().bytes;
  return Status::OK();
}

Status IncomingMigration::Receive(ByteSource* in, const DestinationListeners* listeners) {
  if (dest_) return Status::InvalidArgument("this incoming migration has already received a stream");
  MigrationDestination::Options o = opt_.stream;
  listeners_in_receive_ = listeners != nullptr;
  o.on_round_end = [this, listeners](VmState* vm, uint32_t round) { return EndOfRound(vm, round, listeners); };
  o.accept_vm = [this](const std::string& id) -> Status {
    target_ = opt_.commit_as.empty() ? id : opt_.commit_as;
    if (store_ == nullptr) return Status::OK();
    // Held until the acknowledgement or the abort: no one else writes or
    // deletes this id's records meanwhile.
    staged_.emplace(store_, target_);
    Status s = staged_->HoldNewVm();
    if (!s.ok()) staged_.reset();
    return s;
  };
  if (opt_.reply != nullptr) {  // a fresh nonce the source must answer: no replays
    auto nonce = MigrationSource::NewNonce();
    if (!nonce.ok()) return nonce.status();
    o.expected_nonce = nonce.value();
    Status s = MigrationDestination::SendChallenge(opt_.reply, nonce.value());
    if (!s.ok()) return s;
  }
  dest_.emplace(std::move(o));
  auto vm = dest_->Receive(in, &report_.vm_id);
  report_.stream_bytes = dest_->total_bytes();
  if (!vm.ok()) return vm.status();
  // Kept before anything else can fail: listeners and the staging
  // checkpointer hold on to its blocks until Abort.
  vm_.emplace(std::move(vm).value());
  if (opt_.reply == nullptr) {
    char extra;
    if (in->Read(&extra, 1).ok()) return Status::Corruption("trailing bytes after the end frame");
  }
  received_ = true;
  report_.rounds = dest_->rounds();
  report_.committed_as = target_;
  report_.verify_ms = MsSince(dest_->end_received());
  return Status::OK();
}

Status IncomingMigration::Commit() {
  // staged_ is there whenever a store is: Receive held the id with it.
  if (!received_ || !vm_ || committed_ || !staged_) {
    return Status::InvalidArgument("commit needs a store and a received, uncommitted state");
  }
  const Clock::time_point t0 = Clock::now();
  // The rounds are staged: what changed since the last one (the journal
  // says, even if the state was handed out since) and the manifest, in
  // one synced batch.
  auto c = staged_->CommitState(*vm_);
  report_.commit_ms = MsSince(t0);
  if (!c.ok()) return c.status();
  report_.commit_bytes = c.value().bytes;
  committed_ = true;
  return Status::OK();
}

Status IncomingMigration::Replay(const DestinationListeners& listeners) {
  if (!committed_) return Status::InvalidArgument("listeners are replayed after the commit");
  if (listeners_in_receive_) return Status::InvalidArgument("the listeners were registered during Receive");
  const Clock::time_point t0 = Clock::now();
  Status s = RegisterListeners(&*vm_, listeners);
  report_.replay_ms = MsSince(t0);
  return s;
}

Status IncomingMigration::RegisterListeners(VmState* vm, const DestinationListeners& listeners) {
  Status s;
  for (size_t i = 0; s.ok() && i < vm->num_blocks(); ++i) {
    BlockTracker& b = vm->block(i);
    for (StateListener* l : listeners(b)) {
      s = b.RegisterListener(l, 0, b.size());
      if (!s.ok()) break;
      registered_.push_back({&b, l});
      if (dynamic_cast<DmaMappingListener*>(l) != nullptr) {
        ++report_.dma_listeners;
      } else if (dynamic_cast<MemoryAttributeListener*>(l) != nullptr) {
        ++report_.attribute_listeners;
      } else {
        ++report_.other_listeners;
      }
    }
  }
  return s;
}

Status IncomingMigration::Acknowledge() {
  if (!received_ || acknowledged_ || (store_ != nullptr && !committed_)) {
    return Status::InvalidArgument("acknowledge once, after the commit");
  }
  const Clock::time_point t0 = Clock::now();
  if (opt_.reply != nullptr) {
    Status s = dest_->SendAck(opt_.reply, true, "ready");
    if (!s.ok()) return Status::IOError("cannot acknowledge to the source: " + s.message());
  }
  report_.ack_ms = MsSince(t0);
  acknowledged_ = true;
  // The manifest guards the id now; the checkpointer (reading the state's
  // journal) is no longer needed.
  staged_.reset();
  return Status::OK();
}

void IncomingMigration::Withdraw() {
  // The blocks are alive: in vm_, or, after a failed Receive, in the
  // destination's partial state.
  for (auto it = registered_.rbegin(); it != registered_.rend(); ++it) (void)it->first->UnregisterListener(it->second);
  registered_.clear();
  if (staged_ && (staged_records_ || committed_)) {
    // Our records: the id is held, no one else wrote it.
    (void)staged_->DeleteAll();
  } else if (committed_ && store_ != nullptr) {
    (void)store_->DeleteVm(target_);
  }
  staged_records_ = false;
  committed_ = false;
  staged_.reset();
}

Status IncomingMigration::Abort(const Status& why) {
  // The source will not commit: neither do we.
  Withdraw();
  aborted_ = true;
  if (opt_.reply != nullptr && dest_ && !acknowledged_ && dest_->SendAck(opt_.reply, false, why.message()).ok() &&
      opt_.drain) {
    opt_.drain();
  }
  return why;
}

std::optional<VmState> IncomingMigration::TakeState() {
  // The listeners go with the state, and the checkpointer stops reading
  // its journal; records staged for a commit that can no longer come go.
  registered_.clear();
  if (staged_ && staged_records_ && !committed_) (void)staged_->DeleteAll();
  staged_records_ = false;
  staged_.reset();
  std::optional<VmState> out = std::move(vm_);
  vm_.reset();
  return out;
}

Result<VmState> IncomingMigration::Run(ByteSource* in, const DestinationListeners& listeners) {
  Status s = Receive(in, &listeners);
  if (s.ok()) s = Commit();
  if (s.ok()) s = Acknowledge();
  if (!s.ok()) return Abort(s);
  return std::move(*TakeState());
}

}  // namespace cvmstate

#include "session/incoming.h"

#include "migration/source.h"
#include "tracker/format.h"

namespace cvmstate {

IncomingMigration::IncomingMigration(CheckpointStore* store, IncomingOptions options)
    : store_(store), opt_(std::move(options)) {}

IncomingMigration::~IncomingMigration() = default;

namespace {

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Status IncomingMigration::Receive(ByteSource* in) {
  if (dest_) return Status::InvalidArgument("this incoming migration has already received a stream");
  MigrationDestination::Options o = opt_.stream;
  o.accept_vm = [this](const std::string& id) -> Status {
    if (store_ == nullptr) return Status::OK();
    const std::string target = opt_.commit_as.empty() ? id : opt_.commit_as;
    auto has = store_->HasVm(target);
    if (!has.ok()) return has.status();
    if (has.value()) return Status::AlreadyExists("VM " + Quoted(target) + " already exists in the store");
    return Status::OK();
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
  if (opt_.reply == nullptr) {
    char extra;
    if (in->Read(&extra, 1).ok()) return Status::Corruption("trailing bytes after the end frame");
  }
  vm_.emplace(std::move(vm).value());
  received_ = true;
  report_.rounds = dest_->rounds();
  report_.committed_as = opt_.commit_as.empty() ? report_.vm_id : opt_.commit_as;
  report_.verify_ms = MsSince(dest_->end_received());
  return Status::OK();
}

Status IncomingMigration::Commit() {
  if (!vm_ || committed_ || store_ == nullptr) {
    return Status::InvalidArgument("commit needs a store and a received, uncommitted state");
  }
  const Clock::time_point t0 = Clock::now();
  // The destination's summaries describe the state it returned: the
  // commit need not read every run again (the records it writes do).
  auto bytes = store_->CommitNew(report_.committed_as, *vm_, state_handed_out_ ? nullptr : &dest_->summaries());
  report_.commit_ms = MsSince(t0);
  if (!bytes.ok()) return bytes.status();
  report_.commit_bytes = bytes.value();
  committed_ = true;
  return Status::OK();
}

Status IncomingMigration::Replay(const DestinationListeners& listeners) {
  if (!committed_) return Status::InvalidArgument("listeners are replayed after the commit");
  const Clock::time_point t0 = Clock::now();
  Status s;
  for (size_t i = 0; s.ok() && i < vm_->num_blocks(); ++i) {
    BlockTracker& b = vm_->block(i);
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
  report_.replay_ms = MsSince(t0);
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
  return Status::OK();
}

Status IncomingMigration::Abort(const Status& why) {
  for (auto it = registered_.rbegin(); it != registered_.rend(); ++it) (void)it->first->UnregisterListener(it->second);
  registered_.clear();
  if (committed_) {
    // The source will not commit: neither do we.
    (void)store_->DeleteVm(report_.committed_as);
    committed_ = false;
  }
  if (opt_.reply != nullptr && dest_ && !acknowledged_ && dest_->SendAck(opt_.reply, false, why.message()).ok() &&
      opt_.drain) {
    opt_.drain();
  }
  return why;
}

std::optional<VmState> IncomingMigration::TakeState() {
  std::optional<VmState> out = std::move(vm_);
  vm_.reset();
  return out;
}

Result<VmState> IncomingMigration::Run(ByteSource* in, const DestinationListeners& listeners) {
  Status s = Receive(in);
  if (s.ok()) s = Commit();
  if (s.ok()) s = Replay(listeners);
  if (s.ok()) s = Acknowledge();
  if (!s.ok()) return Abort(s);
  return std::move(*TakeState());
}

}  // namespace cvmstate

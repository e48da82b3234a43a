#include "tracker/journal_reader.h"

#include "tracker/vm_state.h"

namespace cvmstate {

void JournalReader::Attach(VmState* vm) {
  Detach();
  vm_ = vm;
  since_ = vm_->OpenEpoch();
  vm_->readers_.insert(this);
  vm_->TrimJournals();
}

void JournalReader::Detach() {
  if (vm_ == nullptr) return;
  vm_->readers_.erase(this);
  vm_->TrimJournals();
  vm_ = nullptr;
}

std::vector<PageRange> JournalReader::Changed(const BlockTracker& block) const {
  return block.journal().ChangedSince(since_);
}

void JournalReader::Advance() {
  since_ = vm_->OpenEpoch();
  vm_->TrimJournals();
}

}  // namespace cvmstate

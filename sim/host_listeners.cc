#include "sim/host_listeners.h"

namespace cvmstate {

std::vector<StateListener*> HostListeners::For(const BlockTracker& b) {
  dma_.push_back(vfio_.MakeListener(b.name(), b.page_size()));
  kvm_.push_back(std::make_unique<KvmAttributeSim>());
  return {dma_.back().get(), kvm_.back().get()};
}

Status HostListeners::Attach(BlockTracker* block) {
  for (StateListener* l : For(*block)) {
    Status s = block->RegisterListener(l, 0, block->size());
    if (!s.ok()) return s;
  }
  return Status::OK();
}

void HostListeners::Detach(VmState* vm) {
  for (size_t i = 0; i < vm->num_blocks() && i < dma_.size(); ++i) {
    (void)vm->block(i).UnregisterListener(dma_[i].get());
    (void)vm->block(i).UnregisterListener(kvm_[i].get());
  }
}

uint64_t HostListeners::PrivateRanges() const {
  uint64_t n = 0;
  for (const auto& k : kvm_) n += k->range_count();
  return n;
}

}  // namespace cvmstate

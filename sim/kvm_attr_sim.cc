#include "sim/kvm_attr_sim.h"

namespace cvmstate {

Status KvmAttributeSim::SetPrivate(uint64_t offset, uint64_t size) {
  ++calls_;
  private_bytes_ += ranges_.AddMerged(offset, offset + size);
  return Status::OK();
}

void KvmAttributeSim::ClearPrivate(uint64_t offset, uint64_t size) {
  ++calls_;
  private_bytes_ -= ranges_.Cut(offset, offset + size);
}

}  // namespace cvmstate

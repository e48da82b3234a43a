// The listeners of a simulated host: an extent-mode VFIO container for DMA
// mappings and a KVM memory-attribute table per block (the destination of
// `migrate recv`, both hosts of `demo`, the listener path of `bench`).
#ifndef CVMSTATE_SIM_HOST_LISTENERS_H_
#define CVMSTATE_SIM_HOST_LISTENERS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "sim/kvm_attr_sim.h"
#include "sim/vfio_sim.h"
#include "tracker/listener.h"
#include "tracker/vm_state.h"

namespace cvmstate {

class HostListeners {
 public:
  // mapping_limit: the VFIO container's most live mappings (0: no limit).
  explicit HostListeners(uint64_t mapping_limit = 0) : vfio_(VfioContainer::Mode::kExtent, mapping_limit) {}

  // A DMA and an attribute listener for `block`, owned here (what
  // IncomingMigration registers).
  std::vector<StateListener*> For(const BlockTracker& block);
  // Makes them and registers them on the whole of `block`.
  [[nodiscard]] Status Attach(BlockTracker* block);
  // Unregisters them from vm (their mappings stay: the guest resumes on
  // them); call before this object goes away.
  void Detach(VmState* vm);

  const VfioContainer& vfio() const { return vfio_; }
  // The attribute table of the i-th block attached (or made with For).
  const KvmAttributeSim& attributes(size_t i) const { return *kvm_[i]; }
  uint64_t PrivateRanges() const;

 private:
  VfioContainer vfio_;
  std::vector<std::unique_ptr<DmaMappingListener>> dma_;
  std::vector<std::unique_ptr<KvmAttributeSim>> kvm_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_SIM_HOST_LISTENERS_H_

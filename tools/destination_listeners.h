// The listeners of a destination host in the command line and the demo: an
// extent-mode simulated VFIO container for DMA mappings, and a simulated KVM
// memory-attribute table per block.
#ifndef CVMSTATE_TOOLS_DESTINATION_LISTENERS_H_
#define CVMSTATE_TOOLS_DESTINATION_LISTENERS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "sim/kvm_attr_sim.h"
#include "sim/vfio_sim.h"
#include "tracker/listener.h"
#include "tracker/vm_state.h"

namespace cvmstate::tools {

class DestinationListeners {
 public:
  // For IncomingMigration: a DMA and an attribute listener for `block`.
  std::vector<StateListener*> For(const BlockTracker& block);
  // Unregisters them from vm (their mappings stay: the guest resumes on
  // them); call before this object goes away.
  void Detach(VmState* vm);

  const VfioContainer& vfio() const { return vfio_; }
  uint64_t PrivateRanges() const;

 private:
  VfioContainer vfio_{VfioContainer::Mode::kExtent, 0};
  std::vector<std::unique_ptr<DmaMappingListener>> dma_;
  std::vector<std::unique_ptr<KvmAttributeSim>> kvm_;
};

}  // namespace cvmstate::tools

#endif  // CVMSTATE_TOOLS_DESTINATION_LISTENERS_H_

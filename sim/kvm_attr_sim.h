// A simulated KVM memory-attribute interface (KVM_SET_MEMORY_ATTRIBUTES
// with the PRIVATE attribute) for one RAM block: what a destination
// replays private sections to before the guest resumes. It keeps the
// private ranges, so tests can compare them with the tracker. Not
// thread-safe.
#ifndef CVMSTATE_KVM_ATTR_SIM_H_
#define CVMSTATE_KVM_ATTR_SIM_H_

#include <cstdint>
#include <vector>

#include "sim/sorted_ranges.h"
#include "tracker/listener.h"

namespace cvmstate {

class KvmAttributeSim : public MemoryAttributeListener {
 public:
  std::string name() const override { return "kvm-attributes"; }
  Status SetPrivate(uint64_t offset, uint64_t size) override;
  void ClearPrivate(uint64_t offset, uint64_t size) override;

  uint64_t private_bytes() const { return private_bytes_; }
  uint64_t calls() const { return calls_; }
  // Private ranges, maximal (never touching), ascending.
  std::vector<SortedRanges::Range> ranges() const { return ranges_.All(); }
  size_t range_count() const { return ranges_.size(); }

 private:
  SortedRanges ranges_;
  uint64_t private_bytes_ = 0;
  uint64_t calls_ = 0;
};

}  // namespace cvmstate

#endif  // CVMSTATE_KVM_ATTR_SIM_H_

// A simulated VFIO type1 IOMMU container, for tests and `replay --vfio`.
//
// It enforces the kernel's rules: a new mapping may not overlap a live one;
// an unmap must cover whole mappings, except in extent mode, where a partial
// unmap cuts the mapping (as IOMMUFD's planned cut operation will); and the
// number of live mappings is capped (type1's dma_entry_limit, 65535 by
// default in the kernel). Granule mode maps every page on its own, as QEMU
// does today; extent mode maps each populated section as one mapping.
// Not thread-safe.
#ifndef CVMSTATE_VFIO_SIM_H_
#define CVMSTATE_VFIO_SIM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sim/sorted_ranges.h"
#include "tracker/listener.h"

namespace cvmstate {

class VfioContainer {
 public:
  enum class Mode { kGranule, kExtent };
  // The simulation never holds more live mappings than this, whatever the
  // limit, so that a hostile trace cannot exhaust memory.
  static constexpr uint64_t kSimulationCap = uint64_t{1} << 23;

  // limit: most live mappings at once; 0 means no limit (but kSimulationCap).
  VfioContainer(Mode mode, uint64_t limit);
  ~VfioContainer();

  // A DMA-mapping listener that maps `block`'s populated pages into this
  // container. The container must outlive it.
  std::unique_ptr<DmaMappingListener> MakeListener(const std::string& block, uint64_t page_size);

  struct Stats {
    uint64_t mappings = 0;  // live now
    uint64_t peak = 0;      // most live at once
    uint64_t maps = 0;      // mappings created (a cut creates the pieces left)
    uint64_t unmaps = 0;    // mappings removed (a cut removes the one it cut)
    uint64_t cuts = 0;      // partial unmaps (extent mode)
    uint64_t violations = 0;  // attempted breaches of the kernel's rules
  };
  const Stats& stats() const { return stats_; }
  Mode mode() const { return mode_; }

  struct Mapping {
    std::string block;
    uint64_t offset, length;
  };
  // Live mappings: blocks in the order their listeners were made, offsets
  // ascending.
  std::vector<Mapping> LiveMappings() const;

 private:
  class BlockListener;
  struct BlockMaps {
    std::string name;
    uint64_t page_size;
    SortedRanges maps;  // live mappings: [offset, offset + length)
  };
  Status Map(BlockMaps* b, uint64_t offset, uint64_t size);
  void Unmap(BlockMaps* b, uint64_t offset, uint64_t size);
  void Insert(BlockMaps* b, uint64_t offset, uint64_t length);
  void Counted();  // counts a mapping just added
  std::vector<SortedRanges::Range> found_;  // Unmap's scratch

  Mode mode_;
  uint64_t limit_;
  Stats stats_;
  std::vector<std::unique_ptr<BlockMaps>> blocks_;
};

}  // namespace cvmstate

#endif  // CVMSTATE_VFIO_SIM_H_

#include "sim/vfio_sim.h"

#include <algorithm>

#include "tracker/format.h"

namespace cvmstate {
class VfioContainer::BlockListener final : public DmaMappingListener {
 public:
  BlockListener(VfioContainer* c, BlockMaps* b) : c_(c), b_(b) {}
  std::string name() const override { return "vfio"; }
  uint64_t granularity() const override { return b_->page_size; }
  bool accepts_double_discard() const override { return true; }  // as VFIO's listener
  Status NotifyPopulate(uint64_t offset, uint64_t size) override { return c_->Map(b_, offset, size); }
  void NotifyDiscard(uint64_t offset, uint64_t size) override { c_->Unmap(b_, offset, size); }

 private:
  VfioContainer* c_;
  BlockMaps* b_;
};

VfioContainer::VfioContainer(Mode mode, uint64_t limit) : mode_(mode), limit_(limit) {}
VfioContainer::~VfioContainer() = default;

std::unique_ptr<DmaMappingListener> VfioContainer::MakeListener(const std::string& block, uint64_t page_size) {
  blocks_.push_back(std::make_unique<BlockMaps>(BlockMaps{block, page_size, {}}));
  return std::make_unique<BlockListener>(this, blocks_.back().get());
}

void VfioContainer::Insert(BlockMaps* b, uint64_t offset, uint64_t length) {
  b->maps.Insert(offset, offset + length);
  Counted();
}

void VfioContainer::Counted() {
  ++stats_.maps;
  ++stats_.mappings;
  stats_.peak = std::max(stats_.peak, stats_.mappings);
}

Status VfioContainer::Map(BlockMaps* b, uint64_t offset, uint64_t size) {
  const uint64_t need = mode_ == Mode::kGranule ? size / b->page_size : 1;
  const uint64_t cap = limit_ == 0 ? kSimulationCap : std::min(limit_, kSimulationCap);
  if (stats_.mappings + need > cap) {
    return Status::Refused("vfio: DMA mapping limit " + std::to_string(cap) + " reached (" +
                           std::to_string(stats_.mappings) + " live, mapping [" + Hex(offset) + ", " +
                           Hex(offset + size) + ") needs " + std::to_string(need) + " more)");
  }
  // The kernel refuses a mapping that overlaps a live one.
  const bool free = mode_ == Mode::kGranule ? !b->maps.Overlaps(offset, offset + size)
                                            : b->maps.InsertIfFree(offset, offset + size);
  if (!free) {
    ++stats_.violations;
    return Status::Refused("vfio: mapping [" + Hex(offset) + ", " + Hex(offset + size) + ") of " + b->name +
                           " overlaps a live mapping");
  }
  if (mode_ == Mode::kGranule) {
    for (uint64_t p = offset; p < offset + size; p += b->page_size) Insert(b, p, b->page_size);
  } else {
    Counted();  // inserted above
  }
  return Status::OK();
}

void VfioContainer::Unmap(BlockMaps* b, uint64_t offset, uint64_t size) {
  const uint64_t end = offset + size;
  if (mode_ == Mode::kExtent) {
    // Mappings inside go, those crossing an edge are cut: one search.
    SortedRanges::CutCounts c;
    (void)b->maps.Cut(offset, end, &c);
    stats_.unmaps += c.removed + c.cut;
    stats_.cuts += c.cut;
    stats_.maps += c.pieces;
    stats_.mappings = stats_.mappings - c.removed - c.cut + c.pieces;
    stats_.peak = std::max(stats_.peak, stats_.mappings);
    return;
  }
  b->maps.Find(offset, end, false, &found_);
  for (const SortedRanges::Range& m : found_) {
    if (m.begin >= offset && m.end <= end) {
      (void)b->maps.Erase(m.begin);
      ++stats_.unmaps;
      --stats_.mappings;
      continue;
    }
    ++stats_.violations;  // type1 refuses to unmap part of a mapping
  }
}

std::vector<VfioContainer::Mapping> VfioContainer::LiveMappings() const {
  std::vector<Mapping> out;
  for (const auto& b : blocks_) {
    for (const SortedRanges::Range& r : b->maps.All()) out.push_back({b->name, r.begin, r.end - r.begin});
  }
  return out;
}

}  // namespace cvmstate

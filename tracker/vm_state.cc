#include "cvmstate/vm_state.h"

namespace cvmstate {

Status VmState::AddBlock(std::string name, uint64_t size, uint64_t page_size, PageState initial) {
  if (by_name_.count(name)) return Status::InvalidArgument("block '" + name + "' is already declared");
  auto block = BlockTracker::Create(std::move(name), size, page_size, initial);
  if (!block.ok()) return block.status();
  return AddBlock(std::move(block).value());
}

Status VmState::AddBlock(std::unique_ptr<BlockTracker> block) {
  if (by_name_.count(block->name())) {
    return Status::InvalidArgument("block '" + block->name() + "' is already declared");
  }
  if (epoch_ > 0) {
    block->EnableJournal();
    block->journal().AdvanceTo(epoch_);
  }
  by_name_.emplace(block->name(), blocks_.size());
  blocks_.push_back(std::move(block));
  return Status::OK();
}

BlockTracker* VmState::Find(std::string_view name) {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : blocks_[it->second].get();
}

const BlockTracker* VmState::Find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : blocks_[it->second].get();
}

long VmState::IndexOf(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? -1 : static_cast<long>(it->second);
}

uint64_t VmState::OpenEpoch() {
  ++epoch_;
  for (auto& b : blocks_) {
    b->EnableJournal();
    b->journal().AdvanceTo(epoch_);
  }
  return epoch_;
}

size_t VmState::MemoryBytes() const {
  size_t n = 0;
  for (const auto& b : blocks_) n += b->MemoryBytes();
  return n;
}

}  // namespace cvmstate

#include "tracker/vm_state.h"

#include <algorithm>

#include "tracker/journal_reader.h"

namespace cvmstate {

Status VmState::AddBlock(std::string name, uint64_t size, uint64_t page_size, PageState initial) {
  if (by_name_.count(name)) return Status::AlreadyExists("block '" + name + "' is already declared");
  auto block = BlockTracker::Create(std::move(name), size, page_size, initial);
  if (!block.ok()) return block.status();
  return AddBlock(std::move(block).value());
}

Status VmState::AddBlock(std::unique_ptr<BlockTracker> block) {
  if (by_name_.count(block->name())) {
    return Status::AlreadyExists("block '" + block->name() + "' is already declared");
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

VmState::~VmState() {
  for (JournalReader* r : readers_) r->vm_ = nullptr;
}

VmState::VmState(VmState&& other) noexcept
    : blocks_(std::move(other.blocks_)),
      by_name_(std::move(other.by_name_)),
      epoch_(other.epoch_),
      readers_(std::move(other.readers_)) {
  other.readers_.clear();
  AdoptReaders();
}

VmState& VmState::operator=(VmState&& other) noexcept {
  if (this == &other) return *this;
  for (JournalReader* r : readers_) r->vm_ = nullptr;
  blocks_ = std::move(other.blocks_);
  by_name_ = std::move(other.by_name_);
  epoch_ = other.epoch_;
  readers_ = std::move(other.readers_);
  other.readers_.clear();
  AdoptReaders();
  return *this;
}

void VmState::AdoptReaders() {
  for (JournalReader* r : readers_) r->vm_ = this;
}

void VmState::TrimJournals() {
  // With no reader left nothing needs the past; the journal keeps recording
  // (a reader attaching later starts at a fresh epoch anyway).
  uint64_t before = epoch_;
  for (const JournalReader* r : readers_) before = std::min(before, r->since_);
  for (auto& b : blocks_) b->journal().Trim(before);
}

size_t VmState::MemoryBytes() const {
  size_t n = 0;
  for (const auto& b : blocks_) n += b->MemoryBytes();
  return n;
}

}  // namespace cvmstate

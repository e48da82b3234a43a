#include "sim/kvm_attr_sim.h"

#include <algorithm>

namespace cvmstate {

void KvmAttributeSim::Remove(uint64_t offset, uint64_t end) {
  auto it = ranges_.lower_bound(offset);
  if (it != ranges_.begin() && std::prev(it)->second > offset) --it;
  while (it != ranges_.end() && it->first < end) {
    const uint64_t b = it->first, e = it->second;
    it = ranges_.erase(it);
    private_bytes_ -= e - b;
    if (b < offset) {
      ranges_.emplace(b, offset);
      private_bytes_ += offset - b;
    }
    if (e > end) {
      ranges_.emplace(end, e);
      private_bytes_ += e - end;
      break;
    }
  }
}

Status KvmAttributeSim::SetPrivate(uint64_t offset, uint64_t size) {
  ++calls_;
  uint64_t end = offset + size;
  Remove(offset, end);
  // Merge with neighbours so ranges stay maximal.
  auto next = ranges_.find(end);
  if (next != ranges_.end()) {
    end = next->second;
    private_bytes_ -= next->second - next->first;
    ranges_.erase(next);
  }
  auto it = ranges_.lower_bound(offset);
  if (it != ranges_.begin() && std::prev(it)->second == offset) {
    --it;
    offset = it->first;
    private_bytes_ -= it->second - it->first;
    ranges_.erase(it);
  }
  ranges_.emplace(offset, end);
  private_bytes_ += end - offset;
  return Status::OK();
}

void KvmAttributeSim::ClearPrivate(uint64_t offset, uint64_t size) {
  ++calls_;
  Remove(offset, offset + size);
}

}  // namespace cvmstate

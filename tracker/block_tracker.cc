#include "cvmstate/block_tracker.h"

#include <bit>

#include "cvmstate/listing.h"

namespace cvmstate {
namespace {

std::string Hex(uint64_t v) {
  std::string s;
  AppendHex(&s, v);
  return s;
}

}  // namespace

bool BlockTracker::IsValidName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == ':' || c == '/' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<std::unique_ptr<BlockTracker>> BlockTracker::Create(std::string name, uint64_t size,
                                                           uint64_t page_size, PageState initial,
                                                           unsigned chunk_shift) {
  if (!IsValidName(name)) {
    return Status::InvalidArgument("invalid block name '" + name +
                                   "' (1 to 64 characters from A-Z a-z 0-9 . _ : / -)");
  }
  if (!std::has_single_bit(page_size) || page_size < kMinPageSize || page_size > kMaxPageSize) {
    return Status::InvalidArgument("page size " + Hex(page_size) +
                                   " of block '" + name + "' is not a power of two from 4K to 1G");
  }
  if (size == 0) return Status::InvalidArgument("block '" + name + "' has size 0");
  if (size % page_size != 0) {
    return Status::InvalidArgument("size " + Hex(size) + " of block '" + name +
                                   "' is not a multiple of its page size " + Hex(page_size));
  }
  return std::unique_ptr<BlockTracker>(
      new BlockTracker(std::move(name), size, page_size, initial, chunk_shift));
}

BlockTracker::BlockTracker(std::string name, uint64_t size, uint64_t page_size, PageState initial,
                           unsigned chunk_shift)
    : name_(std::move(name)),
      size_(size),
      page_size_(page_size),
      page_shift_(static_cast<unsigned>(std::countr_zero(page_size))),
      initial_(initial),
      map_(size >> page_shift_, initial, chunk_shift) {
  pages_in_[static_cast<int>(initial)] = size >> page_shift_;
}

Status BlockTracker::ValidateRange(uint64_t offset, uint64_t size) const {
  if (size == 0) return Status::InvalidArgument("empty range (size 0) in block '" + name_ + "'");
  const uint64_t mask = page_size_ - 1;
  if (offset & mask) {
    return Status::InvalidArgument("offset " + Hex(offset) + " is not a multiple of the page size " +
                                   Hex(page_size_) + " of block '" + name_ + "'");
  }
  if (size & mask) {
    return Status::InvalidArgument("size " + Hex(size) + " is not a multiple of the page size " +
                                   Hex(page_size_) + " of block '" + name_ + "'");
  }
  if (offset + size < offset) {
    return Status::InvalidArgument("range " + Hex(offset) + "+" + Hex(size) + " overflows 64 bits");
  }
  if (offset + size > size_) {
    return Status::InvalidArgument("range [" + Hex(offset) + ", " + Hex(offset + size) +
                                   ") ends past the end of block '" + name_ + "' (size " + Hex(size_) +
                                   ")");
  }
  return Status::OK();
}

Status BlockTracker::Convert(uint64_t offset, uint64_t size, PageState state) {
  Status s = ValidateRange(offset, size);
  if (!s.ok()) return s;
  StateCounts changed{};
  map_.Assign(offset >> page_shift_, (offset + size) >> page_shift_, state, &changed);
  for (int k = 0; k < kNumPageStates; ++k) {
    pages_in_[k] -= changed[k];
    pages_in_[static_cast<int>(state)] += changed[k];
  }
  return Status::OK();
}

}  // namespace cvmstate
